"""What needs no model: finding media files (:func:`expand_paths`) and how they are decoded
(:class:`DecodeOptions`); both re-exported by :mod:`audioclip.inference`.

Kept apart from the model code so that what only lists files (an ``index``
run with nothing to embed) does not import it (open_clip, torchvision: seconds).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import special_file_kind
from .limits import MediaLimits
from .sniff import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ..util import is_uri

__all__ = ["MEDIA_EXTENSIONS", "DecodeOptions", "expand_paths", "resolve_paths"]

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
