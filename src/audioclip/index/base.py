"""What every store of an index provides: the :class:`VectorStore` interface, its error, its metadata checks.

The search code talks to a :class:`VectorStore` only, so another vector
database can replace LanceDB without touching indexing or search (see
``docs/search.md``, "Other stores", for Milvus and Qdrant).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from ..errors import AudioclipError
from ..io import LockedError, exclusive_lock
from .records import FailureRecord, FileRecord

__all__ = ["IndexLockedError", "IndexStoreError", "VectorStore", "checked_meta", "writer_lock"]


class IndexStoreError(AudioclipError, ValueError):
    """The index cannot be used as asked (missing, another checkpoint, locked, ...)."""


class IndexLockedError(LockedError, IndexStoreError):  # LockedError first: its __init__ keeps ``holder``
    """Another job is writing the index (``holder`` names it): the command line exits 2."""


@runtime_checkable
class VectorStore(Protocol):
    """What :class:`audioclip.index.Index` needs from a vector database.

    Writes are by whole files: ``add`` must commit all its rows or none, and
    ``delete_files`` all of a file's rows or none; nothing else is needed for
    the incremental, crash-safe indexing. Filters are structured (sources,
    file ids), never backend query text. Rows go in and come out in
    ``records.row_schema``'s columns; ``search`` gives ``file_id``, ``kind``,
    ``start_s`` and ``score`` (cosine), best first.
    """

    def read_meta(self) -> dict | None: ...
    def write_meta(self, meta: dict) -> None: ...
    def files(self) -> dict[str, FileRecord]: ...
    def get_file(self, file_id: int) -> FileRecord | None: ...
    def add(self, rows: pa.Table) -> None: ...
    def delete_files(self, file_ids: Sequence[int]) -> None: ...
    def update_files(self, records: Sequence[FileRecord]) -> None: ...
    def rows(self, file_ids: Sequence[int]) -> pa.Table: ...
    def search(self, vector: np.ndarray, limit: int, sources: Sequence[str] | None = None,
               exact: bool = False) -> pa.Table: ...
    def count_rows(self) -> int: ...
    def failures(self) -> dict[str, FailureRecord]: ...
    def set_failures(self, add: Sequence[FailureRecord], remove: Sequence[int]) -> None: ...
    def optimize(self) -> None: ...


MAX_META_BYTES = 1 << 20  # audioclip-index.json: a few hundred bytes when written by an index run
MAX_DIM = 8192  # the widest vectors an index may hold (AudioCLIP's are 1024-d)
# --window and --hop as the command line bounds them (cli/options.py: MIN_SECONDS, MAX_SECONDS): a shorter
# window read from a tampered file would make a query file millions of windows.
MIN_SECONDS, MAX_SECONDS = 0.01, 86_400.0
MAX_IMAGE_SIZE = 4096


def checked_meta(meta, where) -> dict:
    """``meta`` if it has what every reader of an index relies on, in range, else :class:`IndexStoreError`
    naming ``where``: ``checkpoint`` a string, ``dim`` 1 to ``MAX_DIM``, ``window``/``hop`` ``MIN_SECONDS`` to
    ``MAX_SECONDS``, ``image_size`` 1 to ``MAX_IMAGE_SIZE``, the other options of the types an index run writes."""
    def bad(problem: str) -> IndexStoreError:
        return IndexStoreError(f"{where}: unreadable index metadata ({problem})")

    if not isinstance(meta, dict):
        raise bad(f"a JSON object expected, found {type(meta).__name__}")
    if not isinstance(meta.get("checkpoint"), str) or type(meta.get("dim")) is not int:
        missing = "checkpoint" if not isinstance(meta.get("checkpoint"), str) else "dim"
        raise bad(f"no valid {missing!r}")
    if not 1 <= meta["dim"] <= MAX_DIM:
        raise bad(f"'dim' is {meta['dim']}, not 1 to {MAX_DIM}")
    for key in ("window", "hop"):
        value = meta.get(key)
        if value is not None and (type(value) not in (int, float) or not MIN_SECONDS <= value <= MAX_SECONDS):
            raise bad(f"{key!r} is {value!r}, not {MIN_SECONDS:g} to {MAX_SECONDS:g} seconds")
    size = meta.get("image_size")
    if size is not None and (type(size) is not int or not 1 <= size <= MAX_IMAGE_SIZE):
        raise bad(f"'image_size' is {size!r}, not 1 to {MAX_IMAGE_SIZE} pixels")
    if meta.get("mono") is not None and not isinstance(meta["mono"], bool):
        raise bad(f"'mono' is {meta['mono']!r}, not true or false")
    if meta.get("video_frames") is not None and meta["video_frames"] not in ("central", "all"):
        raise bad(f"'video_frames' is {meta['video_frames']!r}, not 'central' or 'all'")
    for key in ("checkpoint_source", "config", "paths", "created"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"{key!r} is a {type(meta[key]).__name__}, not a string")
    return meta


@contextlib.contextmanager
def writer_lock(store: VectorStore, db: str) -> Iterator[None]:
    """One writer of ``store`` at a time: an advisory lock on its ``lock_file`` (released if the holder is
    killed); a store without one (a shared server) has its own concurrency rules (docs/search.md, "Other
    stores"). :class:`IndexLockedError` naming ``db`` and the holder if another job holds it."""
    lock_file = getattr(store, "lock_file", None)
    if lock_file is None and getattr(store, "path", None) is not None:
        lock_file = Path(store.path) / ".writer.lock"
    if lock_file is None:
        yield
        return
    try:
        lock = exclusive_lock(lock_file)
        lock.__enter__()
    except LockedError as err:
        raise IndexLockedError(f"{db}: another indexing job is writing to this index now "
                               f"({err.holder or 'its lock is held'}); wait for it to finish "
                               "(searching meanwhile is fine)", err.holder) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)  # releases the lock (a killed job's goes with its process)
