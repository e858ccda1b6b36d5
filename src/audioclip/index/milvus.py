"""A :class:`~audioclip.index.base.VectorStore` on Milvus: a server or cluster, or Milvus Lite (a local file).

``--db milvus:lib.db`` opens (or creates) Milvus Lite in ``lib.db``;
``--db http://host:19530`` (or ``https://``) a Milvus server, the same client
API. A name after ``#`` (``--db http://host:19530#music``) chooses the
collections' prefix (default ``audioclip``); a server's token is read from the
environment variable ``AUDIOCLIP_MILVUS_TOKEN`` (``user:password`` or an API
key), never from the command line.

Collections, ``{prefix}_`` and:

- ``rows``: one row per vector, the fields of ``records.ROW_FIELDS`` plus
  ``commit`` and the ``vector`` (FLOAT_VECTOR, inner product; a FLAT index
  on Lite, HNSW on a server); primary key hashed from ``(file_id, kind,
  start_s)``. A collection made before ``start_s``/``end_s`` were named so
  has them as ``start``/``end``, and keeps them (``LEGACY_NAMES``).
- ``files``: one *commit marker* per indexed file: its identity (path,
  size, mtime, hash, and ``dev``/``inode``: nullable, absent from collections
  made before they were recorded, which read them as None; Milvus Lite cannot
  add a field to a collection) and the ``commit`` number its rows carry. The
  rows' own size, mtime and hash are those of their first commit: a file's
  identity is read from its marker.
- ``meta`` (the index's metadata as JSON) and ``failures``.

Milvus writes are not transactional across rows, so a file's rows are written
first and its marker after; a file exists exactly when its marker does, and
only rows whose ``commit`` equals their file's marker are ever returned. A
crash mid-``add`` leaves unmarked rows (invisible; removed before the file is
added again and by :meth:`MilvusStore.optimize`); ``delete_files`` removes the
markers first, then the rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from .base import IndexStoreError, checked_meta
from .records import FILE_FIELDS, LATER_FIELDS, LEGACY_NAMES, FailureRecord, FileRecord, RowKind, row_schema

__all__ = ["MilvusStore", "is_milvus"]

_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")
_QUERY_LIMIT = 16_384  # Milvus's largest query window
_BATCH = 1000  # rows per insert request (about 4 MB of 1024-d vectors)
_TEXT = 4096
_DUMMY = "_v"  # Milvus collections need a vector field; the bookkeeping ones get a 2-d one
_MARKER_LATER = [name for name, _ in LATER_FIELDS]  # nullable INT64 fields of a new ``files`` collection
_ROW_NUMBERS = ("start_s", "end_s", "duration")  # nullable DOUBLE fields of a new ``rows`` collection


def is_milvus(db: str) -> bool:
    """Whether a ``--db`` value names a Milvus store rather than a LanceDB folder."""
    return str(db).startswith("milvus:") or str(db).startswith(_SERVER_SCHEMES)


def _pk(file_id: int, kind: RowKind, start: float | None) -> int:
    key = f"{int(file_id)}|{kind}|{'' if start is None else repr(float(start))}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class MilvusStore:
    """Milvus (or Milvus Lite) as the index's store. See the module docstring for the layout."""

    def __init__(self, db: str, create: bool = False):
        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # its iterators warn on every Lite query
        spec, _, name = str(db).partition("#")
        self.db = str(db)
        self.prefix = name or "audioclip"
        if not self.prefix.replace("_", "").isalnum() or not self.prefix[0].isalpha():
            raise IndexStoreError(f"{db}: the collection prefix {self.prefix!r} must be letters, digits and _")
        if spec.startswith("milvus:") and not spec[len("milvus:"):].startswith(_SERVER_SCHEMES):
            local = spec[len("milvus:"):]
            if not local.endswith(".db"):
                raise IndexStoreError(f"{db}: a Milvus Lite file name ends in .db (e.g. milvus:library.db)")
            self.uri = str(Path(local).expanduser().resolve())
            self.lite = True
        else:
            self.uri = spec[len("milvus:"):] if spec.startswith("milvus:") else spec
            self.lite = False
        if self.lite and not create and not Path(self.uri).exists():
            raise IndexStoreError(f"{db}: no index here (build one with 'audioclip index FOLDER --db {db}')")
        if self.lite and os.path.lexists(self.uri):  # a FIFO or device would hang or feed Milvus Lite
            import stat

            try:
                mode = os.stat(self.uri).st_mode
            except OSError as err:
                raise IndexStoreError(f"{db}: cannot open Milvus ({err.strerror or err})") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # Milvus Lite keeps a file or a folder there
                raise IndexStoreError(f"{db}: {self.uri} is not a Milvus Lite file (a special file)")
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise IndexStoreError('Milvus needs the pymilvus package: pip install "audioclip[milvus]"') from None
        try:
            if self.lite:
                Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            token = os.environ.get("AUDIOCLIP_MILVUS_TOKEN", "")
            self.client = MilvusClient(uri=self.uri, token=token) if token else MilvusClient(uri=self.uri)
        except Exception as err:  # noqa: BLE001 (pymilvus raises its own exception types)
            reason = str(getattr(err, "message", "") or err)
            if self.lite and "Open local milvus failed" in reason:
                reason = ("Milvus Lite is open in another process (it allows one at a time; use a Milvus server "
                          "for concurrent indexing and searching)")
            raise IndexStoreError(f"{db}: cannot open Milvus ({reason})") from None
        self._names = {c: f"{self.prefix}_{c}" for c in ("rows", "files", "meta", "failures")}
        self._ready: set[str] = set()
        self._dim: int | None = None
        self._marker_fields: list[str] | None = None
        self._legacy: dict[str, str] | None = None
        if not create and not self._has("meta"):
            raise IndexStoreError(f"{db}: no index here (build one with 'audioclip index FOLDER --db {db}')")

    @property
    def lock_file(self) -> Path | None:
        """The advisory lock of one writer at a time: beside a Lite file; none for a server."""
        return Path(self.uri + ".writer.lock") if self.lite else None

    @property
    def cache_dir(self) -> Path:
        """Where the web page's pictures are cached: beside a Lite file, in the user's cache for a server."""
        if self.lite:
            return Path(self.uri + ".cache")
        import platformdirs

        digest = hashlib.blake2b(self.db.encode(), digest_size=8).hexdigest()
        return Path(platformdirs.user_cache_dir("audioclip")) / "milvus" / digest

    @classmethod
    def exists(cls, db: str) -> bool:
        spec = str(db).partition("#")[0]
        if spec.startswith("milvus:") and not spec[len("milvus:"):].startswith(_SERVER_SCHEMES):
            return Path(spec[len("milvus:"):]).expanduser().exists()
        return True  # a server: asked when opened

    # -- collections ---------------------------------------------------------------------------

    def _has(self, which: str) -> bool:
        if which in self._ready:
            return True
        name = self._names[which]
        if not self.client.has_collection(name):
            return False
        if "NotLoad" in str(self.client.get_load_state(name).get("state")):
            self.client.load_collection(name)  # after a restart (or a killed Lite process) collections are released
        self._ready.add(which)
        return True

    def _create(self, which: str, dim: int | None = None) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        index = self.client.prepare_index_params()
        if which == "rows":
            schema.add_field("pk", DataType.INT64, is_primary=True)
            schema.add_field("file_id", DataType.INT64)
            schema.add_field("commit", DataType.INT64)
            schema.add_field("path", DataType.VARCHAR, max_length=_TEXT)
            for text in ("source", "modality", "kind"):
                schema.add_field(text, DataType.VARCHAR, max_length=16)
            for number in _ROW_NUMBERS:
                schema.add_field(number, DataType.DOUBLE, nullable=True)
            schema.add_field("size", DataType.INT64)
            schema.add_field("mtime_ns", DataType.INT64)
            schema.add_field("hash", DataType.VARCHAR, max_length=64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            if self.lite:
                index.add_index("vector", index_type="FLAT", metric_type="IP")
            else:
                index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 200})
            index.add_index("file_id", index_type="INVERTED")
            index.add_index("source", index_type="INVERTED")
        else:
            if which == "meta":
                schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
                schema.add_field("value", DataType.VARCHAR, max_length=65_535)
            else:
                schema.add_field("file_id", DataType.INT64, is_primary=True)
                schema.add_field("path", DataType.VARCHAR, max_length=_TEXT)
                schema.add_field("size", DataType.INT64)
                schema.add_field("mtime_ns", DataType.INT64)
                if which == "files":
                    schema.add_field("commit", DataType.INT64)
                    schema.add_field("source", DataType.VARCHAR, max_length=16)
                    schema.add_field("hash", DataType.VARCHAR, max_length=64)
                    schema.add_field("duration", DataType.DOUBLE, nullable=True)
                    schema.add_field("rows", DataType.INT64)
                    for name in _MARKER_LATER:
                        schema.add_field(name, DataType.INT64, nullable=True)
                else:
                    schema.add_field("error", DataType.VARCHAR, max_length=_TEXT)
            schema.add_field(_DUMMY, DataType.FLOAT_VECTOR, dim=2)
            index.add_index(_DUMMY, index_type="FLAT", metric_type="L2")
        self.client.create_collection(self._names[which], schema=schema, index_params=index,
                                      consistency_level="Strong")
        self._ready.add(which)

    def _ensure(self, which: str, dim: int | None = None) -> None:
        if not self._has(which):
            self._create(which, dim)

    def _query(self, which: str, filter: str, fields: Sequence[str]) -> list[dict]:  # noqa: A002
        if not self._has(which):
            return []
        name = self._names[which]
        found = self.client.query(name, filter=filter, output_fields=list(fields), limit=_QUERY_LIMIT)
        if len(found) < _QUERY_LIMIT:
            return list(found)
        out: list[dict] = []
        iterator = self.client.query_iterator(name, batch_size=4096, filter=filter, output_fields=list(fields))
        try:
            while batch := iterator.next():
                out.extend(batch)
        finally:
            iterator.close()
        return out

    # -- metadata -------------------------------------------------------------------------------

    def read_meta(self) -> dict | None:
        found = self._query("meta", 'key == "meta"', ["value"])
        if not found:
            return None
        try:
            meta = json.loads(found[0]["value"])
        except ValueError as err:
            raise IndexStoreError(f"{self.db}: unreadable index metadata ({err})") from None
        return checked_meta(meta, self.db)

    def write_meta(self, meta: dict) -> None:
        self._ensure("meta")
        self.client.upsert(self._names["meta"], [{"key": "meta", "value": json.dumps(meta), _DUMMY: [0.0, 0.0]}])

    # -- files ------------------------------------------------------------------------------------

    def _marker_names(self) -> list[str]:
        """The fields of the ``files`` collection (an older one lacks ``LATER_FIELDS``)."""
        if self._marker_fields is None:
            if not self._has("files"):
                return ["file_id", "commit", "path", "source", "size", "mtime_ns", "hash", "duration", "rows",
                        *_MARKER_LATER]
            fields = self.client.describe_collection(self._names["files"])["fields"]
            self._marker_fields = [f["name"] for f in fields if f["name"] != _DUMMY]
        return self._marker_fields

    def _stored_names(self) -> dict[str, str]:
        """Current name -> the name the ``rows`` collection stores it under (older ones: ``start``, ``end``)."""
        if self._legacy is None:
            if not self._has("rows"):
                return {}
            fields = {f["name"] for f in self.client.describe_collection(self._names["rows"])["fields"]}
            self._legacy = {new: old for old, new in LEGACY_NAMES.items() if old in fields}
        return self._legacy

    @property
    def records_inodes(self) -> bool:
        """Whether file markers hold ``dev``/``inode`` (not in collections made before they were recorded)."""
        return "inode" in self._marker_names()

    def _markers(self, filter: str) -> dict[int, dict]:  # noqa: A002
        return {int(r["file_id"]): r for r in self._query("files", filter, self._marker_names())}

    def files(self) -> dict[str, FileRecord]:
        return {m["path"]: _record(m) for m in self._markers("file_id != 0 or file_id == 0").values()}

    def get_file(self, file_id: int) -> FileRecord | None:
        marker = self._markers(f"file_id == {int(file_id)}").get(int(file_id))
        return None if marker is None else _record(marker)

    def add(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        dim = rows.schema.field("vector").type.list_size
        self._ensure("rows", dim)
        self._ensure("files")
        ids = sorted(set(rows["file_id"].to_pylist()))
        commit = random.getrandbits(62) + 1
        self._delete_rows(ids)  # unmarked rows of a crashed add of the same files
        data = rows.to_pylist()
        later = [name for name, _ in LATER_FIELDS]  # identity kept on the marker only (not a rows field)
        marker_fields = set(self._marker_names())
        stored = self._stored_names()
        identity: dict[int, dict] = {}
        for row in data:
            values = {name: row.pop(name, None) for name in later}
            identity.setdefault(row["file_id"], {k: v for k, v in values.items() if k in marker_fields})
            row["pk"] = _pk(row["file_id"], row["kind"], row["start_s"])
            for new, old in stored.items():
                row[old] = row.pop(new)
            row["commit"] = commit
            row["vector"] = np.asarray(row["vector"], np.float32).tolist()
        for chunk in range(0, len(data), _BATCH):
            self.client.insert(self._names["rows"], data[chunk: chunk + _BATCH])
        counts: dict[int, int] = {}
        first: dict[int, dict] = {}
        for row in data:
            counts[row["file_id"]] = counts.get(row["file_id"], 0) + 1
            first.setdefault(row["file_id"], row)
        markers = [{"file_id": fid, "commit": commit, "rows": counts[fid], _DUMMY: [0.0, 0.0], **identity[fid],
                    **{k: first[fid][k] for k in ("path", "source", "size", "mtime_ns", "hash", "duration")}}
                   for fid in ids]
        self.client.upsert(self._names["files"], markers)  # the commit: from here the files exist

    def _delete_rows(self, file_ids: Sequence[int]) -> None:
        for chunk in range(0, len(file_ids), 500):
            part = ", ".join(str(int(i)) for i in file_ids[chunk: chunk + 500])
            self.client.delete(self._names["rows"], filter=f"file_id in [{part}]")

    def delete_files(self, file_ids: Sequence[int]) -> None:
        ids = sorted({int(i) for i in file_ids})
        if not ids or not self._has("files"):
            return
        for chunk in range(0, len(ids), 500):
            part = ", ".join(str(i) for i in ids[chunk: chunk + 500])
            self.client.delete(self._names["files"], filter=f"file_id in [{part}]")  # gone from here on
        if self._has("rows"):
            self._delete_rows(ids)

    def update_files(self, records: Sequence[FileRecord]) -> None:
        if not records:
            return
        markers = self._markers(_in_ids([r.file_id for r in records]))
        fields = set(self._marker_names())
        updated = []
        for r in records:
            marker = markers.get(int(r.file_id))
            if marker is not None:
                identity = {"size": r.size, "mtime_ns": r.mtime_ns, "hash": r.hash, "dev": r.dev, "inode": r.inode}
                updated.append({**marker, **{k: v for k, v in identity.items() if k in fields},
                                _DUMMY: [0.0, 0.0]})
        if updated:
            self.client.upsert(self._names["files"], updated)

    def rows(self, file_ids: Sequence[int]) -> pa.Table:
        dim = self._dimension()
        schema = row_schema(dim or 1)
        ids = sorted({int(i) for i in file_ids})
        if not ids or dim is None:
            return schema.empty_table()
        markers = self._markers(_in_ids(ids))
        later = {name for name, _ in LATER_FIELDS}
        stored = self._stored_names()
        fields = [stored.get(name, name) for name in schema.names if name not in later] + ["commit"]
        found = []
        for chunk in range(0, len(ids), 200):
            found += self._query("rows", _in_ids(ids[chunk: chunk + 200]), fields)
        rows = []
        for row in found:
            marker = markers.get(int(row["file_id"]))
            if marker is None or int(row["commit"]) != int(marker["commit"]):
                continue  # not (or no longer) committed
            row = {name: row.get(stored.get(name, name)) for name in schema.names}
            row.update(size=marker["size"], mtime_ns=marker["mtime_ns"], hash=marker["hash"],
                       dev=marker.get("dev"), inode=marker.get("inode"))
            rows.append(row)
        rows.sort(key=lambda r: (r["path"], r["kind"], -1.0 if r["start_s"] is None else r["start_s"]))
        return pa.Table.from_pylist(rows, schema=schema)

    def _dimension(self) -> int | None:
        if self._dim is None and self._has("rows"):
            fields = self.client.describe_collection(self._names["rows"])["fields"]
            vector = next(f for f in fields if f["name"] == "vector")
            self._dim = int(vector["params"]["dim"])
        return self._dim

    def search(self, vector: np.ndarray, limit: int, sources: Sequence[str] | None = None,
               exact: bool = False) -> pa.Table:
        """The ``limit`` best committed rows: ``file_id``, ``kind``, ``start_s``, ``score`` (cosine), best first."""
        empty = pa.table({"file_id": pa.array([], pa.int64()), "kind": pa.array([], pa.string()),
                          "start_s": pa.array([], pa.float64()), "score": pa.array([], pa.float32())})
        if not self._has("rows"):
            return empty
        ask = min(max(1, limit), _QUERY_LIMIT)
        params = {"metric_type": "IP"}
        if not self.lite:  # HNSW: a wider beam for exact=True (a FLAT index is exact by itself)
            params["params"] = {"ef": min(_QUERY_LIMIT, max(ask, 64) * (16 if exact else 2))}
        start = self._stored_names().get("start_s", "start_s")
        kwargs = {"filter": "source in [" + ", ".join(json.dumps(s) for s in sources) + "]"} if sources else {}
        hits = self.client.search(self._names["rows"], data=[np.asarray(vector, np.float32).tolist()],
                                  anns_field="vector", limit=ask, search_params=params,
                                  output_fields=["file_id", "kind", start, "commit"], **kwargs)[0]
        markers = self._markers(_in_ids({int(h["entity"]["file_id"]) for h in hits})) if hits else {}
        kept = [h for h in hits if int(h["entity"]["file_id"]) in markers
                and int(h["entity"]["commit"]) == int(markers[int(h["entity"]["file_id"])]["commit"])]
        if not kept:
            return empty
        return pa.table({"file_id": pa.array([int(h["entity"]["file_id"]) for h in kept], pa.int64()),
                         "kind": pa.array([h["entity"]["kind"] for h in kept], pa.string()),
                         "start_s": pa.array([h["entity"][start] for h in kept], pa.float64()),
                         "score": pa.array([float(h["distance"]) for h in kept], pa.float32())})

    def count_rows(self) -> int:
        if not self._has("rows"):
            return 0
        found = self.client.query(self._names["rows"], filter="", output_fields=["count(*)"])
        return int(found[0]["count(*)"]) if found else 0

    # -- failures ---------------------------------------------------------------------------------

    def failures(self) -> dict[str, FailureRecord]:
        fields = ["file_id", "path", "size", "mtime_ns", "error"]
        return {r["path"]: FailureRecord(**{k: r[k] for k in fields})
                for r in self._query("failures", "file_id != 0 or file_id == 0", fields)}

    def set_failures(self, add: Sequence[FailureRecord], remove: Sequence[int]) -> None:
        drop = sorted({int(i) for i in remove} - {f.file_id for f in add})
        if drop and self._has("failures"):
            self.client.delete(self._names["failures"], filter=_in_ids(drop))
        if add:
            self._ensure("failures")
            self.client.upsert(self._names["failures"],
                               [{**asdict(f), "error": f.error[:_TEXT - 1], _DUMMY: [0.0, 0.0]} for f in add])

    # -- maintenance --------------------------------------------------------------------------------

    def optimize(self, **_ignored) -> None:
        """Remove rows no marker commits (left by a killed ``add``), then flush the collections to storage."""
        if not self._has("rows"):
            return
        markers = self._markers("file_id != 0 or file_id == 0")
        if self.count_rows() != sum(int(m["rows"]) for m in markers.values()):
            stale = set()
            for row in self._query("rows", "file_id != 0 or file_id == 0", ["file_id", "commit"]):
                marker = markers.get(int(row["file_id"]))
                if marker is None or int(marker["commit"]) != int(row["commit"]):
                    stale.add(int(row["file_id"]))
            live_stale = [i for i in stale if i in markers]
            gone = sorted(stale - set(live_stale))
            if gone:
                self._delete_rows(gone)
            for fid in live_stale:  # rows of an older commit of a file now committed anew
                self.client.delete(self._names["rows"],
                                   filter=f"file_id == {fid} and commit != {int(markers[fid]['commit'])}")
        for which in ("rows", "files", "meta", "failures"):
            if self._has(which):
                self.client.flush(self._names[which])

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"MilvusStore({self.db!r})"


def _in_ids(ids) -> str:
    return "file_id in [" + ", ".join(str(int(i)) for i in ids) + "]"


def _record(marker: dict) -> FileRecord:
    return FileRecord(**{k: marker.get(k) for k in FILE_FIELDS})
