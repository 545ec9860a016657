"""Settings of the status tests' server processes: the project's, plus a status token and the broker port."""

import os

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ

COREMQ = {
    **COREMQ,
    "STATUS_TOKEN": os.environ["COREMQ_TEST_STATUS_TOKEN"],
    "PORT": int(os.environ.get("COREMQ_TEST_PORT", "6747")),
}
