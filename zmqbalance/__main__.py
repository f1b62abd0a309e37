"""Run the command line with ``python -m zmqbalance``."""

import sys

from zmqbalance.cli import main

sys.exit(main())
