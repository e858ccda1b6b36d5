"""Where the vectors live: a small storage interface and its LanceDB implementation.

The search code talks to a :class:`VectorStore` only, so another vector
database can replace LanceDB without touching indexing or search (see
``docs/search.md``, "Other stores", for Milvus and Qdrant).

One row per embedding: an audio window, an image or a video frame (a
recording's pooled vector is the renormalised mean of its windows, so it is
not stored: search ranks a recording by its best window), with the identity of the file it came from repeated on every row
(``ROW_FIELDS``). Keeping a file's identity on its own rows is what makes a
write of a file all-or-nothing: a file is indexed exactly when its rows are
there, and rows arrive in one atomic commit per batch of files.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..io import FileReadError, atomic_write, held_by, read_text_bounded
from .ann import AnnIndex
from ..errors import AudioclipError

__all__ = [
    "FailureRecord",
    "FileRecord",
    "IndexStoreError",
    "LanceStore",
    "ROW_FIELDS",
    "VectorStore",
    "file_id_of",
    "row_schema",
    "stat_identity",
]

# Name, Arrow type of each row's columns; "vector" (fixed-size float32 list) comes last.
ROW_FIELDS: list[tuple[str, pa.DataType]] = [
    ("file_id", pa.int64()),  # file_id_of(path): the id the web page uses
    ("path", pa.string()),  # absolute path of the file
    ("source", pa.string()),  # the file: "audio", "image" or "video"
    ("modality", pa.string()),  # the embedding: "audio" or "image"
    ("kind", pa.string()),  # "window", "image" or "frame"
    ("start", pa.float64()),  # seconds; null for images and frames
    ("end", pa.float64()),
    ("duration", pa.float64()),  # seconds of sound in the file; null without sound
    ("size", pa.int64()),  # bytes, when indexed
    ("mtime_ns", pa.int64()),  # modification time, when indexed
    ("hash", pa.string()),  # blake2b-128 of the content, hex
    ("dev", pa.int64()),  # st_dev of the file, when indexed; null in indexes made before it was recorded
    ("inode", pa.int64()),  # st_ino, likewise: (dev, inode) tells a replaced file from one merely touched
]
FILE_FIELDS = ("file_id", "path", "source", "duration", "size", "mtime_ns", "hash", "dev", "inode")
# Columns added after the first release: an older table lacks them, reads them as null, gains them
# (all null) at its next write.
LATER_FIELDS: list[tuple[str, pa.DataType]] = [("dev", pa.int64()), ("inode", pa.int64())]


class IndexStoreError(AudioclipError, ValueError):
    """The index cannot be used as asked (missing, another checkpoint, locked, ...)."""


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


def lance_message(err: BaseException) -> str:
    """The first meaningful line of an error, without the Rust source locations LanceDB appends.

    ``lance error: LanceError(IO): Generic LocalFileSystem error: failed to fill whole buffer,
    /rustc/.../function.rs:250:5`` becomes ``LanceError(IO): Generic LocalFileSystem error: failed to fill
    whole buffer``.
    """
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "") or type(err).__name__
    text = re.sub(r",?\s*\(?(/|[A-Za-z]:\\)?[\w./\\-]*\.rs:\d+(:\d+)?\)?", "", text)
    text = re.sub(r"^(lance error|lancedb error):\s*", "", text, flags=re.IGNORECASE)
    return text.strip().rstrip(",") or type(err).__name__


def _lance_errors(method):
    """Errors LanceDB raises from its Rust code (``lance error: ...``), as one :class:`IndexStoreError` line."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            if isinstance(err, IndexStoreError) or not re.search(r"lance|\.rs:\d+", str(err), re.IGNORECASE):
                raise
            raise IndexStoreError(f"{self.path}: the index's tables cannot be used ({lance_message(err)})") \
                from None
    return wrapper


def row_schema(dim: int) -> pa.Schema:
    return pa.schema([*ROW_FIELDS, ("vector", pa.list_(pa.float32(), dim))])


