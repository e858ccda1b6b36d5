"""The index's default store: a LanceDB folder (Arrow/Lance files on disk, no server) and a FAISS index beside it.

Rows in ``records.row_schema``'s columns, one atomic commit per write (see
:class:`LanceStore`); the FAISS IVF index beside the table is ``ann.py``.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..io import FileReadError, atomic_write, held_by, read_text_bounded
from .ann import AnnIndex
from .base import MAX_META_BYTES, IndexStoreError, checked_meta
from .records import (FILE_FIELDS, LATER_FIELDS, LEGACY_NAMES, ROW_FIELDS, FailureRecord, FileRecord, row_schema,
                      with_current_columns)

__all__ = ["LanceStore", "lance_message"]


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


# -- LanceDB -------------------------------------------------------------------------


class LanceStore:
    """A :class:`VectorStore` in a LanceDB folder (no server; Arrow/Lance files on disk).

    Every ``add``, ``delete`` and ``update`` is one Lance commit: a new
    manifest is written only after all data files are, so a crash leaves
    either the previous version or the new one, never a part (stray data
    files of an uncommitted write are invisible and removed by ``optimize``).
    Readers see the latest committed version at each query.

    The folder holds the tables ``media`` (vectors) and ``failures``, and
    ``audioclip-index.json`` (checkpoint and decoding options). A ``media``
    table written before the columns ``start_s``/``end_s`` were named so holds
    them as ``start``/``end``: it is read under the new names and written
    under its own (``LEGACY_NAMES``), never renamed in place, so a search
    reading it meanwhile never finds a column gone.
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
        return with_current_columns(data) if any(n in columns for n, _ in LATER_FIELDS) else data

    def _stored_name(self, table, name: str) -> str:
        """The name ``table`` stores the column ``name`` under (an older table's ``start``, ``end``)."""
        old = next((o for o, new in LEGACY_NAMES.items() if new == name), None)
        return old if old is not None and old in table.schema.names else name

    def _as_stored(self, table, rows: pa.Table) -> pa.Table:
        """``rows`` (current names) under the names ``table`` stores (``table`` None: a new table)."""
        if table is None or not any(old in table.schema.names for old in LEGACY_NAMES):
            return rows
        back = {new: old for old, new in LEGACY_NAMES.items()}
        return rows.rename_columns([back.get(n, n) for n in rows.schema.names])

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
            self._create_or_add(self.TABLE, self._as_stored(self._table(self.TABLE), with_current_columns(rows)))

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
            return row_schema(1).empty_table() if table is None else with_current_columns(table.schema.empty_table())
        parts = []
        ids = [int(i) for i in file_ids]
        for chunk in range(0, len(ids), 500):
            where = _in("file_id", ids[chunk : chunk + 500])
            parts.append(table.search().where(where).limit(None).to_arrow())
        return with_current_columns(pa.concat_tables(parts))

    @_lance_errors
    def search(self, vector: np.ndarray, limit: int, sources: Sequence[str] | None = None,
               exact: bool = False) -> pa.Table:
        """The ``limit`` best rows: ``file_id``, ``kind``, ``start_s``, ``score`` (cosine), best first."""
        table = self._table(self.TABLE)
        if table is None:
            return pa.table({"file_id": pa.array([], pa.int64()), "kind": pa.array([], pa.string()),
                             "start_s": pa.array([], pa.float64()), "score": pa.array([], pa.float32())})
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
        found = query.select(["file_id", "kind", self._stored_name(table, "start_s"), "_distance"]).limit(limit)
        found = with_current_columns(found.to_arrow()).select(["file_id", "kind", "start_s", "_distance"])
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
        columns = ["file_id", "source", "kind", self._stored_name(table, "start_s"), "vector"]

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


def _records(data: pa.Table) -> dict[str, FileRecord]:
    ids = data["file_id"].to_numpy()
    _, first = np.unique(ids, return_index=True)
    sub = data.take(pa.array(np.sort(first)))
    records = {}
    for row in sub.to_pylist():
        records[row["path"]] = FileRecord(**{k: row[k] for k in FILE_FIELDS})
    return records


def _in(column: str, values: Iterable) -> str:
    items = []
    for v in values:
        if isinstance(v, str):
            items.append("'" + v.replace("'", "''") + "'")
        else:
            items.append(str(int(v)))
    return f"{column} IN ({', '.join(items)})"
