"""``python -m fints_edge.learn``."""

import sys

from fints_edge.learn.cli import main

sys.exit(main())
