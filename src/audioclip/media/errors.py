"""MediaError, and the checks every reader does before handing a path to a library."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from ..errors import AudioclipError

__all__ = ["MediaError", "check_file", "one_line", "special_file_kind"]


class MediaError(AudioclipError):
    """A file could not be read as the requested media.

    ``str(error)`` is one line, ``"{path}: {reason}"``, fit to show a user as is;
    the library exception that caused it (if any) is kept as ``__cause__``.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # so that errors cross process boundaries (DataLoader workers)
        return (type(self), (self.path, self.reason))


def check_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it is a non-empty regular file, else raise MediaError.

    Libraries report these cases obscurely or not at all (libsndfile says "System
    error", an empty file looks like a corrupt one), so they are caught here first.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MediaError(path, "no such file") from None
    except OSError as e:
        raise MediaError(path, f"cannot access file ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError(path, "is a directory, not a file")
    kind = special_file_kind(info.st_mode)
    if kind:
        # opening a FIFO blocks until a writer appears; a device can be endless
        raise MediaError(path, f"is a {kind}, not a regular file")
    if info.st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "permission denied")
    return path


def special_file_kind(mode: int) -> str | None:
    """``"FIFO"``, ``"socket"``, ``"character device"``, ``"block device"`` for such a ``st_mode``; else None."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return None


def one_line(error: BaseException) -> str:
    """A library exception's message, squeezed onto one line for a MediaError reason."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
