"""Datasets for training: indexing, splits, decoding cache, augmentation, sampling, shards.

- :func:`read_dataset` indexes ESC-50, UrbanSound8K, AudioSet or a custom
  folder / CSV into a :class:`DatasetIndex` (clips, labels, folds);
  :func:`split_index` cuts it into train / validation / test.
- :class:`AudioCache` decodes each file once (44.1 kHz) and keeps it on disk.
- :class:`ClipDataset` turns clips into augmented samples
  (:class:`AudioAugment`, the paper's section 4.2); :func:`collate` batches them
  and skips unreadable files.
- :class:`GlobalBatchSampler` makes DDP processes split one global batch.
- :func:`write_shards` / :class:`ShardStream`: WebDataset shards for AudioSet scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .audioset import read_audioset
from .augment import AudioAugment, CropPad, GaussianNoise, TimeFlip, TimeScale, sample_generator
from .cache import AudioCache, default_cache_dir
from .dataset import ClipDataset, apply_conventions, collate, measure_longest
from .esc50 import read_esc50
from .folder import read_folder
from .cliplist import Clip, DatasetIndex, Splits, ValidationSpec, split_index
from .sampling import EvalBatchSampler, GlobalBatchSampler
from .shards import ShardStream, read_manifest, write_shards
from .us8k import read_us8k

__all__ = [
    "AudioAugment",
    "AudioCache",
    "Clip",
    "ClipDataset",
    "CropPad",
    "DATASETS",
    "DatasetIndex",
    "EvalBatchSampler",
    "GaussianNoise",
    "GlobalBatchSampler",
    "ShardStream",
    "Splits",
    "TimeFlip",
    "TimeScale",
    "ValidationSpec",
    "apply_conventions",
    "collate",
    "default_cache_dir",
    "measure_longest",
    "read_audioset",
    "read_dataset",
    "read_esc50",
    "read_folder",
    "read_manifest",
    "read_us8k",
    "sample_generator",
    "split_index",
    "write_shards",
]

DATASETS = ("esc50", "us8k", "audioset", "folder")


def read_dataset(name: str, root: str | Path, **options: Any) -> DatasetIndex:
    """Index dataset ``name`` (one of :data:`DATASETS`) at ``root``.

    ``options`` are the reader's keyword arguments (e.g. ``subset="esc10"`` or
    ``audio_dir="audio_16k"`` for ESC-50; ``clips_dir``, ``frames_dir``,
    ``train_segments`` for AudioSet); ``None`` values are dropped.
    """
    if root is None:
        raise ValueError(f"dataset {name!r}: no root folder given (data.root)")
    options = {k: v for k, v in options.items() if v is not None}
    readers = {"esc50": read_esc50, "us8k": read_us8k, "audioset": read_audioset, "folder": read_folder}
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (and 'shards')")
    try:
        return readers[name](root, **options)
    except TypeError as e:
        raise ValueError(f"dataset {name!r}: bad option ({e})") from None
