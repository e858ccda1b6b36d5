"""Embedding outputs people can query: Parquet (default), .npy + its rows (OUT.rows.jsonl), or JSON lines.

The row schema (version 2, docs/output-format.md) is one row per vector:

=========== ======================= ==================================================
column      type                    meaning
=========== ======================= ==================================================
path        string                  the input file, as it was named
source      string                  what the file is: ``audio``, ``image`` or ``video``
modality    string                  what the vector embeds: ``audio`` or ``image``
kind        string                  ``window``, ``pooled`` (the clip), ``image``, ``frame``
start_s     float64 (null: images)  seconds into the file
end_s       float64 (null: images)  seconds into the file
windows     int32 (null: pictures)  audio windows the vector stands for (1 for a window)
checkpoint  string                  :func:`audioclip.factory.checkpoint_id` of the weights
embedding   fixed_size_list<float32, dim>   L2-normalised
=========== ======================= ==================================================

No column is an SQL keyword. A clip of a single window has one row (``pooled``,
``windows = 1``): its window and its clip are the same vector. Rows are sorted
by path (then image/frame/window/pooled, then start), so the outputs of shards
concatenate into the output of one run.

The run's settings (checkpoint and its sha256, architecture, window, hop,
sample rate, audio mode, package version, creation time, ...) travel with the
data: in the Parquet file's key-value metadata (keys ``audioclip.*``), and for
``.npy``/``.jsonl`` outputs in a sidecar ``OUT.meta.json``. Every side file of an
output is named from the output's whole name plus a suffix no output is given
(:data:`SIDE_SUFFIXES`: ``OUT.meta.json``, an ``.npy``'s rows ``OUT.rows.jsonl``,
``OUT.parts``, ``.OUT.lock``), so one output never writes or removes another's file.
:func:`read_embeddings` reads any of them (and folders of Parquet parts, and
the version-1 files of earlier releases, upgraded on read) into an
:class:`Embeddings`: the table and the settings.

Long jobs write as they go: finished files are written, a part at a time, to
``OUT.parts/part-<time>-<random>.parquet`` (each part complete or absent; names
that two writers or two runs cannot share), and a final step merges everything
into ``OUT``. A killed job therefore loses only the files of the part it was
filling, and a re-run skips every file already in ``OUT`` or in the parts,
provided it was made with the same checkpoint and windows. A file found in two
parts (two runs that overlapped) is kept once. Outputs may be object-store
URIs (``s3://bucket/emb.parquet``, through :mod:`pyarrow.fs`), where each
object is written whole by the store; local files go through
:mod:`audioclip.io`'s atomic writes and a lock that keeps a second job off the
same output.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .media.files import DecodeOptions
from .util import package_version, sha256_file
from .io import (FileReadError, LockedError, atomic_path, atomic_write, check_regular_file, exclusive_lock, held_by,
                 read_bytes_bounded, write_text_atomic)
from .errors import AudioclipError

if TYPE_CHECKING:  # the model's results; imported only for the annotations (reading an output needs no torch)
    from .inference import FileResult

__all__ = [
    "COLUMNS",
    "FORMATS",
    "SCHEMA_VERSION",
    "EmbeddingWriter",
    "Embeddings",
    "OutputError",
    "OutputLockedError",
    "check_not_locked",
    "check_output_name",
    "format_for",
    "read_embeddings",
    "remove_output",
    "rows_path",
    "rows_table",
    "text_path",
    "run_settings",
    "schema",
    "upgrade",
    "write_part",
]

FORMATS = ("parquet", "npy", "jsonl")
#: an ``.npy`` output's rows without vectors: ``OUT.rows.jsonl`` (``lib.npy.rows.jsonl``)
ROWS_SUFFIX = ".rows.jsonl"
#: the settings of an ``.npy`` or ``.jsonl`` output: ``OUT.meta.json``
META_SUFFIX = ".meta.json"
#: what side files end with (and the lock, ``.OUT.lock``): an output name ending so is refused
SIDE_SUFFIXES = (ROWS_SUFFIX, META_SUFFIX, ".parts", ".lock")
SCHEMA_VERSION = 2
METADATA_PREFIX = "audioclip."
_KIND_ORDER = {"image": 0, "frame": 1, "window": 2, "pooled": 3}

#: column -> (Arrow type, meaning); ``embedding``'s list size is the model's dimension
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "path": (pa.string(), "the input file, as it was named"),
    "source": (pa.string(), "what the file is: audio, image or video"),
    "modality": (pa.string(), "what the vector embeds: audio or image"),
    "kind": (pa.string(), "window, pooled (the whole clip), image or frame"),
    "start_s": (pa.float64(), "seconds into the file (null for an image)"),
    "end_s": (pa.float64(), "seconds into the file (null for an image)"),
    "windows": (pa.int32(), "audio windows the vector stands for: 1 for a window (null for pictures)"),
    "checkpoint": (pa.string(), "identity of the weights (audioclip.checkpoint_id)"),
    "embedding": (pa.float32(), "the vector: fixed_size_list<float32, dim>, L2-normalised"),
}

#: settings key -> type; stored as text (Parquet metadata ``audioclip.KEY``, sidecar JSON values as typed)
SETTINGS: dict[str, type] = {
    "schema_version": int,
    "checkpoint": str,
    "checkpoint_name": str,
    "checkpoint_sha256": str,
    "architecture": str,
    "embedding_dim": int,
    "window_s": float,
    "hop_s": float,
    "sample_rate": int,
    "mono": bool,
    "video_frames": str,
    "image_size": int,
    "audio_mode": str,
    "precision": str,
    "engine": str,
    "package_version": str,
    "created": str,
}
#: settings that change which rows a file gets or what its vectors are: a resumed output must agree on them
_ROW_SETTINGS = ("checkpoint", "window_s", "hop_s", "sample_rate", "mono", "video_frames", "image_size")


class OutputError(AudioclipError, ValueError):
    """The output cannot be written or resumed (e.g. it holds another checkpoint's vectors)."""


class OutputLockedError(LockedError, OutputError):  # LockedError first: its __init__ keeps ``holder``
    """Another job is writing the output (``holder`` names it): the command line exits 2."""


def format_for(path: str | os.PathLike, requested: str | None = None) -> str:
    """The output format: as requested, else from the file suffix, else Parquet."""
    if requested:
        if requested not in FORMATS:
            raise OutputError(f"unknown output format {requested!r}; choose from {', '.join(FORMATS)}")
        return requested
    suffix = Path(str(path)).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "parquet"


# -- the settings of a run ----------------------------------------------------------------------


_FILE_SHA256: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_SHA256:
        _FILE_SHA256[key] = sha256_file(path)
    return _FILE_SHA256[key]


def run_settings(
    model,
    options: DecodeOptions | None = None,
    *,
    precision: str = "fp32",
    audio_mode: str | None = None,
    engine: str = "plain",
) -> dict[str, Any]:
    """The settings recorded with an output made by ``model`` (built by :func:`audioclip.create_model`).

    ``audio_mode`` defaults to the one the model was built with.
    """
    from .factory import checkpoint_id

    info = getattr(model, "pretrained_cfg", None) or {}
    options = options or DecodeOptions(image_size=model.visual.image_size)
    if info.get("weights"):
        name, sha = info["weights"], info.get("sha256")
    elif info.get("file"):
        name, sha = Path(info["file"]).name, _file_sha256(info["file"])
    else:
        name, sha = info.get("architecture"), None  # random weights: the checkpoint id says which
    settings = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": checkpoint_id(model),
        "checkpoint_name": name,
        "checkpoint_sha256": sha,
        "architecture": info.get("architecture"),
        "embedding_dim": getattr(model, "embed_dim", None),
        "window_s": float(options.window),
        "hop_s": float(options.hop if options.hop is not None else options.window),
        "sample_rate": int(options.sample_rate),
        "mono": bool(options.mono),
        "video_frames": options.video_frames,
        "image_size": int(options.image_size),
        "audio_mode": audio_mode if audio_mode is not None else info.get("audio_mode"),
        "precision": precision,
        "engine": engine,
        "package_version": package_version(),
        "created": _now(),
    }
    return {k: v for k, v in settings.items() if v is not None}


