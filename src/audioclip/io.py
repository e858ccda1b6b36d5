"""Atomic file writes: the one way every output, checkpoint and cache of the package reaches disk.

A file is written to a hidden temporary file in the destination's folder
(``.{name}.XXXXXXXX.tmp``), flushed and fsynced, given the permission bits a
plain ``open()`` would have given it, renamed over the destination with
``os.replace`` (atomic within one file system) and the folder fsynced. A
reader, another process or a crash at any moment therefore sees the old file
or the new one, never a torn one; if the writing fails, the temporary file is
removed and the destination keeps its old content.

Two forms, for the two ways files get written:

- :func:`atomic_write` yields an open file object, for code that writes to a stream
  (``json.dump``, ``csv.writer``, ``np.save(f, ...)``, ``torch.save(obj, f)``);
- :func:`atomic_path` yields the temporary *path*, for libraries that insist on
  opening the file themselves (``pyarrow.parquet.write_table``, ``soundfile.write``,
  ``PIL.Image.save``). The temporary name ends in ``.tmp``, so pass the format
  explicitly to libraries that guess it from the suffix (``np.save`` would even
  append ``.npy``: give it a file object from :func:`atomic_write` instead).

Standard library only: everything else in the package may import this module.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from .errors import AudioclipError

__all__ = ["FileReadError", "LockFileError", "LockedError", "atomic_path", "atomic_write", "check_regular_file",
           "commit_file", "current_umask", "exclusive_lock", "held_by", "lock_holder", "read_bytes_bounded",
           "read_text_bounded",
           "write_bytes_atomic", "write_text_atomic"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, e.g. ``0o022``, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which for a moment changes the
    mask of every thread of the process; Linux (4.7+) shows it in
    ``/proc/self/status`` instead. Elsewhere it is set and restored under a lock
    (which guards only against other callers of this function).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it becomes ``path``, atomically.

    Whatever the caller writes to the yielded path is fsynced, given the mode
    ``0o666 & ~umask`` (``mkstemp`` creates ``0o600``) and renamed onto
    ``path``. On any exception the temporary file is deleted and ``path`` is
    left as it was. The destination's folder is created if missing.

    The result is a new file: it has the umask's permissions even where the
    file it replaces had others (``open(path, "w")`` would have kept those).
    """
    path = Path(path)
    fd, tmp = _mkstemp(path)
    os.close(fd)
    try:
        yield Path(tmp)
        commit_file(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO]:
    """Yield a file object open on a temporary file that replaces ``path`` when the block ends.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (text; ``encoding`` and ``newline``
    as for :func:`open`, so ``newline=""`` for the csv module). Same guarantees
    as :func:`atomic_path`: the new content appears whole and with the
    permissions a plain ``open()`` would give a new file, or not at all.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    if mode == "wb" and (encoding is not None or newline is not None):
        raise ValueError("atomic_write: encoding and newline are for text mode ('w')")
    path = Path(path)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            _chmod(tmp)  # before the fsync, so that the mode is on disk with the data
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def commit_file(src: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the finished file ``src`` onto ``path`` (same folder) the way the writers above do.

    ``src`` gets the mode ``0o666 & ~umask`` and is fsynced, renamed over ``path``
    and the folder fsynced. For files that must be built under a name of their
    own rather than a temporary one, such as a resumable download's ``.part``.
    """
    _chmod(src)
    _fsync_file(src)
    _publish(src, Path(path))
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """``Path(path).write_bytes(data)``, atomically; returns ``path`` as a Path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str | None = None,
                      newline: str | None = None) -> Path:
    """``Path(path).write_text(text, encoding)``, atomically; returns ``path`` as a Path."""
    with atomic_write(path, "w", encoding=encoding, newline=newline) as f:
        f.write(text)
    return Path(path)


class FileReadError(AudioclipError, ValueError):
    """A file the package was asked to read is not a regular file, is too large, or cannot be read.

    The message is one line that names the file and the problem
    (``labels.txt: not a regular file (a FIFO)``, ``config.json: 2.1 GB, more than
    the 1 MB allowed for a model config``).
    """


_KINDS = {0o010000: "a FIFO", 0o020000: "a character device", 0o060000: "a block device",
          0o140000: "a socket", 0o040000: "a folder"}


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _open_regular(name: str, max_bytes: int, what: str) -> tuple[int, os.stat_result]:
    """An ``O_NONBLOCK`` descriptor on the regular file ``name`` of at most ``max_bytes``, and its fstat."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileReadError(f"{name}: cannot open the {what}: {exc.strerror or exc}") from None
    try:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise FileReadError(f"{name}: cannot read the {what}: {exc.strerror or exc}") from None
        kind = st.st_mode & 0o170000
        if kind != 0o100000:
            raise FileReadError(f"{name}: the {what} is not a regular file ({_KINDS.get(kind, 'a special file')})")
        if st.st_size > max_bytes:
            raise FileReadError(f"{name}: the {what} is {_size_text(st.st_size)}, more than the "
                                f"{_size_text(max_bytes)} allowed")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def check_regular_file(path: str | os.PathLike, max_bytes: int, *, what: str = "file") -> os.stat_result:
    """The stat of ``path`` if it is a regular file of at most ``max_bytes``, else :class:`FileReadError`.

    For files a library must open itself (a FAISS index it memory-maps): the
    same checks as :func:`read_bytes_bounded` (``O_NONBLOCK`` open, ``fstat``
    of that descriptor), nothing read. Whatever opens the path next still
    trusts that it was not replaced in between.
    """
    fd, st = _open_regular(os.fspath(path), max_bytes, what)
    os.close(fd)
    return st


