"""Settings of the status tests' server processes: the project's, plus a status token, the broker port,
and the staff account the web process's own clients log in with (admin requests are for staff)."""

import os

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ
from status_site import STAFF

COREMQ = {
    **COREMQ,
    "STATUS_TOKEN": os.environ["COREMQ_TEST_STATUS_TOKEN"],
    "PORT": int(os.environ.get("COREMQ_TEST_PORT", "6747")),
    "CLIENT_USERNAME": STAFF[0],
    "CLIENT_PASSWORD": STAFF[1],
}