def _earliest(a: str | None, b: str | None) -> str | None:
    """The earlier of two ``created`` times (ISO 8601 in UTC, to the second, so their text orders them)."""
    return min((t for t in (a, b) if t), default=None)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def settings_metadata(settings: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Parquet key-value metadata: ``audioclip.KEY`` -> the value as text (booleans ``true``/``false``)."""
    out = {}
    for key, value in settings.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out[(METADATA_PREFIX + key).encode()] = text.encode()
    return out


def settings_from_metadata(metadata: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """The settings in Parquet key-value metadata, typed (unknown keys stay text)."""
    settings: dict[str, Any] = {}
    for raw_key, raw_value in (metadata or {}).items():
        key = raw_key.decode("utf-8", "replace")
        if not key.startswith(METADATA_PREFIX):
            continue
        key, text = key[len(METADATA_PREFIX):], raw_value.decode("utf-8", "replace")
        settings[key] = _typed(key, text)
    return settings


def _typed(key: str, value: Any) -> Any:
    kind = SETTINGS.get(key)
    if kind is None or value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            return str(value).lower() in ("true", "1")
        return kind(value)
    except (TypeError, ValueError):
        return value


# -- rows ------------------------------------------------------------------------------------------


def schema(dim: int, settings: Mapping[str, Any] | None = None) -> pa.Schema:
    """The Arrow schema of an output with ``dim``-dimensional vectors (and the settings as metadata)."""
    fields = [pa.field(name, kind, nullable=name not in ("path", "embedding")) for name, (kind, _) in COLUMNS.items()
              if name != "embedding"]
    fields.append(pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False))
    return pa.schema(fields, metadata=settings_metadata(settings) if settings else None)


def text_path(path: str) -> str:
    """``path`` as the ``path`` column holds it: valid UTF-8 text.

    A file name that is not UTF-8 reaches Python with its odd bytes as
    surrogates (``b"caf\\xe9.wav"`` -> ``"caf\\udce9.wav"``), which Arrow, Parquet
    and most tools cannot store: those bytes are written as ``\\xNN`` escapes
    (``caf\\xe9.wav``). Every other name is kept as it is.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def rows_table(results: Iterable[FileResult], checkpoint: str, settings: Mapping[str, Any] | None = None) -> pa.Table:
    """The output rows of finished files (failed ones give none); a single-window clip gives one row."""
    columns: dict[str, list] = {name: [] for name in COLUMNS if name != "embedding"}
    vectors = []
    for result in results:
        if not result.ok:
            continue
        n_windows = sum(1 for e in result.embeddings if e.kind == "window")
        for e in result.embeddings:
            if e.kind == "window" and n_windows == 1:
                continue  # the same vector as the clip's pooled row
            columns["path"].append(text_path(result.path))
            columns["source"].append(result.source)
            columns["modality"].append(e.modality)
            columns["kind"].append(e.kind)
            columns["start_s"].append(e.start)
            columns["end_s"].append(e.end)
            columns["windows"].append(1 if e.kind == "window" else n_windows if e.kind == "pooled" else None)
            columns["checkpoint"].append(checkpoint)
            vectors.append(e.vector.detach().cpu().float().numpy())
    return _build(columns, np.stack(vectors) if vectors else None, settings)


def _build(columns: dict[str, list], vectors: np.ndarray | None, settings=None) -> pa.Table:
    dim = int(vectors.shape[1]) if vectors is not None else int((settings or {}).get("embedding_dim", 0))
    target = schema(dim, settings)
    arrays = [pa.array(columns[name], type=target.field(name).type) for name in target.names[:-1]]
    flat = vectors.astype(np.float32, copy=False).reshape(-1) if vectors is not None else np.zeros(0, np.float32)
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim))
    return pa.Table.from_arrays(arrays, schema=target)


