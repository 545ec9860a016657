"""Settings of the security tests' run_coremq processes: the project's, a fast password hasher, and
COREMQ keys from ``COREMQ_TEST_SETTINGS`` (JSON)."""

import json
import os

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
COREMQ = {**COREMQ, **json.loads(os.environ.get("COREMQ_TEST_SETTINGS", "{}"))}
# The web side's origin settings, when a test asks for them (tests/security/test_security_throttle.py).
CSRF_TRUSTED_ORIGINS = json.loads(os.environ.get("COREMQ_TEST_TRUSTED_ORIGINS", "[]"))
if os.environ.get("COREMQ_TEST_PROXY_SSL"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
