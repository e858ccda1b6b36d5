"""The rows of an output: the Arrow schema (version 2), tables of rows, and the upgrade of version 1.

The row schema (docs/output-format.md) is one row per vector:

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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import AudioclipError
from .settings import settings_metadata

if TYPE_CHECKING:  # the model's results; imported only for the annotations (reading an output needs no torch)
    from ..inference import FileResult

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


class OutputError(AudioclipError, ValueError):
    """The output cannot be written or resumed (e.g. it holds another checkpoint's vectors)."""


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
    return build_table(columns, np.stack(vectors) if vectors else None, settings)


def build_table(columns: dict[str, list], vectors: np.ndarray | None, settings=None) -> pa.Table:
    """A table in the current schema: ``columns`` (every column but ``embedding``) and ``(rows, dim)`` vectors."""
    dim = int(vectors.shape[1]) if vectors is not None else int((settings or {}).get("embedding_dim", 0))
    target = schema(dim, settings)
    arrays = [pa.array(columns[name], type=target.field(name).type) for name in target.names[:-1]]
    flat = vectors.astype(np.float32, copy=False).reshape(-1) if vectors is not None else np.zeros(0, np.float32)
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim))
    return pa.Table.from_arrays(arrays, schema=target)


def sorted_rows(table: pa.Table) -> pa.Table:
    """``table`` in the output's order: by path, then image, frame, window, pooled, then start."""
    if table.num_rows < 2:
        return table
    rank = pa.array([_KIND_ORDER.get(k, 9) for k in table["kind"].to_pylist()], type=pa.int8())
    keys = pa.table({"path": table["path"], "rank": rank, "start": pc.fill_null(table["start_s"], -1.0)})
    order = pc.sort_indices(keys, sort_keys=[("path", "ascending"), ("rank", "ascending"), ("start", "ascending")])
    return table.take(order)


def matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as one ``(rows, dim)`` float32 array."""
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


def concat_unique(tables: list[pa.Table]) -> pa.Table:
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
    vectors = matrix(table) if table.num_rows else None
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
    return build_table(columns, kept, settings)