def _sorted(table: pa.Table) -> pa.Table:
    if table.num_rows < 2:
        return table
    rank = pa.array([_KIND_ORDER.get(k, 9) for k in table["kind"].to_pylist()], type=pa.int8())
    keys = pa.table({"path": table["path"], "rank": rank, "start": pc.fill_null(table["start_s"], -1.0)})
    order = pc.sort_indices(keys, sort_keys=[("path", "ascending"), ("rank", "ascending"), ("start", "ascending")])
    return table.take(order)


def _matrix(table: pa.Table) -> np.ndarray:
    column = table["embedding"]
    if not isinstance(column.type, pa.FixedSizeListType):
        rows = column.to_pylist()
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    dim = column.type.list_size
    if table.num_rows == 0:
        return np.zeros((0, dim), np.float32)
    values = column.combine_chunks()
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(table.num_rows, dim)


# -- upgrading earlier outputs -------------------------------------------------------------------------


def upgrade(table: pa.Table, settings: Mapping[str, Any] | None = None) -> pa.Table:
    """A table of any schema version in the current one (the current one is returned as it is).

    Version 1 (releases before the queryable schema): ``start``/``end`` become
    ``start_s``/``end_s``, ``windows`` is added, the window row of a
    single-window clip (a copy of its pooled row) is dropped, and the
    embedding becomes a fixed-size float32 list.
    """
    names = set(table.column_names)
    if "start_s" in names and "windows" in names and isinstance(table["embedding"].type, pa.FixedSizeListType):
        target = schema(table["embedding"].type.list_size, settings)
        if table.schema.names == target.names and table.schema.types != target.types:
            table = table.cast(target)  # e.g. the list's child named "element" by a Parquet writer
        return table
    if "start" not in names and "start_s" not in names:
        raise OutputError(f"not an embeddings table: columns {sorted(names)}")
    rows = table.select([c for c in table.column_names if c != "embedding"]).to_pylist()
    vectors = _matrix(table) if table.num_rows else None
    window_count: dict[str, int] = {}
    for row in rows:
        if row["kind"] == "window":
            window_count[row["path"]] = window_count.get(row["path"], 0) + 1
    keep = []
    columns: dict[str, list] = {name: [] for name in COLUMNS if name != "embedding"}
    for i, row in enumerate(rows):
        n = window_count.get(row["path"], 0)
        if row["kind"] == "window" and n == 1:
            continue
        keep.append(i)
        start = row.get("start_s", row.get("start"))
        end = row.get("end_s", row.get("end"))
        values = {"start_s": start, "end_s": end,
                  "windows": 1 if row["kind"] == "window" else n if row["kind"] == "pooled" else None}
        for name in columns:
            columns[name].append(values[name] if name in values else row.get(name))
    kept = vectors[keep] if vectors is not None and keep else None
    return _build(columns, kept, settings)


