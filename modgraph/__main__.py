"""``python -m modgraph``: the command line (see :mod:`modgraph.cli`)."""

import sys

from .cli import main

sys.exit(main())
