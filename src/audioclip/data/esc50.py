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

import csv
from pathlib import Path

from .index import Clip, DatasetIndex, find_media, relabel

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
    meta_path = root / metadata
    if not meta_path.is_file():
        raise FileNotFoundError(f"ESC-50: no metadata file {meta_path} (expected the official meta/esc50.csv)")
    with open(meta_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"filename", "fold", "target", "category"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{meta_path}: expected columns {sorted(need)}")
    if subset not in (None, "esc10"):
        raise ValueError(f"ESC-50 subset must be None or 'esc10', got {subset!r}")

    names: dict[int, str] = {}
    clips, missing = [], []
    find = find_media()
    folder = root / audio_dir
    for row in rows:
        target = int(row["target"])
        label = row["category"].replace("_", " ").strip()
        names.setdefault(target, label)
        if subset == "esc10" and row.get("esc10", "").strip().lower() != "true":
            continue
        path = find(folder, row["filename"])
        if path is None:
            missing.append(str(folder / row["filename"]))
            continue
        clips.append(
            Clip(
                path=str(path),
                labels=(label,),
                targets=(target,),
                fold=int(row["fold"]),
                group=f"esc50:{row.get('src_file') or row['filename']}",
                key=Path(row["filename"]).stem,
            )
        )
    if subset == "esc10":
        keep = sorted({int(r["target"]) for r in rows if r.get("esc10", "").strip().lower() == "true"})
    else:
        keep = sorted(names)
    # classes in the order of the metadata's targets, numbered 0.. (the identity for the full ESC-50)
    clips, _ = relabel(clips, keep)
    classes = [names[t] for t in keep]
    return DatasetIndex(
        name="ESC-10" if subset == "esc10" else "ESC-50",
        clips=clips,
        classes=classes,
        folds=sorted({int(r["fold"]) for r in rows}),
        max_duration=ESC50_DURATION,
        missing=missing,
    )
