"""Your own sounds: a CSV of ``path,label[,fold]`` or a folder per class.

CSV (a header row is optional; with one, columns are found by name and may
also include ``group`` — the source recording — and ``image``)::

    path,label,fold
    dogs/rex-01.wav,dog,1
    /data/rain/r07.flac,rain,2

Relative paths are relative to the CSV's folder. ``label`` may hold several
labels separated by ``;`` (a multi-label dataset). A tree::

    root/dog/rex-01.wav
    root/rain/2023/r07.flac        (any depth below the class folder)

The label text of a class is its name with underscores as spaces
(``crying_baby`` -> "crying baby"); choose names that read well in a prompt.
Without a ``fold`` column the test set is a random part of the data (see
:func:`audioclip.data.cliplist.split_index`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..media.sniff import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from .cliplist import Clip, DatasetIndex

__all__ = ["read_folder"]

_MEDIA = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS


def _label_text(name: str) -> str:
    return name.replace("_", " ").strip()


def read_folder(source: str | Path) -> DatasetIndex:
    """Index a CSV file or a folder-per-class tree."""
    source = Path(source)
    if source.is_file():
        return _read_csv(source)
    if source.is_dir():
        return _read_tree(source)
    raise FileNotFoundError(f"custom dataset: {source} is neither a CSV file nor a folder")


def _read_tree(root: Path) -> DatasetIndex:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    entries = []
    for d in class_dirs:
        files = []
        for base, dirs, names in os.walk(d):
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            files += [Path(base) / n for n in sorted(names) if Path(n).suffix.lower() in _MEDIA]
        if files:
            entries.append((d.name, files))
    if not entries:
        raise ValueError(f"custom dataset: no class folders with audio files under {root}")
    classes = [_label_text(name) for name, _ in entries]
    if len(set(classes)) != len(classes):
        raise ValueError(f"custom dataset: class folder names collide once underscores become spaces: {classes}")
    clips = [
        Clip(path=str(f), labels=(classes[t],), targets=(t,), key=str(f.relative_to(root)))
        for t, (_, files) in enumerate(entries)
        for f in files
    ]
    return DatasetIndex(name=f"folder {root.name}", clips=clips, classes=classes)


def _read_csv(path: Path) -> DatasetIndex:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    if not rows:
        raise ValueError(f"{path}: empty CSV")
    header = [x.strip().lower() for x in rows[0]]
    if "path" in header and "label" in header:
        cols = {name: header.index(name) for name in header}
        rows = rows[1:]
    else:
        cols = {"path": 0, "label": 1}
        if len(rows[0]) > 2:
            cols["fold"] = 2
    base = path.parent
    parsed = []
    names: list[str] = []
    for n, row in enumerate(rows, start=2 if "path" in header else 1):
        try:
            file = row[cols["path"]].strip()
            labels = [_label_text(x) for x in row[cols["label"]].split(";") if x.strip()]
            fold = row[cols["fold"]].strip() if "fold" in cols and cols["fold"] < len(row) else ""
        except IndexError:
            raise ValueError(f"{path}, line {n}: expected path,label[,fold]") from None
        if not labels:
            raise ValueError(f"{path}, line {n}: no label")
        for label in labels:
            if label not in names:
                names.append(label)
        extra = {k: row[i].strip() for k, i in cols.items() if k in ("group", "image") and i < len(row) and row[i].strip()}
        parsed.append((file, labels, int(fold) if fold else None, extra))
    classes = sorted(names)
    index_of = {c: i for i, c in enumerate(classes)}
    clips, missing = [], []
    for file, labels, fold, extra in parsed:
        p = Path(file) if os.path.isabs(file) else base / file
        if not p.is_file():
            missing.append(str(p))
            continue
        image = extra.get("image")
        if image and not os.path.isabs(image):
            image = str(base / image)
        clips.append(
            Clip(
                path=str(p),
                labels=tuple(labels),
                targets=tuple(index_of[x] for x in labels),
                fold=fold,
                group=extra.get("group"),
                image=image,
                key=file,
            )
        )
    folds = sorted({c.fold for c in clips if c.fold is not None})
    if folds and any(c.fold is None for c in clips):
        raise ValueError(f"{path}: some rows have a fold and some do not")
    return DatasetIndex(
        name=f"csv {path.name}",
        clips=clips,
        classes=classes,
        multilabel=any(len(c.targets) > 1 for c in clips),
        folds=folds,
        missing=missing,
    )
