"""What ``audioclip fit`` learns from: a folder per class, or a table of ``path,label[,fold,group]``.

Read before the model is loaded, without decoding anything. Problems that
leave a usable data set (a missing file, a class with one clip) are kept as
one-line messages in :attr:`LabelledData.problems` and the rest goes on;
problems that do not (fewer than two classes, labels that differ only in
case) raise :class:`DataError`.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AudioclipError
from ..io import FileReadError, check_regular_file, read_text_bounded
from ..media.files import expand_paths
from ..media.sniff import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = ["BACKGROUND_NAMES", "DataError", "Example", "LabelledData", "check_shots", "label_text", "parse_shots",
           "read_data"]

#: class names taken as "none of the classes" unless ``background=`` names another
BACKGROUND_NAMES = ("background", "noise", "other")
#: the largest table read (a CSV of a million rows is about 100 MB)
MAX_TABLE_BYTES = 256 << 20
TABLE_SUFFIXES = (".csv", ".parquet")
_SOUND_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS


class DataError(AudioclipError, ValueError):
    """The data cannot be fitted at all (one line naming the file or class); nothing was embedded."""


@dataclass(frozen=True)
class Example:
    """One labelled clip: its resolved path, its labels (empty for a background clip of a multi-label table)."""

    path: str
    labels: tuple[str, ...]
    fold: int | None = None
    group: str | None = None
    where: str = ""  # "DATA/dog/" or "DATA.csv, line 7": for messages


@dataclass
class LabelledData:
    """The examples, the class names (sorted; the background class is one of them) and what was left out."""

    source: str
    examples: list[Example]
    classes: list[str]
    background: str | None = None
    multilabel: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def has_folds(self) -> bool:
        return any(e.fold is not None for e in self.examples)

    def counts(self) -> Counter:
        """Clips per class."""
        return Counter(label for e in self.examples for label in (e.labels or (self.background,)) if label)

    def without(self, paths: set[str]) -> LabelledData:
        """The same data without the clips at ``paths`` (that could not be embedded)."""
        return LabelledData(self.source, [e for e in self.examples if e.path not in paths], list(self.classes),
                            self.background, self.multilabel, list(self.problems))


def label_text(label: str) -> str:
    """The text of a class for its zero-shot prompt: a folder name's underscores read as spaces."""
    return label.replace("_", " ").strip()


def read_data(source: str | os.PathLike, *, background: str | None = None) -> LabelledData:
    """Read ``source`` (a folder of class folders, or a ``.csv``/``.parquet`` table) and check it.

    ``background`` names the class of negative clips; by default a class called ``background``, ``noise`` or
    ``other`` is one. Then :func:`check_data`.
    """
    path = Path(source)
    if path.is_dir():
        data = _read_tree(path)
    elif path.is_file() or path.exists():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DataError(f"{path}: a table is a .csv or .parquet file with columns path,label[,fold,group]")
        data = _read_table(path)
    else:
        raise DataError(f"{path}: no such folder or file")
    return check_data(data, background=background)


def check_data(data: LabelledData, *, background: str | None = None, min_clips: int = 2) -> LabelledData:
    """Choose the background class, leave out classes with fewer than ``min_clips`` clips (a problem each), and
    refuse data that cannot be fitted: labels that differ only in case, fewer than two classes."""
    by_case: dict[str, str] = {}
    for label in data.classes:
        other = by_case.setdefault(label.casefold(), label)
        if other != label:
            raise DataError(f"{data.source}: classes {other!r} and {label!r} differ only in case; "
                            "rename one (or merge them)")
    if background is not None:
        if background not in data.classes:
            raise DataError(f"{data.source}: the background class {background!r} is not one of the classes "
                            f"({', '.join(data.classes)})")
        data.background = background
    else:
        found = [c for c in data.classes if c.casefold() in BACKGROUND_NAMES]
        if len(found) > 1:
            raise DataError(f"{data.source}: classes {found[0]!r} and {found[1]!r} could both be the background "
                            "class; choose one with --background NAME")
        data.background = found[0] if found else None
    if data.multilabel and data.background:  # a background clip of a multi-label table has no label at all
        data.examples = [Example(e.path, tuple(x for x in e.labels if x != data.background), e.fold, e.group,
                                 e.where) for e in data.examples]
        data.classes = [c for c in data.classes if c != data.background]
    counts = data.counts()
    for label in list(data.classes):
        if counts.get(label, 0) >= min_clips:
            continue
        n = counts.get(label, 0)
        if n == 0:
            data.problems.append(f"class {label!r}: no clips; left out")
        else:
            one = next(e for e in data.examples if label in (e.labels or (data.background,)))
            data.problems.append(f"class {label!r}: only {n} clip ({one.path}); a class needs at least {min_clips} "
                                 "(one to fit on, one to validate on); left out")
        data.classes.remove(label)
        if label == data.background:
            data.background = None
            data.examples = [e for e in data.examples if e.labels and e.labels != (label,)]
        elif data.multilabel:
            data.examples = [Example(e.path, tuple(x for x in e.labels if x != label), e.fold, e.group, e.where)
                             for e in data.examples]
        else:
            data.examples = [e for e in data.examples if e.labels != (label,)]
    if len(data.classes) < 2:
        have = ", ".join(repr(c) for c in data.classes) or "none"
        raise DataError(f"{data.source}: fitting needs at least two classes with two clips each; usable: {have}")
    folds = {e.fold for e in data.examples}
    if None in folds and len(folds) > 1:
        raise DataError(f"{data.source}: some rows have a fold and some do not")
    if len(folds - {None}) == 1:
        raise DataError(f"{data.source}: every row is in fold {folds.pop()}; give at least two folds, or none")
    return data


