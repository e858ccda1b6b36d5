"""What a dataset is before anything is decoded: a list of clips with labels, and its splits.

Every dataset reader (ESC-50, UrbanSound8K, AudioSet, a custom folder) returns a
:class:`DatasetIndex`; :func:`split_index` turns it into train / validation /
test lists. Nothing here reads audio samples.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from ..media.sniff import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = [
    "Clip",
    "DatasetIndex",
    "Splits",
    "ValidationSpec",
    "MetadataClips",
    "clips_from_metadata",
    "find_media",
    "read_metadata",
    "split_index",
]


@dataclass(frozen=True)
class Clip:
    """One labelled recording.

    ``labels`` are the label texts (as used in prompts), ``targets`` the class
    indices, in the same order. ``fold`` is the official fold (ESC-50, US8K or a
    custom CSV); ``split`` a predefined split name (AudioSet's ``"train"`` /
    ``"eval"``). ``group`` names the source recording: clips of one group never
    end up on both sides of a split. ``image`` is a picture or a folder of frames
    that goes with the clip; ``weight`` its sample weight in the loss.
    """

    path: str
    labels: tuple[str, ...]
    targets: tuple[int, ...]
    fold: int | None = None
    split: str | None = None
    group: str | None = None
    image: str | None = None
    key: str | None = None
    weight: float = 1.0

    @property
    def text(self) -> str:
        """The label texts joined as the original does for multi-label clips."""
        return ", ".join(self.labels)


@dataclass
class DatasetIndex:
    """A dataset's clips and label space.

    ``classes[i]`` is the label text of class ``i``. ``max_duration`` is the
    longest clip in seconds when the metadata tells (``None``: unknown, the
    training code then measures it). ``missing`` lists metadata rows whose
    file was not found; ``notes`` says anything else a user should know.
    """

    name: str
    clips: list[Clip]
    classes: list[str]
    multilabel: bool = False
    folds: list[int] = field(default_factory=list)
    max_duration: float | None = None
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)

    def summary(self) -> str:
        text = f"{self.name}: {len(self.clips)} clips, {len(self.classes)} classes"
        if self.folds:
            text += f", folds {self.folds[0]}..{self.folds[-1]}"
        if self.missing:
            text += f"; {len(self.missing)} listed files not found (e.g. {self.missing[0]})"
        return text


#: how the validation set is made (see :class:`ValidationSpec`)
ValidationKind = Literal["fraction", "fold", "test", "none"]


@dataclass(frozen=True)
class ValidationSpec:
    """How the validation set (used to pick the best epoch) is made.

    ``kind``:

    - ``"fraction"`` (default): a seeded random ``fraction`` of the training
      clips, whole source groups at a time and about that fraction of every class;
    - ``"fold"``: one whole official fold (``fold``; ``None`` takes the fold after
      the test fold), removed from training;
    - ``"test"``: the test set itself, as the original code did. Selecting the
      epoch on the test set overstates the test score; only for reproducing it.
    - ``"none"``: no validation; the last epoch is kept.
    """

    kind: ValidationKind = "fraction"
    fraction: float = 0.1
    fold: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.kind not in get_args(ValidationKind):
            raise ValueError(f"validation kind must be fraction, fold, test or none; got {self.kind!r}")
        if self.kind == "fraction" and not 0.0 < self.fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {self.fraction}")


@dataclass
class Splits:
    train: list[Clip]
    val: list[Clip]
    test: list[Clip]
    description: str = ""
    val_is_test: bool = False


def split_index(
    index: DatasetIndex,
    test_fold: int | None = None,
    test_split: str | None = None,
    validation: ValidationSpec | None = None,
    test_fraction: float = 0.2,
) -> Splits:
    """Cut ``index`` into train / validation / test.

    The test set is, in order of preference: the clips of ``test_fold``; the
    clips whose predefined split is ``test_split`` (AudioSet ``"eval"``); or a
    seeded, group-respecting ``test_fraction`` of everything (a custom dataset
    with neither folds nor splits). The validation set is then taken from what
    is left, as ``validation`` says. The three are disjoint, except with
    ``validation.kind == "test"``.
    """
    validation = validation or ValidationSpec()
    clips = index.clips
    if test_fold is not None:
        if index.folds and test_fold not in index.folds:
            raise ValueError(f"{index.name}: no fold {test_fold}; folds are {index.folds}")
        test = [c for c in clips if c.fold == test_fold]
        pool = [c for c in clips if c.fold != test_fold]
        where = f"test fold {test_fold}"
    elif test_split is not None:
        test = [c for c in clips if c.split == test_split]
        pool = [c for c in clips if c.split != test_split]
        where = f"test split {test_split!r}"
    else:
        pool, test = _grouped_fraction(clips, test_fraction, seed=validation.seed + 7919)
        where = f"test: random {test_fraction:.0%} (seed {validation.seed})"
    if not test:
        raise ValueError(f"{index.name}: the test set ({where}) is empty")

    val_is_test = False
    if validation.kind == "test":
        train, val, val_is_test = pool, list(test), True
        vwhere = "validation = test set (select-on-test: the test score is optimistic)"
    elif validation.kind == "none":
        train, val = pool, []
        vwhere = "no validation set (last epoch kept)"
    elif validation.kind == "fold":
        folds = sorted({c.fold for c in pool if c.fold is not None})
        if not folds:
            raise ValueError(f"{index.name}: validation by fold needs clips with folds")
        vfold = validation.fold
        if vfold is None:
            later = [f for f in folds if test_fold is not None and f > test_fold]
            vfold = later[0] if later else folds[0]
        if vfold == test_fold or vfold not in folds:
            raise ValueError(f"{index.name}: validation fold {vfold} is not a training fold ({folds})")
        val = [c for c in pool if c.fold == vfold]
        train = [c for c in pool if c.fold != vfold]
        vwhere = f"validation fold {vfold}"
    else:
        train, val = _grouped_fraction(pool, validation.fraction, seed=validation.seed)
        vwhere = f"validation: random {validation.fraction:.0%} of the training clips by source (seed {validation.seed})"
    if not train:
        raise ValueError(f"{index.name}: no training clips left ({where}; {vwhere})")
    description = f"{where}; {vwhere}; train {len(train)}, validation {len(val)}, test {len(test)}"
    return Splits(train=train, val=val, test=test, description=description, val_is_test=val_is_test)


def _grouped_fraction(clips: Sequence[Clip], fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Split into (rest, held out) with about ``fraction`` of each class held out, whole groups at a time.

    Groups are shuffled with ``seed``; for each class (rarest first) groups are
    moved to the held-out side until the class has its share there. A clip
    without a group is its own group.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        groups[clip.group if clip.group is not None else f"\0{i}"].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    class_count: dict[int, int] = defaultdict(int)
    for name, members in groups.items():
        for t in {t for i in members for t in clips[i].targets}:
            by_class[t].append(name)
    for clip in clips:
        for t in clip.targets:
            class_count[t] += 1
    rng = random.Random(seed)
    held: set[str] = set()
    held_count: dict[int, int] = defaultdict(int)
    for t in sorted(by_class, key=lambda t: (class_count[t], t)):
        names = sorted(by_class[t])
        rng.shuffle(names)
        want = max(1, math.floor(fraction * class_count[t] + 0.5)) if class_count[t] > 1 else 0
        for name in names:
            if held_count[t] >= want:
                break
            if name in held:
                continue
            # never hold out a group that would leave a class without training clips
            members = groups[name]
            adds: dict[int, int] = defaultdict(int)
            for i in members:
                for u in clips[i].targets:
                    adds[u] += 1
            if any(held_count[u] + n >= class_count[u] for u, n in adds.items()):
                continue
            held.add(name)
            for i in members:
                for u in clips[i].targets:
                    held_count[u] += 1
    rest = [c for name, members in groups.items() if name not in held for c in (clips[i] for i in members)]
    out = [c for name, members in groups.items() if name in held for c in (clips[i] for i in members)]
    order = {id(c): i for i, c in enumerate(clips)}
    rest.sort(key=lambda c: order[id(c)])
    out.sort(key=lambda c: order[id(c)])
    return rest, out


# -- finding files --------------------------------------------------------

_MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS


class _Folder:
    """A folder's file names, listed once, looked up by name or by stem."""

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        self.names = set(names)
        self.by_stem: dict[str, str] = {}
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if ext.lower() in _MEDIA_EXTENSIONS:
                self.by_stem.setdefault(stem, name)


