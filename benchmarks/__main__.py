"""``python -m benchmarks [--quick] [--only NAME] [--seed S] [--out DIR] [--strict]``."""

import sys

from benchmarks.cli import main

sys.exit(main())