def _read_tree(root: Path) -> LabelledData:
    classes, examples = [], []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files, _ = expand_paths([folder], resolve=True)
        files = [f for f in files if Path(f).suffix.lower() in _SOUND_EXTENSIONS]  # pictures have no sound
        classes.append(folder.name)  # an empty one is reported (and left out) by check_data
        examples += [Example(f, (folder.name,), where=f"{folder}/") for f in files]
    if not classes:
        raise DataError(f"{root}: no class folders (one sub-folder per class is expected)")
    return LabelledData(str(root), examples, classes)


def _read_table(path: Path) -> LabelledData:
    if path.suffix.lower() == ".parquet":
        rows = _parquet_rows(path)
    else:
        try:
            text = read_text_bounded(path, MAX_TABLE_BYTES, what="labels table")
        except FileReadError as err:
            raise DataError(str(err)) from None
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        if not rows:
            raise DataError(f"{path}: empty table")
        header = [cell.strip().lower() for cell in rows[0]]
        rows = [dict(zip(header, r)) for r in rows[1:]]
        first_line = 2
    if path.suffix.lower() == ".parquet":
        header, first_line = (list(rows[0]) if rows else []), 1
    if "path" not in header or "label" not in header:
        raise DataError(f"{path}: the table needs a header with columns path and label (and optional fold, group)")
    base = path.parent
    examples, problems, classes, seen = [], [], [], {}
    for n, row in enumerate(rows, start=first_line):
        where = f"{path}, {'line' if path.suffix.lower() == '.csv' else 'row'} {n}"
        name = str(row.get("path") or "").strip()
        labels = tuple(dict.fromkeys(x.strip() for x in str(row.get("label") or "").split(";") if x.strip()))
        if not name or not labels:
            problems.append(f"{where}: {'no path' if not name else 'no label'}; left out")
            continue
        file = Path(name) if os.path.isabs(name) else base / name
        if not file.is_file():
            problems.append(f"{file} ({where}): no such file; left out")
            continue
        resolved = os.path.realpath(file)
        if resolved in seen:
            problems.append(f"{file} ({where}): already listed on {seen[resolved]}; this row left out")
            continue
        seen[resolved] = where
        fold = row.get("fold")
        fold_text = "" if fold is None else str(fold).strip()
        try:
            fold_value = int(float(fold_text)) if fold_text else None
        except ValueError:
            raise DataError(f"{where}: fold {fold_text!r} is not a number") from None
        group = str(row.get("group") or "").strip() or None
        classes += [x for x in labels if x not in classes]
        examples.append(Example(resolved, labels, fold_value, group, where))
    multilabel = any(len(e.labels) > 1 for e in examples)
    return LabelledData(str(path), examples, sorted(classes), multilabel=multilabel, problems=problems)


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        check_regular_file(path, MAX_TABLE_BYTES, what="labels table")
        table = pq.read_table(path)
    except FileReadError as err:
        raise DataError(str(err)) from None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return table.to_pylist()


def parse_shots(text: str | Sequence) -> list[int | None]:
    """``"1,5,all"`` -> ``[1, 5, None]`` (``None``: every clip); a ValueError in one line otherwise."""
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else [str(x) for x in text]
    out: list[int | None] = []
    for item in items:
        if item.lower() == "all":
            value = None
        else:
            try:
                value = int(item)
            except ValueError:
                raise ValueError(f"shots: {item!r} is not a number or 'all'") from None
            if value < 1:
                raise ValueError(f"shots: {value} is not a positive number")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError("shots: give at least one count, e.g. 1,5,all")
    return sorted(out, key=lambda v: float("inf") if v is None else v)


def check_shots(data: LabelledData, shots: Sequence[int | None]) -> None:
    """A ValueError unless every shot count fits in the smallest class (checked before anything is embedded)."""
    counts = data.counts()
    smallest = min(data.classes, key=lambda c: counts.get(c, 0))
    for s in shots:
        if s is not None and s > counts.get(smallest, 0):
            raise ValueError(f"--shots {s} is more than class {smallest!r} has ({counts.get(smallest, 0)} clips)")
