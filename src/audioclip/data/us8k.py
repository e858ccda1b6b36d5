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

from pathlib import Path

from .cliplist import DatasetIndex, clips_from_metadata, read_metadata

__all__ = ["read_us8k"]


def read_us8k(root: str | Path, metadata: str = "metadata/UrbanSound8K.csv", audio_dir: str = "audio") -> DatasetIndex:
    """Index UrbanSound8K under ``root``. Rows whose file is absent are listed in ``missing``."""
    root = Path(root)
    meta_path = root / metadata
    need = {"slice_file_name", "fsID", "start", "end", "fold", "classID", "class"}
    rows = read_metadata(meta_path, need, "UrbanSound8K", "metadata/UrbanSound8K.csv")
    found = clips_from_metadata(
        rows,
        file="slice_file_name",
        target="classID",
        label="class",
        folder=lambda row: root / audio_dir / f"fold{int(row['fold'])}",
        group=lambda row: f"us8k:{row['fsID']}",
    )
    names = found.names
    longest = max((float(row["end"]) - float(row["start"]) for row in rows), default=0.0)
    longest = max(longest, 0.0)
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{meta_path}: classIDs are not 0..{len(names) - 1}")
    return DatasetIndex(
        name="UrbanSound8K",
        clips=found.clips,
        classes=[names[t] for t in sorted(names)],
        folds=sorted({int(r["fold"]) for r in rows}),
        # slices are cut to at most 4 s; rounding in the metadata gives 4.000000001
        max_duration=min(4.0, round(longest, 3)) if longest > 0 else None,
        missing=found.missing,
    )
