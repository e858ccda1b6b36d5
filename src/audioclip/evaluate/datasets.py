"""Evaluation sets: the items of a dataset with their audio and/or picture, labels and fold.

ESC-50, UrbanSound8K, AudioSet and custom folders are indexed by
:mod:`audioclip.data`; ImageNet (validation set in folder layout) is indexed
here. The label text of a class is what the original code put in the prompt:
ESC-50 ``category`` and UrbanSound8K ``class`` with ``_`` as spaces, AudioSet's
display names (a multi-label clip's text is its labels joined with ``", "``),
ImageNet's CLIP class names (see :func:`read_imagenet`).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..io import read_text_bounded
from ..media.sniff import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = ["DATASETS", "EvalItem", "EvalSet", "load_eval_set", "read_imagenet"]

DATASETS = ("esc50", "us8k", "audioset", "imagenet", "folder")
#: the most an ImageNet class-names file may hold (CLIP's 1000 names: about 30 KB)
MAX_CLASS_NAMES_BYTES = 1_000_000
_WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class EvalItem:
    """One evaluated sample. ``audio`` is a sound or video file; ``image`` a picture, a folder of
    frames (the central one is used) or a video file (its central frame)."""

    key: str
    labels: tuple[str, ...]
    targets: tuple[int, ...]
    audio: str | None = None
    image: str | None = None
    fold: int | None = None
    split: str | None = None


@dataclass
class EvalSet:
    """A dataset ready for evaluation."""

    name: str  # esc50, us8k, audioset, imagenet, folder
    title: str  # for people: "ESC-50"
    root: str
    items: list[EvalItem]
    classes: list[str]
    multilabel: bool = False
    folds: list[int] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # why this is not the whole dataset (no paper comparison)

    @property
    def modalities(self) -> list[str]:
        have = []
        if any(i.audio for i in self.items):
            have.append("audio")
        if any(i.image for i in self.items):
            have.append("image")
        return have

    def identity(self) -> str:
        """A short name for caches: dataset, root and the options that change the item list."""
        text = f"{self.name}|{os.path.abspath(self.root)}|{sorted(self.options.items())}"
        return f"{self.name}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"

    def select_folds(self, folds: list[int] | None) -> EvalSet:
        """The items of ``folds`` only (``None``: all)."""
        if not folds:
            return self
        if not self.folds:
            raise ValueError(f"{self.title} has no folds; --folds does not apply")
        unknown = [f for f in folds if f not in self.folds]
        if unknown:
            raise ValueError(f"{self.title}: no fold(s) {unknown}; folds are {self.folds}")
        keep = set(folds)
        items = [i for i in self.items if i.fold in keep]
        partial = list(self.partial)
        if keep != set(self.folds):
            partial.append(f"fold(s) {', '.join(map(str, sorted(keep)))} of {len(self.folds)}")
        return EvalSet(self.name, self.title, self.root, items, self.classes, self.multilabel,
                       sorted(keep), self.options, self.notes, partial)

    def summary(self) -> str:
        text = f"{self.title}: {len(self.items)} items, {len(self.classes)} classes"
        if self.folds:
            text += f", fold(s) {', '.join(map(str, self.folds))}"
        return text + f" ({'+'.join(self.modalities) or 'nothing'})"


def load_eval_set(name: str, root: str | os.PathLike, **options) -> EvalSet:
    """Index dataset ``name`` at ``root`` for evaluation.

    Options: ESC-50 ``audio_dir`` (e.g. ``"audio_16k"``), ``subset`` (``"esc10"``);
    AudioSet ``split`` (``"eval"`` default, ``"train"``, ``"all"``), ``clips_dir``,
    ``frames_dir``, ``eval_segments``, ``train_segments``; ImageNet ``class_names``
    (a file). ``None`` values are ignored.
    """
    options = {k: v for k, v in options.items() if v is not None}
    root = str(root)
    if name == "imagenet":
        return read_imagenet(root, **options)
    from ..data import read_dataset

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    reader_options = dict(options)
    split = reader_options.pop("split", "eval") if name == "audioset" else None
    if name == "audioset":
        if split not in ("eval", "train", "all"):
            raise ValueError(f"AudioSet split must be eval, train or all; got {split!r}")
        if split == "eval":
            reader_options["train_segments"] = ()
        if split == "train":
            reader_options["eval_segments"] = None
        reader_options.setdefault("class_weights", "none")
        if "train_segments" in reader_options and isinstance(reader_options["train_segments"], str):
            reader_options["train_segments"] = tuple(reader_options["train_segments"].split(","))
    index = read_dataset(name, root, **reader_options)
    items = []
    for clip in index.clips:
        image = clip.image
        if image is None and os.path.splitext(clip.path)[1].lower() in VIDEO_EXTENSIONS:
            image = clip.path
        items.append(EvalItem(key=clip.key or clip.path, labels=clip.labels, targets=clip.targets,
                              audio=clip.path, image=image, fold=clip.fold, split=clip.split))
    notes = list(index.notes)
    if index.missing:
        notes.append(f"{len(index.missing)} file(s) listed in the metadata are absent and not evaluated "
                     f"(e.g. {index.missing[0]})")
    titles = {"esc50": index.name, "us8k": "UrbanSound8K", "audioset": "AudioSet", "folder": index.name}
    folds = sorted({i.fold for i in items if i.fold is not None}) if index.folds else []
    if name == "audioset" and split:
        options["split"] = split
    partial = []
    if index.missing:
        partial.append(f"{len(index.missing)} of {len(index.missing) + len(items)} listed files absent")
    if name == "esc50" and options.get("subset"):
        name = options["subset"]  # ESC-10: not the paper's dataset
    if options.get("audio_dir"):
        notes.append(f"audio read from {options['audio_dir']}/")
    return EvalSet(name, titles[name] if name in titles else index.name, root, items, list(index.classes),
                   index.multilabel, folds, options, notes, partial)


def read_imagenet(root: str | os.PathLike, class_names: str | os.PathLike | None = None) -> EvalSet:
    """ImageNet validation images in folder layout: ``root/<class folder>/<image>`` (or ``root/val/...``).

    Class ``i`` is the ``i``-th folder in sorted order (as torchvision's
    ``ImageFolder``). Label texts come from, in order of preference:
    ``class_names``, a file with one ``folder,name`` row per class (or one name
    per line, in folder order); CLIP's curated ImageNet class names when the
    folders are the 1000 WordNet IDs; else the folder names with ``_`` as spaces.
    """
    base = Path(root)
    if (base / "val").is_dir():
        base = base / "val"
    if not base.is_dir():
        raise FileNotFoundError(f"ImageNet: {root} is not a folder")
    folders = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise ValueError(f"ImageNet: no class folders under {base} (expected <class folder>/<image>)")
    notes = []
    if class_names is not None:
        names = _read_class_names(Path(class_names), folders)
        source = f"class names from {class_names}"
    elif len(folders) == 1000 and all(_WNID.match(f) for f in folders):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
        source = "CLIP's curated ImageNet class names (open_clip.zero_shot_metadata), in WordNet-ID order"
    else:
        names = [f.replace("_", " ").strip() for f in folders]
        source = "class names: the folder names"
        if all(_WNID.match(f) for f in folders):
            notes.append(f"{len(folders)} WordNet-ID folders (not the full 1000): pass --class-names to get "
                         "readable label texts; the WordNet IDs themselves are used as text")
    notes.append(source)
    items = []
    for target, folder in enumerate(folders):
        for dirpath, dirs, files in os.walk(base / folder):
            dirs.sort()
            for fname in sorted(files):
                if os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS:
                    path = os.path.join(dirpath, fname)
                    items.append(EvalItem(key=os.path.relpath(path, base), labels=(names[target],),
                                          targets=(target,), image=path))
    if not items:
        raise ValueError(f"ImageNet: no images under {base}")
    options = {"class_names": str(class_names)} if class_names else {}
    partial = [] if len(folders) == 1000 else [f"{len(folders)} classes, not ImageNet's 1000"]
    return EvalSet("imagenet", "ImageNet", str(root), items, names, False, [], options, notes, partial)


def _read_class_names(path: Path, folders: list[str]) -> list[str]:
    text = read_text_bounded(path, MAX_CLASS_NAMES_BYTES, what="class names file")  # a FileReadError (ValueError)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rows = list(csv.reader(lines))
    known = set(folders)
    if all(len(r) >= 2 and r[0].strip() in known for r in rows):
        mapping = {r[0].strip(): ",".join(r[1:]).strip() for r in rows}
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise ValueError(f"{path}: no name for folder(s) {missing[:5]}")
        return [mapping[f] for f in folders]
    if len(lines) != len(folders):
        raise ValueError(f"{path}: {len(lines)} names for {len(folders)} class folders")
    return lines