class find_media:  # noqa: N801 (used like a function with a per-folder memory)
    """Look a file up by its metadata name, accepting another audio extension.

    Metadata names ``1-100032-A-0.wav``; a copy may hold ``1-100032-A-0.flac``.
    ``find_media()(folder, name)`` returns the path, or ``None`` when neither exists.
    """

    def __init__(self):
        self._folders: dict[Path, _Folder] = {}

    def __call__(self, folder: Path, name: str) -> Path | None:
        entry = self._folders.get(folder)
        if entry is None:
            entry = self._folders[folder] = _Folder(folder)
        if name in entry.names:
            return folder / name
        other = entry.by_stem.get(os.path.splitext(name)[0])
        return folder / other if other is not None else None


def read_metadata(path: Path, columns: set[str], dataset: str, official: str) -> list[dict[str, str]]:
    """The rows of ``dataset``'s metadata CSV (``official``: its name as distributed), checked for ``columns``."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: no metadata file {path} (expected the official {official})")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not columns <= set(rows[0]):
        raise ValueError(f"{path}: expected columns {sorted(columns)}")
    return rows


@dataclass
class MetadataClips:
    """What :func:`clips_from_metadata` found: the clips, every class's label text, the absent files."""

    clips: list[Clip]
    names: dict[int, str]
    missing: list[str]