def read_bytes_bounded(path: str | os.PathLike, max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them, or :class:`FileReadError`.

    The one way the package reads a file a user or a folder on disk hands it
    (list files, model configs, index sidecars, export metadata): the file is
    opened with ``O_NONBLOCK`` (a FIFO cannot block the open), checked with
    ``fstat`` on that descriptor (a regular file, not a FIFO, device or folder:
    ``/dev/zero`` is refused, not read for ever) and read up to its size, which
    must not exceed ``max_bytes``. ``what`` names the file's role in the message
    (``"labels file"``). Symbolic links are followed: the user named the file.
    """
    name = os.fspath(path)
    fd, _ = _open_regular(name, max_bytes, what)
    try:
        chunks, total = [], 0
        while True:
            # Read one byte past the bound: a file that grew after the fstat is caught too.
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileReadError(f"{name}: the {what} is more than the {_size_text(max_bytes)} allowed")
        return b"".join(chunks)
    except OSError as exc:
        raise FileReadError(f"{name}: cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_text_bounded(path: str | os.PathLike, max_bytes: int, *, what: str = "file",
                      encoding: str = "utf-8") -> str:
    """:func:`read_bytes_bounded`, decoded (``utf-8`` by default; a BOM is dropped); undecodable is a FileReadError."""
    data = read_bytes_bounded(path, max_bytes, what=what)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise FileReadError(f"{os.fspath(path)}: the {what} is not {encoding} text "
                            f"(byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    return text[1:] if text.startswith("\ufeff") else text


class LockedError(AudioclipError, RuntimeError):
    """Another job holds the lock: it is writing the same output now.

    ``holder`` describes that job as its lock file names it (``process 1234
    (audioclip embed ...), since 2026-12-02 16:40:01``), or is None when the
    lock file says nothing yet.
    """

    def __init__(self, message: str, holder: str | None = None):
        super().__init__(message)
        self.holder = holder


def _holder_line() -> str:
    """Who holds a lock, as written into the lock file: pid, command line, start time (one line)."""
    import sys
    import time

    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
    return f"process {os.getpid()} ({command or 'python'}), since {time.strftime('%Y-%m-%d %H:%M:%S')}"


class LockFileError(AudioclipError, OSError):
    """What sits at a lock file's name is not a lock file: a symbolic link, a folder, a FIFO, a device.

    Nothing is followed, opened for writing or created through it; the message
    is one line naming the path (``.out.parquet.lock: the lock file is a
    symbolic link, not a regular file; nothing was written through it``).
    """


#: how lock files are opened: never through a symbolic link (O_NOFOLLOW), never blocking on a FIFO
_LOCK_FLAGS = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))


def _unsafe_lock(path: str | os.PathLike, kind: str) -> LockFileError:
    return LockFileError(f"{os.fspath(path)}: the lock file is {kind}, not a regular file; nothing was written "
                         "through it (remove it if no job is running)")


def _lstat_kind(path: str | os.PathLike) -> str:
    """What ``path`` itself is, for a message: "a symbolic link", "a FIFO", ... (an lstat, nothing followed)."""
    try:
        mode = os.lstat(path).st_mode & 0o170000
    except OSError:
        return "not a regular file"
    return "a symbolic link" if mode == 0o120000 else _KINDS.get(mode, "a special file")


def _open_lock(path: str | os.PathLike, *, create: bool) -> int | None:
    """A descriptor on the regular file ``path``, never through a symbolic link (None: absent and not ``create``).

    A new lock file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a link or
    anything else already at the name makes the create fail rather than write
    through it); an existing one is opened with ``O_NOFOLLOW``. Whatever was
    opened is checked with ``fstat`` to be a regular file. Anything else at
    the name is a :class:`LockFileError`.
    """
    fd = None
    if create:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _LOCK_FLAGS, 0o666 & ~current_umask())
        except FileExistsError:
            pass  # a stale lock file (or a link, or a FIFO...: the open below tells)
    if fd is None:
        try:
            fd = os.open(path, (os.O_RDWR if create else os.O_RDONLY) | _LOCK_FLAGS)
        except FileNotFoundError:
            if create:  # removed between the two opens by the job that held it: try again
                return _open_lock(path, create=True)
            return None
        except OSError as exc:
            import errno

            # O_NOFOLLOW on a link: ELOOP (Linux), EMLINK (FreeBSD), EFTYPE (NetBSD)
            if exc.errno in (errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", -1)) or os.path.islink(path):
                raise _unsafe_lock(path, "a symbolic link") from None
            if exc.errno in (errno.EISDIR, errno.ENXIO):
                raise _unsafe_lock(path, _lstat_kind(path)) from None
            raise
    kind = os.fstat(fd).st_mode & 0o170000
    if kind != 0o100000:
        os.close(fd)
        raise _unsafe_lock(path, _KINDS.get(kind, "a special file"))
    return fd


def held_by(path: str | os.PathLike) -> str | None:
    """If another process holds the lock ``path`` now: its holder line (or "another process"); else None.

    A look without taking the lock, for failing fast before slow work (a model
    load): the lock itself must still be taken with :func:`exclusive_lock`.
    Something other than a lock file at ``path`` (a symbolic link, a FIFO) is
    a :class:`LockFileError` now, as the lock would be.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fd = _open_lock(path, create=False)
    if fd is None:
        return None  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_of(fd) or "another process"
    finally:
        os.close(fd)  # also releases our shared lock
    return None