# -- reading -------------------------------------------------------------------------------------------


class Embeddings(NamedTuple):
    """An output read back: the rows (an Arrow table in the current schema) and the run's settings.

    Unpacks as ``table, settings = audioclip.read_embeddings(path)``.
    """

    table: pa.Table
    settings: dict

    def matrix(self) -> np.ndarray:
        """The vectors as one ``(rows, dim)`` float32 array, row ``i`` for ``table`` row ``i``."""
        return _matrix(self.table)

    def to_pandas(self):
        """A pandas DataFrame: one column per field, ``embedding`` holding float32 arrays."""
        frame = self.table.drop_columns(["embedding"]).to_pandas()
        frame["embedding"] = list(self.matrix())
        frame.attrs["audioclip"] = dict(self.settings)
        return frame

    # an Embeddings also answers as its table did when read_embeddings returned only the table
    def __getitem__(self, key):
        return self.table[key] if isinstance(key, str) else tuple.__getitem__(self, key)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def column_names(self) -> list[str]:
        return self.table.column_names

    def __repr__(self) -> str:  # the table's repr prints vectors
        return f"Embeddings({self.table.num_rows} rows, settings={self.settings!r})"


def read_embeddings(path: str | os.PathLike, fmt: str | None = None) -> Embeddings:
    """Read an output (Parquet, ``.npy`` + index, ``.jsonl``, or a folder of Parquet parts; local or a URI).

    Files of earlier releases are upgraded on read (:func:`upgrade`); a
    folder's parts are concatenated (a file in two parts is kept once) and
    sorted. Returns :class:`Embeddings` ``(table, settings)``.
    """
    files = _Files(path)
    if files.is_dir(files.root):
        return _read_folder(files, files.root)
    table, settings = _read_file(files, files.root, format_for(files.root, fmt))
    return Embeddings(table, settings)


def _read_folder(files: _Files, folder: str) -> Embeddings:
    parts = files.list(folder, suffix=".parquet")
    tables, settings = [], {}
    for part in parts:
        table, part_settings = _read_file(files, part, "parquet")
        tables.append(table)
        settings = settings or dict(part_settings)
        if _earliest(settings.get("created"), part_settings.get("created")):
            settings["created"] = _earliest(settings.get("created"), part_settings.get("created"))
    if not tables:
        raise OutputError(f"{folder}: no Parquet files in this folder")
    table = _sorted(_concat_unique(tables))
    return Embeddings(table.replace_schema_metadata(tables[0].schema.metadata), settings)


def _jsonl_rows(data: bytes, path: str) -> list[dict]:
    """The objects of a JSON-lines file, or :class:`OutputError` naming it."""
    try:
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    except ValueError as err:  # not UTF-8, not JSON
        raise OutputError(f"{path}: not JSON lines ({str(err).splitlines()[0]})") from None
    if not all(isinstance(row, dict) for row in rows):
        raise OutputError(f"{path}: a line that is not a JSON object")
    return rows


