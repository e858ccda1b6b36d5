"""``python -m audioclip`` is the ``audioclip`` command."""

import sys

from audioclip.cli import main

# The guard matters: worker processes started with "spawn" or "forkserver"
# (LanceDB needs the latter) re-import the main module.
if __name__ == "__main__":
    sys.exit(main())
