"""UrbanSound8K (Salamon et al., 2014): 8732 slices of at most 4 s, 10 classes, 10 official folds.

Layout, as distributed::

    root/metadata/UrbanSound8K.csv   slice_file_name,fsID,start,end,salience,fold,classID,class
    root/audio/fold1/100032-3-0-0.wav ...

Files come at mixed sample rates, bit depths and channel counts; they are all
decoded to 44.1 kHz float in [-1, 1] (see :mod:`audioclip.data.dataset` for the
channel and amplitude conventions). Slices of one Freesound recording
(``fsID``) share a group. The label text is ``class`` with underscores as spaces.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .index import Clip, DatasetIndex, find_media

__all__ = ["read_us8k"]


def read_us8k(root: str | Path, metadata: str = "metadata/UrbanSound8K.csv", audio_dir: str = "audio") -> DatasetIndex:
    """Index UrbanSound8K under ``root``. Rows whose file is absent are listed in ``missing``."""
    root = Path(root)
    meta_path = root / metadata
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"UrbanSound8K: no metadata file {meta_path} (expected the official metadata/UrbanSound8K.csv)"
        )
    with open(meta_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"slice_file_name", "fsID", "start", "end", "fold", "classID", "class"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{meta_path}: expected columns {sorted(need)}")

    names: dict[int, str] = {}
    clips, missing = [], []
    longest = 0.0
    find = find_media()
    for row in rows:
        target = int(row["classID"])
        label = row["class"].replace("_", " ").strip()
        names.setdefault(target, label)
        fold = int(row["fold"])
        longest = max(longest, float(row["end"]) - float(row["start"]))
        folder = root / audio_dir / f"fold{fold}"
        path = find(folder, row["slice_file_name"])
        if path is None:
            missing.append(str(folder / row["slice_file_name"]))
            continue
        clips.append(
            Clip(
                path=str(path),
                labels=(label,),
                targets=(target,),
                fold=fold,
                group=f"us8k:{row['fsID']}",
                key=Path(row["slice_file_name"]).stem,
            )
        )
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{meta_path}: classIDs are not 0..{len(names) - 1}")
    return DatasetIndex(
        name="UrbanSound8K",
        clips=clips,
        classes=[names[t] for t in sorted(names)],
        folds=sorted({int(r["fold"]) for r in rows}),
        # slices are cut to at most 4 s; rounding in the metadata gives 4.000000001
        max_duration=min(4.0, round(longest, 3)) if longest > 0 else None,
        missing=missing,
    )
