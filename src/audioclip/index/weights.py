"""Which weights made an index's vectors, told without loading the model where that can be known."""

from __future__ import annotations

import os

from .base import IndexStoreError

__all__ = ["architecture_image_size", "built_to_identify", "bundled", "source_of"]


def source_of(settings: dict) -> str:
    """The checkpoint to load for queries of an index built from embeddings: the weights they name (registered
    weights or an architecture); a file's is not known from its name alone."""
    from .. import checkpoints

    name, checkpoint = settings.get("checkpoint_name"), settings.get("checkpoint", "")
    if name and (checkpoints.lookup(name) is not None or (name in bundled() and checkpoint.startswith(f"{name}@"))):
        return name
    raise IndexStoreError(f"the embeddings were made with the checkpoint file {name or checkpoint!r}: give that "
                          "file as the index's checkpoint (--checkpoint PATH), which it loads for queries")


def bundled() -> list[str]:
    from ..factory import list_models

    return list_models()


def built_to_identify(checkpoint: str) -> bool:
    """Whether ``checkpoint`` names weights whose id needs the model built (an architecture, a Hub model)."""
    from ..factory import describe_source

    return describe_source(checkpoint).kind in ("architecture", "hub", "folder")


def architecture_image_size(name: str) -> int | None:
    """``vision_cfg.image_size`` of a bundled architecture or a JSON config file, read without torch; None if
    ``name`` is neither (or says nothing of it)."""
    import json
    from importlib import resources

    from ..factory import MAX_CONFIG_BYTES
    from ..io import read_text_bounded

    try:
        packaged = resources.files("audioclip.model_configs").joinpath(f"{name}.json")
        if "/" not in name and os.sep not in name and packaged.is_file():
            text = packaged.read_text()
        else:  # a config file (bounded, regular files only: the name may come from the index's metadata)
            text = read_text_bounded(name, MAX_CONFIG_BYTES, what="model config")
        size = json.loads(text).get("vision_cfg", {}).get("image_size")
    except (OSError, ValueError, AttributeError):
        return None
    return int(size) if type(size) is int and 1 <= size <= 4096 else None
