"""Classifier heads on frozen AudioCLIP embeddings: the file format, loading, and applying them.

A head is a folder written by ``audioclip fit`` (:mod:`audioclip.fit`)::

    HEAD_DIR/head.safetensors   the weights (float32)
    HEAD_DIR/head.json          labels, the checkpoint it was fitted on, settings, threshold, metrics

It is one linear layer on L2-normalised embeddings, ``logits = x @ weight.T +
bias``, followed by a softmax (one label per clip) or a sigmoid per class
(several labels per clip). The layer is already the mixture of the trained
classifier and the zero-shot classifier of the class names (WiSE-FT: a
weighted sum of two linear layers is a linear layer); both parts are stored
too, so the mixture can be inspected or changed. Nothing here needs the
model: a head applies to vectors from ``audioclip embed`` as well.
"""

from __future__ import annotations

from .head import (
    HEAD_FORMAT,
    HEAD_JSON,
    HEAD_WEIGHTS,
    NONE_LABEL,
    Head,
    HeadError,
    HeadMismatchError,
    is_head_dir,
    load_head,
    replace_folder,
)

__all__ = [
    "HEAD_FORMAT",
    "HEAD_JSON",
    "HEAD_WEIGHTS",
    "NONE_LABEL",
    "Head",
    "HeadError",
    "HeadMismatchError",
    "is_head_dir",
    "load_head",
    "replace_folder",
]
