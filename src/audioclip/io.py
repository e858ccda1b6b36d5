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

The module also holds the bounded reader (:func:`read_bytes_bounded`) and the
output locks (:func:`exclusive_lock`, on filelock). It imports the standard
library only (filelock when a lock is taken): everything else in the package
may import it.
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


def _unsafe_lock(path: str | os.PathLike, kind: str) -> LockFileError:
    return LockFileError(f"{os.fspath(path)}: the lock file is {kind}, not a regular file; nothing was written "
                         "through it (remove it if no job is running)")


def _unsafe_open(path: str | os.PathLike, exc: OSError) -> LockFileError | None:
    """The :class:`LockFileError` a failed open or lock of ``path`` (with ``exc``) means, if something else is there.

    An ``O_NOFOLLOW`` open of a link fails with ELOOP (Linux), EMLINK (FreeBSD)
    or EFTYPE (NetBSD); a folder, socket or FIFO with other errors: whatever
    the errno, what sits at the name (an lstat, nothing followed) tells.
    """
    import errno

    if exc.errno in (errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", -1)) or os.path.islink(path):
        return _unsafe_lock(path, "a symbolic link")
    try:
        kind = os.lstat(path).st_mode & 0o170000
    except OSError:
        return None
    return None if kind == 0o100000 else _unsafe_lock(path, _KINDS.get(kind, "a special file"))


def _check_lock_fd(path: str | os.PathLike, fd: int) -> os.stat_result:
    """The fstat of ``fd`` if it is a regular file; else a :class:`LockFileError` (a FIFO opens without blocking)."""
    st = os.fstat(fd)
    kind = st.st_mode & 0o170000
    if kind != 0o100000:
        raise _unsafe_lock(path, _KINDS.get(kind, "a special file"))
    return st


# A look at a lock (held_by, lock_holder) must not create the file, which a FileLock would: these open an
# existing one themselves, the way filelock does (no link followed), and probe it with filelock's lock_descriptor.
#: how lock files are opened here: never through a symbolic link (O_NOFOLLOW), never blocking on a FIFO
_LOCK_FLAGS = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))


def _open_existing_lock(path: str | os.PathLike) -> int | None:
    """A read-only descriptor on the existing lock file ``path``, never through a link (None: there is none).

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` to be a
    regular file; anything else at the name is a :class:`LockFileError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _LOCK_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unsafe_open(path, exc) or exc from None
    try:
        _check_lock_fd(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def held_by(path: str | os.PathLike) -> str | None:
    """If another process holds the lock ``path`` now: its holder line (or "another process"); else None.

    A look without taking the lock, for failing fast before slow work (a model
    load): the lock itself must still be taken with :func:`exclusive_lock`.
    Something other than a lock file at ``path`` (a symbolic link, a FIFO) is
    a :class:`LockFileError` now, as the lock would be.
    """
    from filelock import lock_descriptor, unlock_descriptor

    fd = _open_existing_lock(path)
    if fd is None:
        return None  # no lock file: nobody holds it
    try:
        # filelock's own primitive on our descriptor (flock; LockFileEx on Windows), held for an instant. It is
        # exclusive: a job taking the lock in that instant fails as if the lock were held (it was), as before.
        if not lock_descriptor(fd, blocking=False):
            return _holder_of(fd) or "another process"
        unlock_descriptor(fd)
    finally:
        os.close(fd)
    return None


def lock_holder(path: str | os.PathLike) -> str | None:
    """The holder line of the lock file ``path`` (see :func:`exclusive_lock`), None if unknown (or not a lock file)."""
    try:
        fd = _open_existing_lock(path)
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
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1024).decode("utf-8", "replace").strip()
    except OSError:  # Windows: the holder's byte-range lock forbids reading the locked byte
        return None
    return text.splitlines()[0] if text else None


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``path`` (created if missing), or raise :class:`LockedError` at once.

    For jobs that write one output in several steps (parts, then a merge): a
    second job on the same output fails instead of interleaving with the
    first. The lock is filelock's ``FileLock``, the operating system's lock
    (``flock``; ``LockFileEx`` on Windows), so it goes away with a killed
    process and a stale lock file never blocks a re-run. While it is held the
    file holds one line naming the holder (``process PID (command), since
    TIME``: :func:`lock_holder`, :attr:`LockedError.holder`); it is removed
    when the lock is released.

    The lock file is never reached through a symbolic link: filelock creates it
    with ``O_CREAT | O_EXCL | O_NOFOLLOW`` or opens it with ``O_NOFOLLOW``, and
    it must be a regular file before anything is written to it; a link
    (dangling or not), a FIFO or a folder planted at ``path`` is a
    :class:`LockFileError` and is left as it is, and so is what it points at.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held: list[os.stat_result] = []

    def claim(fd: int) -> None:
        # Run by filelock with the locked descriptor, before acquire() returns (a raise undoes the
        # acquisition). A FIFO or device opens and locks like a file: refuse it before writing anything.
        st = _check_lock_fd(path, fd)
        os.ftruncate(fd, 0)  # a stale file's longer holder line must not trail ours
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{_holder_line()}\n".encode("utf-8", "backslashreplace"))  # argv may hold odd bytes
        held.append(st)

    lock = FileLock(path, timeout=0, on_acquired=claim)
    for attempt in range(3):
        try:
            lock.acquire()
            break
        except Timeout:
            # The holder may have released and removed the file between filelock's open and its flock: the
            # name is gone then, and a new file is the lock. Anything else is a holder.
            if attempt < 2 and not os.path.lexists(path):
                continue
            holder = lock_holder(path)
            raise LockedError(f"{path}: locked by {holder or 'another process'}", holder) from None
        except LockFileError:
            raise
        except OSError as exc:
            raise _unsafe_open(path, exc) or exc from None
    try:
        yield path
    finally:
        try:
            # Removed while still held (a job that opened it meanwhile sees the name gone and starts over, as
            # filelock does); never another job's new file at the name.
            if os.path.samestat(held[-1], os.lstat(path)):
                os.unlink(path)
        except OSError:
            pass
        lock.release()


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
    fsync_folder(path.parent)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Sync ``folder`` so that a rename in it survives a crash (where a folder can be opened: not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
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