def _read_file(files: _Files, path: str, fmt: str, columns: list[str] | None = None) -> tuple[pa.Table, dict]:
    if fmt == "parquet" and columns is not None:  # a quick look: these columns as stored, and the settings
        if files.local:
            _regular(path)
        raw = pq.read_table(path, filesystem=files.fs, columns=columns)
        return raw, settings_from_metadata(pq.read_schema(path, filesystem=files.fs).metadata)
    if fmt == "parquet":
        raw = files.read_table(path)
        settings = settings_from_metadata(raw.schema.metadata)
        if "start" in raw.column_names and "start_s" not in raw.column_names:
            settings.setdefault("schema_version", 1)
        if not settings.get("checkpoint") and raw.num_rows:
            settings["checkpoint"] = raw["checkpoint"][0].as_py()
        return upgrade(raw, settings).replace_schema_metadata(settings_metadata(settings)), settings
    sidecar = _sidecar(path)
    settings = {k: _typed(k, v) for k, v in json.loads(files.read_bytes(sidecar)).items() if k != "columns"} \
        if files.exists(sidecar) else {"schema_version": 1}
    if fmt == "jsonl":
        rows = _jsonl_rows(files.read_bytes(path), path)
        if any(not isinstance(row.get("embedding"), list) for row in rows):
            raise OutputError(f"{path}: a row without an embedding: not an embeddings output")
        vectors = np.asarray([row.pop("embedding") for row in rows], dtype=np.float32) if rows else None
    else:
        import io as _io

        vectors = np.load(_io.BytesIO(files.read_bytes(path)))
        index = rows_path(path)
        if not files.exists(index):
            index = _earlier_rows_path(files, path)  # written by an earlier release: OUT with .jsonl
            if index is None:
                raise OutputError(f"{path}: its rows ({rows_path(path)}) are missing")
        rows = _jsonl_rows(files.read_bytes(index), index)
        if len(rows) != len(vectors):
            raise OutputError(f"{path}: {len(vectors)} vectors but {len(rows)} rows in {index}")
    if rows and not settings.get("checkpoint"):
        settings["checkpoint"] = rows[0].get("checkpoint")
    names = set().union(*(row.keys() for row in rows)) if rows else set(COLUMNS) - {"embedding"}
    columns = {name: [row.get(name) for row in rows] for name in names}
    if "start" in names and "start_s" not in names:  # version 1: through the upgrade
        plain = pa.table({**columns, "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1) if vectors is not None else [], pa.float32()),
            vectors.shape[1] if vectors is not None else 0)})
        return upgrade(plain, settings), settings
    table = _build({name: columns.get(name, [None] * len(rows)) for name in COLUMNS if name != "embedding"},
                   vectors if rows else None, settings)
    return table, settings


def rows_path(npy: str | os.PathLike) -> str:
    """Where the rows (without vectors) of the ``.npy`` output ``npy`` are: ``NPY.rows.jsonl``."""
    return f"{os.fspath(npy)}{ROWS_SUFFIX}"


def _earlier_rows_path(files: _Files, npy: str | os.PathLike) -> str | None:
    """The rows of ``npy`` as earlier releases named them (``lib.npy`` -> ``lib.jsonl``), if that file is them.

    That name is also the name of a ``.jsonl`` output: it is taken for the
    rows only when it has no sidecar of its own (``lib.jsonl.meta.json``) and
    its first row holds no ``embedding`` (a ``.jsonl`` output's rows hold
    their vectors; an ``.npy``'s rows never did).
    """
    npy = os.fspath(npy)
    stem, suffix = os.path.splitext(npy)
    earlier = stem + ".jsonl"
    if suffix.lower() != ".npy" or not files.exists(earlier) or files.exists(_sidecar(earlier)):
        return None
    try:
        head = files.read_head(earlier, 1 << 20)
        first = next((line for line in head.split(b"\n") if line.strip()), b"")
        row = json.loads(first) if first else {}
    except (OSError, ValueError):
        return None
    return earlier if isinstance(row, dict) and "embedding" not in row else None


def check_output_name(out: str | os.PathLike) -> None:
    """An :class:`OutputError` if ``out`` is named like another output's side file (:data:`SIDE_SUFFIXES`)."""
    name = os.fspath(out).rstrip("/")
    for suffix in SIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            raise OutputError(f"{out}: names ending in {suffix} are kept for the side files of outputs "
                              f"({', '.join(SIDE_SUFFIXES)}); choose another name")


def _sidecar(path: str) -> str:
    return f"{path}.meta.json"


def _concat_unique(tables: list[pa.Table]) -> pa.Table:
    """Tables concatenated; a path's rows are taken from the first table that has it (parts of overlapping runs)."""
    seen: set[str] = set()
    kept = []
    for table in tables:
        if not table.num_rows:
            continue
        table = table.replace_schema_metadata(None)
        paths = set(pc.unique(table["path"]).to_pylist())
        again = paths & seen  # linear in the table's size: no cost when nothing overlaps
        if again:
            table = table.filter(pc.invert(pc.is_in(table["path"], value_set=pa.array(sorted(again), pa.string()))))
        seen |= paths
        kept.append(table)
    if not kept:
        return tables[0].slice(0, 0).replace_schema_metadata(None)
    return pa.concat_tables(kept, promote_options="default")


