"""AudioSet (Gemmeke et al., 2017) from its segment lists and a local folder of clips.

Expected under ``root`` (names configurable)::

    class_labels_indices.csv        index,mid,display_name
    balanced_train_segments.csv     # comment lines, then YTID, start_seconds, end_seconds, "mid,mid"
    unbalanced_train_segments.csv
    eval_segments.csv
    clips/                          the downloaded audio or video files, any nesting
    frames/                         optional: frames/<YTID>/*.jpg (``audioclip prepare extract`` writes them)

A clip file is matched to its segment by YouTube ID: ``<YTID>.ext``,
``<YTID>_<start>[_<end>].ext`` and ``Y<YTID>[...].ext`` are all recognised.
Segments whose file was never downloaded are left out and counted (a normal
AudioSet download misses a good part of them).

Multi-label: the label text of a clip is its classes' display names joined
with ``", "``, as the original does. Each class gets a weight (inverse of its
frequency in the training split, normalised so that a class of average
frequency weighs 1; ``class_weights="none"`` turns this off) and a clip's
sample weight is the sum of its classes' weights.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..media.sniff import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .cliplist import Clip, DatasetIndex

__all__ = ["read_audioset", "read_class_labels", "read_segments", "youtube_ids_of_name"]

_YTID = r"[A-Za-z0-9_-]{11}"
_PLAIN = re.compile(rf"^({_YTID})(?:_.*)?$")
_PREFIXED = re.compile(rf"^Y({_YTID})(?:_.*)?$")


def youtube_ids_of_name(stem: str) -> list[str]:
    """The YouTube IDs a file stem may stand for (``--PJHxphWEs_30.000`` -> ``["--PJHxphWEs"]``)."""
    ids = []
    for pattern in (_PLAIN, _PREFIXED):
        m = pattern.match(stem)
        if m:
            ids.append(m.group(1))
    return ids


def read_class_labels(path: str | Path) -> tuple[list[str], dict[str, int]]:
    """``class_labels_indices.csv`` -> (display names by index, mid -> index)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns index,mid,display_name")
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: indices are not 0..{len(rows) - 1}")
    return [r["display_name"].strip() for r in rows], {r["mid"].strip(): int(r["index"]) for r in rows}


def read_segments(path: str | Path) -> list[tuple[str, float, float, list[str]]]:
    """A segment CSV -> ``[(ytid, start, end, [mid, ...]), ...]``; ``#`` lines are skipped."""
    out = []
    with open(path, newline="") as f:
        reader = csv.reader((line for line in f if not line.startswith("#")), skipinitialspace=True)
        for row in reader:
            if not row:
                continue
            if len(row) < 4:
                raise ValueError(f"{path}: malformed row {row!r}")
            mids = [m.strip() for m in ",".join(row[3:]).strip('"').split(",") if m.strip()]
            out.append((row[0].strip(), float(row[1]), float(row[2]), mids))
    return out


def _index_folder(folder: Path, extensions: frozenset[str], directories: bool = False) -> dict[str, str]:
    """YouTube ID -> path for every matching file (or top-level directory) under ``folder``."""
    found: dict[str, str] = {}
    if not folder.is_dir():
        return found
    if directories:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            name, ext = os.path.splitext(entry.name)
            if entry.is_dir():
                name = entry.name
            elif ext.lower() not in extensions:
                continue
            for ytid in youtube_ids_of_name(name):
                found.setdefault(ytid, entry.path)
        return found
    for base, dirs, files in os.walk(folder):
        dirs.sort()
        for fname in sorted(files):
            stem, ext = os.path.splitext(fname)
            if ext.lower() in extensions:
                for ytid in youtube_ids_of_name(stem):
                    found.setdefault(ytid, os.path.join(base, fname))
    return found


def read_audioset(
    root: str | Path,
    train_segments: Sequence[str] = ("balanced_train_segments.csv",),
    eval_segments: str | None = "eval_segments.csv",
    labels_csv: str = "class_labels_indices.csv",
    clips_dir: str = "clips",
    frames_dir: str | None = None,
    class_weights: str = "inverse_frequency",
) -> DatasetIndex:
    """Index the downloaded part of AudioSet. Clips carry ``split`` ``"train"`` or ``"eval"``."""
    root = Path(root)
    classes, mid_to_index = read_class_labels(root / labels_csv)
    clip_files = _index_folder(root / clips_dir, AUDIO_EXTENSIONS | VIDEO_EXTENSIONS)
    frames = _index_folder(root / frames_dir, IMAGE_EXTENSIONS, directories=True) if frames_dir else {}
    lists = [(name, "train") for name in train_segments]
    if eval_segments:
        lists.append((eval_segments, "eval"))

    clips: list[Clip] = []
    missing: list[str] = []
    unknown: Counter[str] = Counter()
    seen: set[str] = set()
    longest = 0.0
    for name, split in lists:
        for ytid, start, end, mids in read_segments(root / name):
            if ytid in seen:  # a video listed twice keeps its first segment
                continue
            seen.add(ytid)
            targets = []
            for mid in mids:
                if mid in mid_to_index:
                    targets.append(mid_to_index[mid])
                else:
                    unknown[mid] += 1
            if not targets:
                continue
            path = clip_files.get(ytid)
            if path is None:
                missing.append(ytid)
                continue
            longest = max(longest, end - start)
            targets = sorted(set(targets))
            clips.append(
                Clip(
                    path=path,
                    labels=tuple(classes[t] for t in targets),
                    targets=tuple(targets),
                    split=split,
                    group=f"yt:{ytid}",
                    image=frames.get(ytid),
                    key=ytid,
                )
            )
    notes = []
    if unknown:
        notes.append(f"{sum(unknown.values())} labels not in {labels_csv} ignored (e.g. {next(iter(unknown))})")
    if class_weights not in ("inverse_frequency", "none"):
        raise ValueError(f"class_weights must be 'inverse_frequency' or 'none', got {class_weights!r}")
    if class_weights == "inverse_frequency":
        clips = apply_class_weights(clips, len(classes), splits=("train",))
    return DatasetIndex(
        name="AudioSet",
        clips=clips,
        classes=classes,
        multilabel=True,
        max_duration=longest or None,
        missing=missing,
        notes=notes,
    )


def class_weight_table(clips: Sequence[Clip], num_classes: int) -> list[float]:
    """Per-class weights: ``mean count / count`` (0 for a class never seen)."""
    counts = Counter(t for c in clips for t in c.targets)
    seen = [counts[t] for t in range(num_classes) if counts[t] > 0]
    if not seen:
        return [0.0] * num_classes
    mean = sum(seen) / len(seen)
    return [mean / counts[t] if counts[t] else 0.0 for t in range(num_classes)]


def apply_class_weights(clips: Sequence[Clip], num_classes: int, splits: Sequence[str] = ("train",)) -> list[Clip]:
    """Set each clip's ``weight`` to the sum of its classes' weights, counted on ``splits``."""
    table = class_weight_table([c for c in clips if c.split in splits], num_classes)
    return [replace(c, weight=sum(table[t] for t in c.targets) or 1.0) for c in clips]
