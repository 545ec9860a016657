"""Settings of the run_coremq node tests: the project's, with a longer history (resume windows), and a node
configured by ``COREMQ['ENGINE'] = "redis"`` when ``COREMQ_TEST_REDIS_URL`` is set (instead of ``--redis``)."""

import os

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ

COREMQ = {**COREMQ, "HISTORY_LENGTH": 20000}
if os.environ.get("COREMQ_TEST_REDIS_URL"):
    COREMQ.update(ENGINE="redis", REDIS_URL=os.environ["COREMQ_TEST_REDIS_URL"],
                  NODE_NAME=os.environ["COREMQ_TEST_NODE_NAME"])