# -- files: local (atomic, locked) or an object store (pyarrow.fs) ------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


# Local outputs are read only if they are regular files (never a FIFO or a device) of at most this size.
MAX_OUTPUT_BYTES = 1 << 40


def _regular(path: str) -> None:
    try:
        check_regular_file(path, MAX_OUTPUT_BYTES, what="embeddings file")
    except FileReadError as err:
        raise OutputError(str(err)) from None


class _Files:
    """Where an output lives: a local folder (atomic writes) or a pyarrow file system (an object store)."""

    def __init__(self, target: str | os.PathLike):
        text = os.fspath(target)
        self.local = not _is_uri(text)
        if self.local:
            self.fs = None
            self.root = str(Path(text[len("file://"):] if text.startswith("file://") else text))
        else:
            from pyarrow import fs as pafs

            self.fs, self.root = pafs.FileSystem.from_uri(text)

    def join(self, *names: str) -> str:
        return "/".join([self.root.rstrip("/"), *names]) if not self.local else str(Path(self.root, *names))

    def exists(self, path: str) -> bool:
        if self.local:
            return os.path.exists(path)
        from pyarrow import fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        if self.local:
            return os.path.isdir(path)
        from pyarrow import fs as pafs

        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def list(self, folder: str, prefix: str = "", suffix: str = "") -> list[str]:
        """Visible files directly in ``folder`` (temporary files are hidden: ``.name.XXXX.tmp``), sorted."""
        if self.local:
            if not os.path.isdir(folder):
                return []
            names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
            found = [os.path.join(folder, n) for n in names]
        else:
            from pyarrow import fs as pafs

            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            found = [i.path for i in infos if i.type == pafs.FileType.File]
        return sorted(p for p in found if not os.path.basename(p).startswith(".")
                      and os.path.basename(p).startswith(prefix) and p.endswith(suffix))

    def read_table(self, path: str) -> pa.Table:
        if self.local:
            _regular(path)  # a FIFO named like an output never blocks the read
        return pq.read_table(path, filesystem=self.fs)

    def read_bytes(self, path: str) -> bytes:
        if self.local:
            try:
                return read_bytes_bounded(path, MAX_OUTPUT_BYTES, what="embeddings file")
            except FileReadError as err:
                raise OutputError(str(err)) from None
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_head(self, path: str, size: int) -> bytes:
        """At most the first ``size`` bytes of ``path``."""
        if self.local:
            _regular(path)
            with open(path, "rb") as f:
                return f.read(size)
        with self.fs.open_input_stream(path) as f:
            return f.read(size)

    def write_table(self, path: str, table: pa.Table) -> None:
        if self.local:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        else:  # an object store writes an object whole (or not at all)
            pq.write_table(table, path, filesystem=self.fs)

    def write_bytes(self, path: str, write) -> None:
        """``write(f)`` writes the content to a binary file object."""
        if self.local:
            with atomic_write(path, "wb") as f:
                write(f)
        else:
            with self.fs.open_output_stream(path) as f:
                write(f)

    def delete(self, path: str) -> None:
        try:
            os.unlink(path) if self.local else self.fs.delete_file(path)
        except (OSError, FileNotFoundError):
            pass

    def remove_dir_if_empty(self, folder: str) -> None:
        if self.local:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        elif not self.list(folder):
            try:
                self.fs.delete_dir(folder)
            except OSError:
                pass


# -- writing ---------------------------------------------------------------------------------------------


