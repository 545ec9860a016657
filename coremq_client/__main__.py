"""``python -m coremq_client``: see :mod:`coremq_client.cli`."""

import sys

from .cli import main

sys.exit(main())
