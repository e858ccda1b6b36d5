"""``python -m audioclip`` is the ``audioclip`` command (also what torchrun launches:
``torchrun --nproc_per_node=4 -m audioclip train ...``)."""

import sys

from audioclip.cli import main

# The guard matters: worker processes started with "spawn" or "forkserver"
# (LanceDB needs the latter) re-import the main module.
if __name__ == "__main__":
    sys.exit(main())
