"""Training and fine-tuning AudioCLIP as in the paper (section 4), from a laptop to many GPUs.

- :func:`load_config` / :data:`DEFAULTS`: configs; the paper's regimes are bundled
  (``audioclip train --list-configs``).
- :class:`Trainer`: one run (DDP under torchrun, AMP on GPU, atomic
  checkpoints, ``--resume``, best epoch by validation, official-format export).
- :func:`run_cross_validation`: all folds, mean ± std.
- ``audioclip train`` and ``audioclip prepare``: :mod:`audioclip.cli.train`.

See docs/training.md. Names are imported on first use, so that importing
this package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audioclip.util import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("DEFAULTS", "ConfigError", "apply_overrides", "list_configs", "load_config"),
                    "audioclip.train.config"),
    **dict.fromkeys(("format_table", "run_cross_validation"), "audioclip.train.cv"),
    **dict.fromkeys(("Dist", "setup_distributed"), "audioclip.train.distributed"),
    "Trainer": "audioclip.train.engine",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .config import DEFAULTS, ConfigError, apply_overrides, list_configs, load_config
    from .cv import format_table, run_cross_validation
    from .distributed import Dist, setup_distributed
    from .engine import Trainer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