def clips_from_metadata(
    rows: Iterable[dict[str, str]],
    *,
    file: str,
    target: str,
    label: str,
    folder: Callable[[dict[str, str]], Path],
    group: Callable[[dict[str, str]], str],
    keep: Callable[[dict[str, str]], bool] = lambda row: True,
) -> MetadataClips:
    """One single-label :class:`Clip` per metadata row (ESC-50, UrbanSound8K).

    The columns ``file``, ``target`` and ``label`` give the file name, the
    class index and its label text (underscores as spaces); ``folder(row)``
    the folder the file is in, ``group(row)`` its source recording. Every
    row names its class, also one that ``keep(row)`` leaves out; a row whose
    file is absent (under any audio extension) is listed in ``missing``.
    """
    names: dict[int, str] = {}
    clips, missing = [], []
    find = find_media()
    for row in rows:
        index = int(row[target])
        text = row[label].replace("_", " ").strip()
        names.setdefault(index, text)
        if not keep(row):
            continue
        where = folder(row)
        path = find(where, row[file])
        if path is None:
            missing.append(str(where / row[file]))
            continue
        clips.append(
            Clip(
                path=str(path),
                labels=(text,),
                targets=(index,),
                fold=int(row["fold"]),
                group=group(row),
                key=Path(row[file]).stem,
            )
        )
    return MetadataClips(clips, names, missing)


def relabel(clips: Iterable[Clip], keep: Sequence[int]) -> tuple[list[Clip], dict[int, int]]:
    """Keep the clips of classes ``keep`` and renumber those classes 0..len(keep)-1."""
    mapping = {old: new for new, old in enumerate(keep)}
    out = []
    for clip in clips:
        if all(t in mapping for t in clip.targets):
            out.append(replace(clip, targets=tuple(mapping[t] for t in clip.targets)))
    return out, mapping
