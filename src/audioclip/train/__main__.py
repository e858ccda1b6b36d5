"""``python -m audioclip.train [train|prepare] ...`` (also what torchrun launches)."""

import sys

from audioclip.train.cli import main

sys.exit(main())
