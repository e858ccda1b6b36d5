"""Training checkpoints: everything needed to continue exactly, written atomically.

``last.pt`` is rewritten at the end of every epoch with
:func:`audioclip.io.atomic_write` (a temporary file in the same folder, flushed
to disk, then renamed over the old one), so a kill at any moment leaves either
the previous or the new checkpoint, never a torn one. It holds the model,
optimizer, scheduler and loss-scaler states, the epoch, the best validation score so far, the metric
history and the random generators' states, and loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write

__all__ = ["load_checkpoint", "restore_rng", "rng_state", "save_checkpoint"]


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
