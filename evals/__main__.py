"""``python -m evals``: the evaluation (see evals/evaluate.py)."""

import os
import sys

from evals.evaluate import main

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.exit(main())
