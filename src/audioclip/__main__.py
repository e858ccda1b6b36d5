"""``python -m audioclip`` is the ``audioclip`` command."""

import sys

from audioclip.cli import main

sys.exit(main())