def part_name() -> str:
    """A part file name no other writer or run will choose: ``part-<UTC time>-<pid>-<random>.parquet``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"part-{stamp}-{os.getpid()}-{secrets.token_hex(6)}.parquet"


def parts_folder(out: str | os.PathLike) -> str:
    """Where the parts of output ``out`` go: ``OUT.parts`` beside it."""
    return f"{os.fspath(out).rstrip('/')}.parts"


def write_part(parts: str | os.PathLike, table: pa.Table, settings: Mapping[str, Any] | None = None) -> str | None:
    """Write ``table`` as a new part in the folder ``parts`` (complete or absent); returns its path (None if empty).

    Safe to call from many processes and machines at once: every call picks
    a new name.
    """
    if table.num_rows == 0:
        return None
    files = _Files(parts)
    if settings:
        table = table.replace_schema_metadata(settings_metadata(settings))
    path = files.join(part_name())
    files.write_table(path, table)
    return path


def remove_output(out: str | os.PathLike) -> None:
    """Everything an earlier embed wrote at a local ``out``: the file, its parts, an .npy's rows, the sidecar;
    for a folder output, its parts. Call it holding the output's lock (``EmbeddingWriter(overwrite=True)``).

    Only the output's own side files go: a ``.jsonl`` output beside an ``.npy``
    one of the same stem is another output, and stays.
    """
    out = Path(out)
    if out.is_dir():
        for part in out.glob("part-*.parquet"):
            part.unlink()
        return
    parts = Path(parts_folder(out))
    if parts.is_dir():
        shutil.rmtree(parts)
    earlier = _earlier_rows_path(_Files(out), out) if out.suffix.lower() == ".npy" else None
    for extra in (_sidecar(str(out)), rows_path(out), earlier):
        if extra is not None and os.path.isfile(extra):
            os.unlink(extra)
    if out.is_file():
        out.unlink()


def output_lock(out: str | os.PathLike, folder: bool | None = None) -> Path:
    """The lock file of a local output: ``.lock`` inside a folder output, ``.NAME.lock`` beside a file."""
    folder = os.path.isdir(out) or os.fspath(out).endswith("/") if folder is None else folder
    return Path(out, ".lock") if folder else Path(out).with_name(f".{Path(out).name}.lock")


def check_not_locked(out: str | os.PathLike) -> None:
    """Raise :class:`OutputLockedError` if another job is writing ``out`` now (a look; takes no lock)."""
    if _is_uri(os.fspath(out)):
        return
    holder = held_by(output_lock(out))
    if holder is not None:
        raise OutputLockedError(f"{out} is being written by another job now ({holder}); "
                                "wait for it to finish, or write to another output", holder)


class EmbeddingWriter:
    """Appends finished files' rows as parts and merges them into the final output.

    ``settings`` (:func:`run_settings`) are written with every part and with the
    output; a local output is locked (``.OUT.lock`` beside it) from the
    writer's creation to :meth:`finalize` or :meth:`close`, so that a second
    job on the same output fails at once with :class:`OutputLockedError`.
    ``overwrite`` removes an earlier output (:func:`remove_output`) once the
    lock is held.
    """

    def __init__(self, out: str | os.PathLike, checkpoint: str | None = None, fmt: str | None = None,
                 part_size: int = 64, settings: Mapping[str, Any] | None = None, lock: bool = True,
                 overwrite: bool = False):
        check_output_name(out)
        self.files = _Files(out)
        self.out = Path(self.files.root) if self.files.local else self.files.root
        self.fmt = format_for(self.out, fmt)
        self.settings = dict(settings or {})
        self.checkpoint = checkpoint or self.settings.get("checkpoint")
        if not self.checkpoint:
            raise ValueError("EmbeddingWriter needs a checkpoint (or settings with one)")
        self.settings.setdefault("checkpoint", self.checkpoint)
        self.settings.setdefault("schema_version", SCHEMA_VERSION)
        # A folder (an existing one, or a name ending in "/"): the parts are the output, never merged.
        self.folder = os.fspath(out).endswith("/") or self.files.is_dir(self.out)
        if self.folder and self.fmt != "parquet":
            raise OutputError(f"{self.out}: a folder output is a folder of Parquet parts, not {self.fmt}")
        self.parts = self.out if self.folder else parts_folder(self.out)
        if self.files.local:
            self.parts = Path(self.parts)
        self.part_size = part_size
        self._buffer: list[FileResult] = []
        self._lock = None
        if lock and self.files.local:
            self._lock = exclusive_lock(output_lock(self.out, self.folder))
            try:
                self._lock.__enter__()
            except LockedError as err:
                self._lock = None
                raise OutputLockedError(
                    f"{self.out} is being written by another job now ({err.holder or 'its lock is held'}); "
                    "wait for it to finish, or write to another output", err.holder) from None
        if overwrite and not self.files.local:
            raise OutputError(f"{self.out}: overwrite removes local outputs only; delete the object-store output "
                              "first, or write to a new one")
        if overwrite:  # only now, holding the lock: never another job's work
            remove_output(self.out)

    # -- context and lock
    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the output's lock (without merging: the parts stay for a re-run)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- what is there
    def part_files(self) -> list[str]:
        return self.files.list(self.parts, prefix="part-", suffix=".parquet")

    def _existing(self, columns: list[str] | None = None) -> list[tuple[str, pa.Table, dict]]:
        """(where, table, settings) of the output and each part; ``columns``: only those (Parquet)."""
        found = []
        if not self.folder and self.files.exists(self.out) and not self.files.is_dir(self.out):
            try:
                table, settings = _read_file(self.files, self.out, self.fmt, columns)
            except Exception as err:
                raise OutputError(f"{self.out}: exists but cannot be read as {self.fmt} ({err})") from None
            found.append((self.out, table, settings))
        for part in self.part_files():
            table, settings = _read_file(self.files, part, "parquet", columns)
            found.append((part, table, settings))
        return found

    def done_paths(self) -> set[str]:
        """Paths already embedded (local ones resolved), in the output or its parts; refuses an output made
        with other settings."""
        done = set()
        for where, table, settings in self._existing(columns=["path", "checkpoint"]):
            checkpoints = set(table["checkpoint"].to_pylist())
            if checkpoints - {self.checkpoint}:
                other = ", ".join(sorted(checkpoints - {self.checkpoint}))
                raise OutputError(
                    f"{self.out} holds embeddings from another checkpoint ({other}); "
                    f"this run uses {self.checkpoint}. Write to a new output instead."
                )
            for key in _ROW_SETTINGS:
                if key in settings and key in self.settings and settings[key] != self.settings[key]:
                    raise OutputError(
                        f"{self.out} was made with {key} = {settings[key]} ({where}); this run uses "
                        f"{self.settings[key]}. Write to a new output, or use the same settings.")
            # Outputs of earlier versions hold paths as they were spelled: compare resolved paths.
            done.update(p if _is_uri(p) else os.path.realpath(p) for p in pc.unique(table["path"]).to_pylist())
        return done

    def todo(self, paths: Iterable[str]) -> list[str]:
        """``paths`` (resolved) without those already embedded (:meth:`done_paths`), in their order."""
        done = self.done_paths()
        return [p for p in paths if text_path(p) not in done]

    # -- adding
    def add(self, result: FileResult) -> None:
        if result.ok and result.embeddings:
            self._buffer.append(result)
            if len(self._buffer) >= self.part_size:
                self.flush()

    def flush(self) -> None:
        """Write buffered files as one new part (atomically)."""
        if not self._buffer:
            return
        write_part(self.parts, rows_table(self._buffer, self.checkpoint, self.settings), self.settings)
        self._buffer = []

    def finalize(self) -> int:
        """Merge the existing output and all parts into ``out``; returns the number of rows.

        Only the parts read are removed afterwards (a part that appears
        meanwhile stays for the next run), and the lock is released.
        """
        try:
            self.flush()
            if self.folder:
                return sum(pq.ParquetFile(p, filesystem=self.files.fs).metadata.num_rows for p in self.part_files())
            existing = self._existing()
            tables = [t for _, t, _ in existing if t.num_rows]
            if not tables:
                return 0
            table = _sorted(_concat_unique(tables))
            self.settings.setdefault("embedding_dim", table["embedding"].type.list_size)
            # "created" says when the oldest vector was made: a resumed run's files were embedded before it began
            for _, _, settings in existing:
                if settings.get("created"):
                    self.settings["created"] = _earliest(self.settings.get("created"), settings["created"])
            self._write_output(table)
            for where, _, _ in existing:
                if where != self.out:
                    self.files.delete(where)
            self.files.remove_dir_if_empty(self.parts)
            return table.num_rows
        finally:
            self.close()

    def _write_output(self, table: pa.Table) -> None:
        if self.fmt == "parquet":
            self.files.write_table(self.out, table.replace_schema_metadata(settings_metadata(self.settings)))
            return
        sidecar = json.dumps({**self.settings, "columns": {
            name: str(table.schema.field(name).type) for name in table.column_names}}, indent=1) + "\n"
        if self.fmt == "jsonl":
            self.files.write_bytes(self.out, lambda f: f.write(_jsonl(table, with_embedding=True).encode()))
        else:
            vectors = _matrix(table)
            earlier = _earlier_rows_path(self.files, self.out)  # this output's rows, as an earlier release named them
            self.files.write_bytes(rows_path(self.out), lambda f: f.write(_jsonl(table, False).encode()))
            self.files.write_bytes(self.out, lambda f: np.save(f, vectors))
            if earlier is not None:
                self.files.delete(earlier)  # replaced by OUT.rows.jsonl (checked above to be this output's)
        if self.files.local:
            write_text_atomic(_sidecar(self.out), sidecar)
        else:
            self.files.write_bytes(_sidecar(self.out), lambda f: f.write(sidecar.encode()))


def _jsonl(table: pa.Table, with_embedding: bool) -> str:
    plain = table.drop_columns(["embedding"]).to_pylist()
    if with_embedding:
        for row, vector in zip(plain, _matrix(table).tolist()):
            row["embedding"] = vector
    return "".join(json.dumps(row) + "\n" for row in plain)
