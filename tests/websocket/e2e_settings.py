"""Settings of the servers the browser tests start: the project's, with the broker port they chose.

``run_coremq --port`` moves the broker but not ``settings.COREMQ``, which the
demo's counter view and separate daphne processes use to reach it; so the
tests give the port to both through ``COREMQ_E2E_PORT``.
"""

import json
import os

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ

COREMQ = {**COREMQ, "PORT": int(os.environ["COREMQ_E2E_PORT"])}
if os.environ.get("COREMQ_E2E_MAX_WRITE_BUFFER"):  # the slow-consumer bound, small for a test
    COREMQ["MAX_WRITE_BUFFER"] = int(os.environ["COREMQ_E2E_MAX_WRITE_BUFFER"])
    COREMQ["MAX_FANOUT_BLOB"] = COREMQ["MAX_WRITE_BUFFER"] // 4  # at most half of it (coremq.E012)
if os.environ.get("COREMQ_E2E_DURABLE_PATH"):  # every queue durable, its history in this file
    COREMQ.update(DURABLE_ALL=True, DURABLE_PATH=os.environ["COREMQ_E2E_DURABLE_PATH"])
if os.environ.get("COREMQ_E2E_COREMQ"):  # any other COREMQ keys, as JSON
    COREMQ.update(json.loads(os.environ["COREMQ_E2E_COREMQ"]))
