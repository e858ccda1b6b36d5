"""Folds that never split a recording, and k clips per class drawn from a pool.

Clips cut from one recording (ESC-50's takes A, B, ... of one Freesound file;
UrbanSound8K's slices of one file) sound alike: one on each side of a split
flatters any classifier. Their group is the table's ``group`` column, or else
the recording id in an ESC-50 or UrbanSound8K file name, or else the file itself.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence

import numpy as np

from .data import Example

__all__ = ["assign_folds", "group_of", "sample_shots"]

# ESC-50: {fold}-{freesound id}-{take}-{target}; UrbanSound8K: {freesound id}-{class}-{occurrence}-{slice}
_ESC50 = re.compile(r"^(\d)-(\d+)-([A-Za-z])-(\d+)$")
_US8K = re.compile(r"^(\d+)-(\d+)-(\d+)-(\d+)$")


def group_of(example: Example) -> str:
    """The recording a clip comes from: its ``group``, an ESC-50 / UrbanSound8K recording id, or the file."""
    if example.group:
        return f"group:{example.group}"
    stem = os.path.splitext(os.path.basename(example.path))[0]
    if m := _ESC50.match(stem):
        return f"esc50:{m.group(2)}"
    if m := _US8K.match(stem):
        return f"us8k:{m.group(1)}"
    return f"file:{example.path}"


def assign_folds(examples: Sequence[Example], strata: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """A fold number per example: the data's own ``fold`` when it has one, else grouped, stratified folds.

    ``strata`` ``(N,)`` is the class each example is balanced by (the first label). Grouped folds come from
    scikit-learn's ``StratifiedGroupKFold`` (shuffled with ``seed``): every group lies in exactly one fold.
    There are ``n_folds`` of them, fewer when a class has fewer recordings (at least 2).
    """
    if any(e.fold is not None for e in examples):
        return np.array([e.fold for e in examples], dtype=np.int64)
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array([group_of(e) for e in examples])
    # as many folds as the smallest class has recordings (each fold should see every class), 2 at least
    per_class = [len(set(groups[strata == s].tolist())) for s in np.unique(strata)]
    k = max(2, min(n_folds, min(per_class), len(set(groups.tolist()))))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.zeros(len(examples), dtype=np.int64)
    with warnings.catch_warnings():  # "the least populated class has only 2 members": expected with few clips
        warnings.simplefilter("ignore", UserWarning)
        for number, (_, test) in enumerate(splitter.split(np.zeros(len(examples)), strata, groups), start=1):
            folds[test] = number
    return folds


def sample_shots(targets: np.ndarray, pool: np.ndarray, shots: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices into the examples: ``shots`` drawn at random from ``pool`` for every class (all of a class that has
    fewer; ``None``: the whole pool). ``targets`` ``(N, C)`` is multi-hot; a clip drawn for one class counts for
    its others too. Background clips (no class) are drawn as if they were a class."""
    pool = np.asarray(pool)
    if shots is None:
        return pool
    chosen: list[int] = []
    columns = [targets[pool, c] > 0 for c in range(targets.shape[1])]
    columns.append(targets[pool].sum(axis=1) == 0)  # clips of no class (multi-label background)
    for has in columns:
        members = pool[has]
        if len(members):
            chosen += rng.choice(members, size=min(shots, len(members)), replace=False).tolist()
    return np.array(sorted(set(chosen)), dtype=np.int64)
