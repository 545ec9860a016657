"""Settings of the run_coremq durability tests: the project's, with COREMQ_DURABLE_ALL=1 making every queue durable."""

import os

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ

COREMQ = {**COREMQ, "DURABLE_ALL": os.environ.get("COREMQ_DURABLE_ALL") == "1"}
