"""ESC-50 (Piczak, 2015): 2000 five-second clips, 50 classes, 5 official folds.

Layout, as distributed::

    root/meta/esc50.csv     filename,fold,target,category,esc10,src_file,take
    root/audio/1-100032-A-0.wav ...

The label text of a class is its ``category`` with underscores as spaces
("crying baby"), as in the original code. Clips cut from one Freesound
recording (``src_file``) share a group, so a validation split never separates
them. A copy whose files carry another audio extension (``.flac``) is found.
"""

from __future__ import annotations

from pathlib import Path

from .cliplist import DatasetIndex, clips_from_metadata, read_metadata, relabel

__all__ = ["read_esc50"]

ESC50_FOLDS = [1, 2, 3, 4, 5]
ESC50_DURATION = 5.0


def read_esc50(
    root: str | Path,
    audio_dir: str = "audio",
    subset: str | None = None,
    metadata: str = "meta/esc50.csv",
) -> DatasetIndex:
    """Index ESC-50 under ``root``; ``subset="esc10"`` keeps the ESC-10 classes (renumbered 0..9).

    Rows whose file is absent are left out and listed in ``missing``.
    """
    root = Path(root)
    rows = read_metadata(root / metadata, {"filename", "fold", "target", "category"}, "ESC-50", "meta/esc50.csv")
    if subset not in (None, "esc10"):
        raise ValueError(f"ESC-50 subset must be None or 'esc10', got {subset!r}")
    found = clips_from_metadata(
        rows,
        file="filename",
        target="target",
        label="category",
        folder=lambda row: root / audio_dir,
        group=lambda row: f"esc50:{row.get('src_file') or row['filename']}",
        keep=lambda row: subset != "esc10" or row.get("esc10", "").strip().lower() == "true",
    )
    names, missing = found.names, found.missing
    if subset == "esc10":
        keep = sorted({int(r["target"]) for r in rows if r.get("esc10", "").strip().lower() == "true"})
    else:
        keep = sorted(names)
    # classes in the order of the metadata's targets, numbered 0.. (the identity for the full ESC-50)
    clips, _ = relabel(found.clips, keep)
    classes = [names[t] for t in keep]
    return DatasetIndex(
        name="ESC-10" if subset == "esc10" else "ESC-50",
        clips=clips,
        classes=classes,
        folds=sorted({int(r["fold"]) for r in rows}),
        max_duration=ESC50_DURATION,
        missing=missing,
    )
