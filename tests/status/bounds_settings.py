"""Settings of the bounds status test: the status tests' settings with small resource bounds."""

from status_settings import *  # noqa: F401,F403
from status_settings import COREMQ

COREMQ = {
    **COREMQ,
    "FIRST_FRAME_TIMEOUT": 0.5,
    "MAX_CONNECTIONS_PER_ADDRESS": 3,
    "MAX_QUEUES": 20,
    "HISTORY_LENGTH": 100,
    "MAX_HISTORY_BYTES": 40_000,
    "MAX_FRAME_SIZE": 16_384,
    "QUEUE_IDLE_TIMEOUT": 0.5,
}
