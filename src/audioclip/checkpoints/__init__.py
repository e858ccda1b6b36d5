"""Pretrained weights: the registry of published checkpoints, the cache they download into, state dicts.

- :mod:`.registry`: the published weights (names, files, URLs, sizes, sha256);
- :mod:`.cache`: the cache folder, :func:`resolve` (a name or path to a local
  file), :func:`download` (sha256-verified, resumable), file hashes and
  :func:`file_checkpoint_id`;
- :mod:`.state_dict`: ``weights_only`` / safetensors loading, checking a state
  dict against a model, saving and converting.

Every problem is one :class:`CheckpointError` whose message names the file or
URL, so callers (and the command line) can show it as is. torch is imported
only by the functions that need it, so that the command line starts fast.
"""

from __future__ import annotations

from .cache import (
    BASE_URL_ENV,
    CACHE_ENV,
    OFFLINE_ENV,
    TRY_OFFLINE,
    cache_dir,
    cached_path,
    download,
    file_checkpoint_id,
    file_sha256,
    offline_mode,
    resolve,
)
from .errors import CheckpointError
from .registry import REGISTRY, PretrainedWeights, lookup, lookup_filename
from .state_dict import (
    check_state_dict,
    convert_checkpoint,
    is_safetensors,
    load_state_dict,
    save_model,
    save_state_dict,
)

__all__ = [
    "BASE_URL_ENV",
    "CACHE_ENV",
    "OFFLINE_ENV",
    "TRY_OFFLINE",
    "CheckpointError",
    "PretrainedWeights",
    "REGISTRY",
    "cache_dir",
    "offline_mode",
    "cached_path",
    "download",
    "resolve",
    "load_state_dict",
    "check_state_dict",
    "save_state_dict",
    "file_checkpoint_id",
    "file_sha256",
    "convert_checkpoint",
    "is_safetensors",
    "lookup",
    "lookup_filename",
    "save_model",
]