def as_int64(value: int | None) -> int | None:
    """An unsigned 64-bit number (``st_dev``, ``st_ino``) as the signed int64 the stores hold (same bits)."""
    if value is None:
        return None
    value = int(value) & 0xFFFF_FFFF_FFFF_FFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def stat_identity(st: os.stat_result) -> tuple[int, int]:
    """``(dev, inode)`` of a stat result as :class:`FileRecord` stores them (signed 64-bit).

    Inode numbers may use all 64 bits (overlayfs sets the high ones), so they
    are stored with the same bits as a signed number; compare what this
    returns with a record's ``(dev, inode)``.
    """
    return as_int64(st.st_dev), as_int64(st.st_ino)


def file_id_of(path: str) -> int:
    """A stable signed 64-bit id for an (absolute) path."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class FileRecord:
    """An indexed file, as it was when its vectors were computed.

    ``path`` is the file's identity: its resolved absolute path (links
    followed). ``size`` (bytes), ``mtime_ns`` and ``hash`` (BLAKE2b-128 of the
    content, hex) tell whether the file changed since; ``dev`` and ``inode``
    (``os.stat``'s ``st_dev``, ``st_ino``) whether it is still the same file
    on disk rather than a replacement. They are None in indexes written before
    they were recorded (filled in by the next ``index`` run).
    """

    file_id: int
    path: str
    source: str
    size: int
    mtime_ns: int
    hash: str
    duration: float | None = None
    dev: int | None = None
    inode: int | None = None


@dataclass(frozen=True)
class FailureRecord:
    """A file that could not be embedded, as it was when it failed."""

    file_id: int
    path: str
    size: int
    mtime_ns: int
    error: str


@runtime_checkable
class VectorStore(Protocol):
    """What :class:`audioclip.index.Index` needs from a vector database.

    Writes are by whole files: ``add`` must commit all its rows or none, and
    ``delete_files`` all of a file's rows or none; nothing else is needed for
    the incremental, crash-safe indexing. Filters are structured (sources,
    file ids), never backend query text.
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


# -- LanceDB -------------------------------------------------------------------------


class LanceStore:
    """A :class:`VectorStore` in a LanceDB folder (no server; Arrow/Lance files on disk).

    Every ``add``, ``delete`` and ``update`` is one Lance commit: a new
    manifest is written only after all data files are, so a crash leaves
    either the previous version or the new one, never a part (stray data
    files of an uncommitted write are invisible and removed by ``optimize``).
    Readers see the latest committed version at each query.

    The folder holds the tables ``media`` (vectors) and ``failures``, and
    ``audioclip-index.json`` (checkpoint and decoding options).
    """

    TABLE = "media"
    FAILURES = "failures"
    META = "audioclip-index.json"
    ANN_FOLDER = "ann"
    ANN_MIN_ROWS = 2_048  # the FAISS index beside the table (ann.py) from this many rows; below, Lance scans
    NPROBE = 16  # IVF lists a query scans (of ~4 sqrt(rows); docs/performance.md, "Search at scale")
    REBUILD_FRACTION = 0.1  # rows of files written since the ANN build, scanned exactly until this share...
    REBUILD_MAX_ROWS = 65_536  # ...or this many rows (256 MB of vectors, held by each searching process)
    SCALAR_MIN_ROWS = 20_000
    REFINE_FACTOR: int | None = None  # for LanceDB's own compressing index (ivf_pq), when one exists

    def __init__(self, path: str | os.PathLike, create: bool = False):
        os.environ.setdefault("LANCE_LOG", "error")  # lance's Rust logger warns on stderr otherwise
        import lancedb

        self.path = Path(path)
        self._lancedb = lancedb
        if not self.exists(self.path):
            found = self._without_meta() if self.path.is_dir() else "other" if self.path.exists() else "absent"
            if found is None or isinstance(found, int):  # committed rows: an index whose metadata is lost
                raise self._lost_meta(found)
            if not create:
                if found == "leftovers":
                    holder = held_by(self.lock_file)
                    if holder:
                        raise IndexStoreError(f"{self.path}: no index here yet (its first 'audioclip index' run, "
                                              f"{holder}, has not written it yet; try again later)")
                    raise IndexStoreError(f"{self.path}: no index here yet (its first 'audioclip index' run was "
                                          "interrupted before it wrote anything; run it again)")
                raise IndexStoreError(f"{self.path}: no index here (build one with 'audioclip index FOLDER "
                                      f"--db {self.path}')")
            if found == "other":
                raise IndexStoreError(f"{self.path}: exists and is not an audioclip index; choose a new path")
        self._connection = None  # connecting creates the folder: only when something is written or there
        self._tables: dict[str, object] = {}
        self.ann = AnnIndex(self.path / self.ANN_FOLDER)

    @property
    def _db(self):
        if self._connection is None:
            self._connection = self._lancedb.connect(str(self.path), read_consistency_interval=datetime.timedelta(0))
        return self._connection

    @classmethod
    def exists(cls, path: str | os.PathLike) -> bool:
        # Whatever is there (a FIFO, a folder) is the metadata: read_meta then says what is wrong with it.
        return os.path.lexists(Path(path) / cls.META)

    # What a first run leaves before its metadata is written: the lock file (a killed writer's: the lock
    # goes with its process, the file stays), a temporary file of the metadata, table folders of an
    # interrupted creation, the ANN and picture caches.
    _LEFTOVERS = {".writer.lock", f"{TABLE}.lance", f"{FAILURES}.lance", ANN_FOLDER, ".cache"}

    def _without_meta(self) -> str | int | None:
        """What the folder, which has no metadata, holds: "empty"; "leftovers" (only what an interrupted
        first run leaves, its tables without a committed row); the number of committed rows of its
        tables (None: tables that cannot be read), which belong to an index whose metadata was lost;
        "other" (files of something else).

        The metadata is written before any row, so a first run never leaves a committed row; rows
        without metadata are someone's index, to be refused, never cleared.
        """
        entries = list(self.path.iterdir())
        if not entries:
            return "empty"
        if not all(entry.name in self._LEFTOVERS
                   or (entry.name.startswith(f".{self.META}.") and entry.name.endswith(".tmp"))
                   for entry in entries):
            return "other"
        rows = 0
        for name in (self.TABLE, self.FAILURES):
            count = self._committed_rows(name)
            if count is None:
                return None
            rows += count
        return rows or "leftovers"

    def _committed_rows(self, name: str) -> int | None:
        """Rows of the latest committed version of table ``name`` (0 without one; None if unreadable)."""
        versions = self.path / f"{name}.lance" / "_versions"
        if not versions.is_dir() or not any(v.name.endswith(".manifest") for v in versions.iterdir()):
            return 0  # no committed version: data files of a creation killed before its commit, if anything
        try:
            return int(self._lancedb.connect(str(self.path)).open_table(name).count_rows())
        except Exception:  # noqa: BLE001 - whatever the reason, a table that cannot be read is kept
            return None

    def _lost_meta(self, rows: int | None) -> IndexStoreError:
        held = f"{rows} committed row(s)" if rows is not None else "tables that cannot be read"
        return IndexStoreError(f"{self.path}: holds an index's tables ({held}) but no {self.META}; restore that "
                               "file (from a backup) to use them, or choose a new --db; nothing was changed")

    def _clear_leftovers(self) -> None:
        """Before the metadata of a new index is written (the writer lock held): drop what an interrupted
        first run left, tables without a committed row included. Tables holding rows are refused
        (:class:`IndexStoreError`), not cleared: an index whose metadata was lost."""
        import shutil

        found = self._without_meta()
        if found is None or isinstance(found, int):
            raise self._lost_meta(found)
        if found == "other":
            raise IndexStoreError(f"{self.path}: exists and is not an audioclip index; choose a new path")
        for name in (f"{self.TABLE}.lance", f"{self.FAILURES}.lance", self.ANN_FOLDER):
            if (self.path / name).exists():
                shutil.rmtree(self.path / name)
        for stray in self.path.glob(f".{self.META}.*.tmp"):
            stray.unlink(missing_ok=True)
        self._tables.clear()
        self._connection = None

    @property
    def lock_file(self) -> Path:
        """The advisory lock of one writer at a time (``Index.add``)."""
        return self.path / ".writer.lock"

    @property
    def cache_dir(self) -> Path:
        """Where the web page caches its pictures (waveforms, thumbnails)."""
        return self.path / ".cache"

    # -- metadata ------------------------------------------------------------------

    def read_meta(self) -> dict | None:
        path = self.path / self.META
        try:
            meta = json.loads(read_text_bounded(path, MAX_META_BYTES, what="index metadata"))
        except FileReadError as err:
            if not os.path.lexists(path):
                return None
            raise IndexStoreError(f"{path}: unreadable index metadata ({str(err).removeprefix(f'{path}: ')})") \
                from None
        except ValueError as err:
            raise IndexStoreError(f"{path}: unreadable index metadata ({err})") from None
        return checked_meta(meta, self.path / self.META)

    def write_meta(self, meta: dict) -> None:
        """Write the metadata atomically (a reader sees the old file or the new one, never a part).

        Writing it for the first time starts the index afresh: whatever an
        interrupted first run left in the folder is removed first. The
        caller holds the writer lock.
        """
        if self.path.is_dir() and not self.exists(self.path):
            self._clear_leftovers()
        with atomic_write(self.path / self.META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)

    # -- tables ----------------------------------------------------------------------

    def _table(self, name: str):
        table = self._tables.get(name)
        if table is None:
            if not self.path.is_dir():
                return None
            try:
                table = self._db.open_table(name)
            except (ValueError, FileNotFoundError):
                return None
            self._tables[name] = table
        return table

    def _create_or_add(self, name: str, data: pa.Table) -> None:
        table = self._table(name)
        if table is None:
            self._tables[name] = self._db.create_table(name, data=data)
        else:
            table.add(data)

    def _scan(self, name: str, columns: Sequence[str], where: str | None = None) -> pa.Table | None:
        """``columns`` of the rows of table ``name`` (``where``: a filter); columns the table does not
        have yet (``LATER_FIELDS`` of an older index) come back as nulls."""
        table = self._table(name)
        if table is None:
            return None
        have = set(table.schema.names)
        query = table.search().select([c for c in columns if c in have]).limit(None)
        if where:
            query = query.where(where)
        data = query.to_arrow()
        return _with_later_fields(data) if any(n in columns for n, _ in LATER_FIELDS) else data

    def _upgrade(self) -> None:
        """Give an older ``media`` table the columns added since (all null), before writing to it.

        One commit that writes no data files (Lance records an all-null
        column in the schema only); readers of the older version go on
        reading it. Only writers (holding the lock) call this.
        """
        table = self._table(self.TABLE)
        if table is None:
            return
        missing = [pa.field(n, t) for n, t in LATER_FIELDS if n not in table.schema.names]
        if missing:
            table.add_columns(missing)

    # -- files ---------------------------------------------------------------------------

    @_lance_errors
    def files(self) -> dict[str, FileRecord]:
        data = self._scan(self.TABLE, FILE_FIELDS)
        return {} if data is None else _records(data)

    @_lance_errors
    def get_file(self, file_id: int) -> FileRecord | None:
        file_id = int(file_id)
        if not -2**63 <= file_id < 2**63:
            return None
        # The SQL parser reads -9223372036854775808 as minus a number too large for int64 (a float): say it another way.
        where = f"file_id = {file_id}" if file_id > -2**63 else f"file_id < {-2**63 + 1}"
        data = self._scan(self.TABLE, FILE_FIELDS, where)
        records = {} if data is None else _records(data)
        return next(iter(records.values()), None)

    @_lance_errors
    def add(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self._upgrade()
            self.ann.mark(set(rows["file_id"].to_pylist()))  # before the commit: see ann.py
            self._create_or_add(self.TABLE, _with_later_fields(rows))

    @_lance_errors
    def delete_files(self, file_ids: Sequence[int]) -> None:
        table = self._table(self.TABLE)
        ids = [int(i) for i in file_ids]
        if table is not None and ids:
            self.ann.mark(ids)
            table.delete(_in("file_id", ids))  # one commit, however many files

    @_lance_errors
    def update_files(self, records: Sequence[FileRecord]) -> None:
        """Set the identity (size, mtime, hash, dev, inode) of indexed files, all in one commit.

        A Lance merge on ``file_id``: every row of a file changes in the same
        commit, and 2,000 touched files cost one commit, not 2,000. It is not
        a column-only write: Lance marks the files' rows deleted and appends
        them again whole, vectors included (so they move to the end of the
        table; nothing relies on row order), and the old copies take disk
        until compaction and version clean-up (``optimize``). Measured with
        2,000 one-row files of 1024-d vectors (8.2 MB): 10 touched files write
        0.04 MB, 200 write 0.83 MB, all 2,000 write 8.25 MB, in 0.15 s.
        LanceDB 0.40 has no cheaper way: ``update`` rewrites whole rows too and
        takes one value set, so one commit per file (200 files: 5.6 s, 200
        commits); its SQL has no ``CASE`` to set many values in one.
        """
        table = self._table(self.TABLE)
        if table is None or not records:
            return
        self._upgrade()
        latest = list({int(r.file_id): r for r in records}.values())  # one row per file: the last given wins
        schema = pa.schema([(n, t) for n, t in ROW_FIELDS if n in ("file_id", "size", "mtime_ns", "hash", "dev",
                                                                    "inode")])
        source = pa.Table.from_pylist([{n: getattr(r, n) for n in schema.names} for r in latest], schema=schema)
        table.merge_insert("file_id").when_matched_update_all().execute(source)

    @_lance_errors
    def rows(self, file_ids: Sequence[int]) -> pa.Table:
        """Every row of these files, in ``row_schema``'s columns (an older table's missing ones null)."""
        table = self._table(self.TABLE)
        if table is None or not file_ids:
            return row_schema(1).empty_table() if table is None else _with_later_fields(table.schema.empty_table())
        parts = []
        ids = [int(i) for i in file_ids]
        for chunk in range(0, len(ids), 500):
            where = _in("file_id", ids[chunk : chunk + 500])
            parts.append(table.search().where(where).limit(None).to_arrow())
        return _with_later_fields(pa.concat_tables(parts))

    @_lance_errors
    def search(self, vector: np.ndarray, limit: int, sources: Sequence[str] | None = None,
               exact: bool = False) -> pa.Table:
        """The ``limit`` best rows: ``file_id``, ``kind``, ``start``, ``score`` (cosine), best first."""
        table = self._table(self.TABLE)
        if table is None:
            return pa.table({"file_id": pa.array([], pa.int64()), "score": pa.array([], pa.float32())})
        state = self.ann.state()
        if state is not None:  # the FAISS index beside the table, plus an exact scan of rows written since
            max_dirty = max(self.REBUILD_MAX_ROWS, int(2 * self.REBUILD_FRACTION * state.get("vectors", 0)))
            found = self.ann.search(vector, limit, sources, exact, self.NPROBE, lambda: table.version, self.rows,
                                    max_dirty)
            if found is not None:
                return found
        query = table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector").distance_type("dot")
        if sources:
            query = query.where(_in("source", sources), prefilter=True)
        if exact:
            query = query.bypass_vector_index()
        elif self.REFINE_FACTOR:  # with an ANN index: re-score more candidates exactly (none without)
            query = query.refine_factor(self.REFINE_FACTOR)
        found = query.select(["file_id", "kind", "start", "_distance"]).limit(limit).to_arrow()
        # Lance's "dot" distance is 1 - x.y; vectors are unit length, so x.y is the cosine.
        score = pc.subtract(pa.scalar(1.0, pa.float32()), found["_distance"])
        return found.drop_columns(["_distance"]).append_column("score", score)

    @_lance_errors
    def count_rows(self) -> int:
        table = self._table(self.TABLE)
        return 0 if table is None else table.count_rows()

    # -- failures --------------------------------------------------------------------------

    @_lance_errors
    def failures(self) -> dict[str, FailureRecord]:
        data = self._scan(self.FAILURES, [f for f in FailureRecord.__dataclass_fields__])
        if data is None:
            return {}
        return {row["path"]: FailureRecord(**row) for row in data.to_pylist()}

    @_lance_errors
    def set_failures(self, add: Sequence[FailureRecord], remove: Sequence[int]) -> None:
        drop = {int(i) for i in remove} | {f.file_id for f in add}
        table = self._table(self.FAILURES)
        if table is not None and drop:
            table.delete(_in("file_id", sorted(drop)))
        if add:
            schema = pa.schema([("file_id", pa.int64()), ("path", pa.string()), ("size", pa.int64()),
                                ("mtime_ns", pa.int64()), ("error", pa.string())])
            self._create_or_add(self.FAILURES, pa.Table.from_pylist([asdict(f) for f in add], schema=schema))

    # -- maintenance -----------------------------------------------------------------------

    @_lance_errors
    def optimize(self, ann: str = "auto", keep_versions: datetime.timedelta = datetime.timedelta(minutes=5),
                 log=None) -> None:
        """Compact small commits, drop old versions, keep the ANN index fresh.

        ``ann``: "auto" builds the FAISS index beside the table (``ann.py``)
        once the table has ``ANN_MIN_ROWS`` rows and rebuilds it when the rows
        of files written since its build exceed ``REBUILD_FRACTION`` of the
        table or ``REBUILD_MAX_ROWS`` (until then they are scanned exactly
        beside it); "rebuild" rebuilds it now; "off" leaves it as it is.
        Versions older than ``keep_versions`` are removed (a search still
        reading one that old would fail; searches take milliseconds).
        """
        table = self._table(self.TABLE)
        if table is None:
            return
        # delete_unverified: stray files of a killed writer; safe, we hold the writer lock.
        table.optimize(cleanup_older_than=keep_versions, delete_unverified=True)
        failures = self._table(self.FAILURES)
        if failures is not None:
            failures.optimize(cleanup_older_than=keep_versions, delete_unverified=True)
        rows = table.count_rows()
        indexed = {tuple(i.columns): i for i in table.list_indices()}
        if rows >= self.SCALAR_MIN_ROWS:  # look-ups by file id, filters by source
            if ("file_id",) not in indexed:
                table.create_scalar_index("file_id", index_type="BTREE")
            if ("source",) not in indexed:
                table.create_scalar_index("source", index_type="BITMAP")
        if ann == "off":
            return
        if rows < self.ANN_MIN_ROWS:
            self.ann.drop()
            return
        if ann != "rebuild" and self.ann.exists():
            dirty = self.ann.dirty()
            if not dirty:
                return
            limit = min(self.REBUILD_FRACTION * rows, self.REBUILD_MAX_ROWS)
            if self._count_rows_of(dirty, stop_above=limit) <= limit:
                return  # cheap: the few rows written since are scanned exactly
        self.build_ann(log=log)
        if ("vector",) in indexed:  # an older version's LanceDB index: the FAISS one replaces it
            table.drop_index(indexed[("vector",)].name)

    @_lance_errors
    def build_ann(self, log=None) -> dict:
        """(Re)build the FAISS index beside the table from its current rows (the writer lock held)."""
        table = self._table(self.TABLE)
        rows = table.count_rows()
        dim = table.schema.field("vector").type.list_size
        columns = ["file_id", "source", "kind", "start", "vector"]

        def scan():
            return table.search().select(columns).limit(None).to_batches(16384)

        def take(offsets: np.ndarray) -> pa.Table:
            return table.take_offsets(offsets.tolist()).select(["vector"]).to_arrow()

        return self.ann.build(scan, rows, dim, table.version, take=take, log=log)

    def _count_rows_of(self, file_ids: Sequence[int], stop_above: float) -> int:
        table = self._table(self.TABLE)
        total = 0
        ids = sorted(int(i) for i in file_ids)
        for chunk in range(0, len(ids), 500):
            total += table.count_rows(_in("file_id", ids[chunk: chunk + 500]))
            if total > stop_above:
                break
        return total

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


ANN_KINDS = ("ivf_sq", "ivf_pq", "ivf_hnsw_sq")


def ann_partitions(rows: int) -> int:
    """IVF partitions for ``rows`` vectors: about sqrt(rows) / 2, between 1 and 2048."""
    return max(1, min(2048, round(rows**0.5 / 2)))


def create_ann_index(table, rows: int, kind: str = "ivf_sq") -> None:
    """LanceDB's own ANN index on the vectors (dot product), sized for ``rows``: for comparison only
    (``benchmarks/bench_index.py --lance-ann``); the store searches the FAISS index beside the table.

    ``ivf_sq`` (the default; measurements in docs/search.md): vectors
    clustered into about sqrt(rows)/2 IVF partitions and stored as 8-bit
    scalars; a query scans the ``nprobes`` (LanceDB's default: 20)
    partitions nearest to it. ``ivf_pq`` compresses 16 times more but builds
    much more slowly here and ranks coarsely (``REFINE_FACTOR`` re-scores
    candidates exactly); ``ivf_hnsw_sq`` builds slowest.
    """
    from lancedb.index import HnswSq, IvfPq, IvfSq

    dim = table.schema.field("vector").type.list_size
    common = dict(distance_type="dot", num_partitions=ann_partitions(rows), max_iterations=20, sample_rate=64)
    if kind == "ivf_sq":
        config = IvfSq(**common)
    elif kind == "ivf_pq":
        config = IvfPq(num_sub_vectors=_sub_vectors(dim), **common)
    elif kind == "ivf_hnsw_sq":
        config = HnswSq(**common)
    else:
        raise ValueError(f"unknown ANN index {kind!r}; choose from {', '.join(ANN_KINDS)}")
    table.create_index("vector", config=config, replace=True)


def _sub_vectors(dim: int) -> int:
    for n in (dim // 16, dim // 8, dim // 4, dim // 2, 1):  # 16 dimensions per PQ code when possible
        if n >= 1 and dim % n == 0:
            return n
    return 1


def _records(data: pa.Table) -> dict[str, FileRecord]:
    ids = data["file_id"].to_numpy()
    _, first = np.unique(ids, return_index=True)
    sub = data.take(pa.array(np.sort(first)))
    records = {}
    for row in sub.to_pylist():
        records[row["path"]] = FileRecord(**{k: row[k] for k in FILE_FIELDS})
    return records


def _with_later_fields(data: pa.Table) -> pa.Table:
    """``data`` with the ``LATER_FIELDS`` it lacks added as nulls, before the vector column if any."""
    for name, kind in LATER_FIELDS:
        if name not in data.schema.names:
            column = pa.nulls(data.num_rows, kind)
            at = data.schema.get_field_index("vector")
            data = data.add_column(at, name, column) if at >= 0 else data.append_column(name, column)
    return data


def _in(column: str, values: Iterable) -> str:
    items = []
    for v in values:
        if isinstance(v, str):
            items.append("'" + v.replace("'", "''") + "'")
        else:
            items.append(str(int(v)))
    return f"{column} IN ({', '.join(items)})"
