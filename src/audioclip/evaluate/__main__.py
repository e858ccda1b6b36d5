"""``python -m audioclip.evaluate ...``: the ``evaluate`` command on its own."""

import sys

from .cli import main

sys.exit(main())
