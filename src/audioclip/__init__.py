"""AudioCLIP: text, images and sound in one embedding space (Guzhov et al., 2021)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> defining module. Imported on first use, so that `audioclip --help`
# and other light entry points don't pay for importing torch and open_clip.
_EXPORTS = {
    "create_model": "audioclip.factory",
    "list_models": "audioclip.factory",
    "list_pretrained": "audioclip.factory",
    "checkpoint_id": "audioclip.factory",
    "AudioCLIP": "audioclip.model",
    "AudioCLIPOutput": "audioclip.model",
    "ESResNeXtFbsp": "audioclip.model",
    "tokenize": "audioclip.model",
    "TextTooLongWarning": "audioclip.model",
    "CheckpointError": "audioclip.checkpoints",
    "save_model": "audioclip.checkpoints",
    "MediaError": "audioclip.media",
    "load_audio": "audioclip.media",
    "load_image": "audioclip.media",
    "load_video_frames": "audioclip.media",
    "embed_files": "audioclip.inference",
    "classify": "audioclip.inference",
    "read_embeddings": "audioclip.embeddings_io",
    "embed_to": "audioclip.engines",
    "pipeline": "audioclip.pipelines",
    "Index": "audioclip.index",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoints import CheckpointError, save_model
    from .factory import checkpoint_id, create_model, list_models, list_pretrained
    from .embeddings_io import read_embeddings
    from .engines import embed_to
    from .index import Index
    from .inference import classify, embed_files
    from .pipelines import pipeline
    from .media import MediaError, load_audio, load_image, load_video_frames
    from .model import AudioCLIP, AudioCLIPOutput, ESResNeXtFbsp, TextTooLongWarning, tokenize


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audioclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
