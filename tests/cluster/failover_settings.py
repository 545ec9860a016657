"""Settings of the coremq.js failover test's web nodes: the project's, a long history, and the test page's
origin (``COREMQ_TEST_TRUSTED_ORIGIN``) trusted by every node's WebSocket endpoint."""

import os

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ

COREMQ = {**COREMQ, "HISTORY_LENGTH": 20000}
CSRF_TRUSTED_ORIGINS = [os.environ["COREMQ_TEST_TRUSTED_ORIGIN"]]
