"""What needs no model: finding media files (:func:`expand_paths`), splitting them between
processes (:func:`shard_files`) and how they are decoded (:class:`DecodeOptions`); all
re-exported by :mod:`audioclip.inference`.

Kept apart from the model code so that what only lists files (an ``index``
run with nothing to embed) does not import it (open_clip, torchvision: seconds).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import special_file_kind
from .limits import MediaLimits
from .sniff import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ..util import is_uri

__all__ = ["MEDIA_EXTENSIONS", "DecodeOptions", "expand_paths", "resolve_paths", "shard", "shard_files"]

MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | IMAGE_EXTENSIONS | VIDEO_EXTENSIONS

def expand_paths(inputs: Iterable[str | os.PathLike], *, resolve: bool = False) -> tuple[list[str], list[str]]:
    """Files named directly plus the media files found under directories, sorted, deduplicated.

    Returns ``(files, ignored)``: ``ignored`` are files under the directories
    whose extension is not a known media type. Names given directly are kept
    whatever their type (a bad one is reported when it is read); a missing
    path is kept too, to be reported. A FIFO, socket or device with a media
    name is kept as well, to be reported and skipped when it is read (it is
    never opened); with another name it is ignored.

    ``resolve`` gives every path as its resolved absolute path (symbolic
    links followed, ``..`` and ``.`` gone), so that a file named two ways, or
    reached through a link, is listed once: the identity outputs and indexes
    use for a file.
    """
    files: dict[str, None] = {}
    ignored: list[str] = []
    name = os.path.realpath if resolve else str
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                try:
                    mode = child.stat().st_mode
                except OSError:  # a dangling link: nothing to read
                    ignored.append(name(child))
                    continue
                if not (stat.S_ISREG(mode) or special_file_kind(mode)):
                    continue  # a folder
                if child.suffix.lower() in MEDIA_EXTENSIONS:
                    files[name(child)] = None
                else:
                    ignored.append(name(child))
        else:
            files[name(path)] = None
    return list(files), list(dict.fromkeys(ignored))


def resolve_paths(paths: Iterable[str]) -> list[str]:
    """Local paths as resolved absolute paths, in order, each file once; URIs (``s3://...``) as they are.

    For lists made with ``expand_paths(resolve=False)`` and then cut (``--shard``):
    the cut depends on the paths as the inputs name them, the same on every
    machine, while the output names each file by its identity.
    """
    return list(dict.fromkeys(p if is_uri(p) else os.path.realpath(p) for p in paths))


@dataclass(frozen=True)
class DecodeOptions:
    """How files become model inputs."""

    window: float = 5.0  # seconds
    hop: float | None = None  # seconds; default: the window (no overlap)
    mono: bool = False
    image_size: int = 224
    video_frames: str = "central"  # or "all": the ten equally spaced frames
    sample_rate: int = 44100
    limits: MediaLimits = field(default_factory=MediaLimits)  # per-file bounds, checked from headers


# -- sharding: N processes split one input list -------------------------------


def shard(paths: Sequence[str], index: int, count: int) -> list[str]:
    """The paths of shard ``index`` (0-based) of ``count``.

    Assignment hashes each path, so it depends neither on the order of the
    input nor on the other paths: N processes given the same inputs split
    them without overlap or gap.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index + 1}/{count} does not exist")
    return [p for p in paths if _stable_hash(p) % count == index]


def shard_files(paths: Sequence[str], index: int, count: int) -> list[str]:
    """The files of shard ``index`` of ``count``, as resolved paths, from ``paths`` as the inputs name them.

    Each file is assigned by the first of its names (in sorted order), so the
    shards are the same on machines whose links and mounts differ, and a file
    with two names (a link beside it) is in one shard only. Every machine must
    be given the inputs spelled the same (``data/`` and ``/abs/data`` hash
    apart).
    """
    first: dict[str, str] = {}
    for name in sorted(paths):
        first.setdefault(name if is_uri(name) else os.path.realpath(name), name)
    keep = set(shard(list(first.values()), index, count))
    return [resolved for resolved, name in first.items() if name in keep]


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