def lock_holder(path: str | os.PathLike) -> str | None:
    """The holder line of the lock file ``path`` (see :func:`exclusive_lock`), None if unknown (or not a lock file)."""
    try:
        fd = _open_lock(path, create=False)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        return _holder_of(fd)
    finally:
        os.close(fd)


def _holder_of(fd: int) -> str | None:
    try:
        text = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text.splitlines()[0] if text else None


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``path`` (created if missing), or raise :class:`LockedError` at once.

    For jobs that write one output in several steps (parts, then a merge): a
    second job on the same output fails instead of interleaving with the
    first. The lock is the operating system's (``flock``), so it goes away
    with a killed process and a stale lock file never blocks a re-run; the
    file is removed when the lock is released. Where ``flock`` does not exist
    (Windows) nothing is locked.

    The lock file is never reached through a symbolic link: it is created with
    ``O_EXCL | O_NOFOLLOW`` or opened with ``O_NOFOLLOW`` and must be a regular
    file; a link (dangling or not), a FIFO or a folder planted at ``path`` is a
    :class:`LockFileError` and is left as it is, and so is what it points at.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = _open_lock(path, create=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
            os.close(fd)
            raise LockedError(f"{path}: locked by {holder or 'another process'}", holder) from None
        # The holder before us may have removed the file between our open and our
        # lock: then we hold a lock on a name that no longer exists. Try again.
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)  # a stale file's longer holder line must not trail ours
        os.write(fd, f"{_holder_line()}\n".encode("utf-8", "backslashreplace"))  # argv may hold odd bytes
        yield path
    finally:
        try:
            if os.path.samestat(os.fstat(fd), os.lstat(path)):  # ours still: never another job's new file
                os.unlink(path)
        except OSError:
            pass
        os.close(fd)  # releases the lock


# -- the steps ---------------------------------------------------------------------


def _mkstemp(path: Path) -> tuple[int, str]:
    # Same folder as the destination: os.replace is atomic only within one file
    # system. A hidden name keeps globs of the real outputs (part-*.parquet,
    # train-*.tar) from picking up a file still being written.
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _chmod(tmp: str | os.PathLike) -> None:
    # mkstemp makes 0o600 files; an output should be as readable as one made by open()
    os.chmod(tmp, 0o666 & ~current_umask())


def _fsync_file(tmp: str | os.PathLike) -> None:
    # A library has written and closed the file; reopen it to push its data to disk
    # (Windows only syncs a handle open for writing).
    fd = os.open(tmp, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str | os.PathLike, path: Path) -> None:
    os.replace(tmp, path)
    # The rename itself lives in the folder: sync it so that a crash cannot undo
    # it. Not every system can open a folder (Windows cannot); the rename is
    # still atomic there, only its durability is up to the OS.
    try:
        fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass  # already renamed into place, or never fully created
