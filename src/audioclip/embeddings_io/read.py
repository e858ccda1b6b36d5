"""Reading outputs back: :func:`read_embeddings` for every format, folders of parts and earlier versions."""

from __future__ import annotations

import io
import json
import os
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .files import Files, earlier_rows_path, format_for, rows_path, sidecar_path
from .rows import COLUMNS, OutputError, build_table, concat_unique, matrix, sorted_rows, upgrade
from .settings import earliest, settings_from_metadata, settings_metadata, typed


class Embeddings(NamedTuple):
    """An output read back: the rows (an Arrow table in the current schema) and the run's settings.

    Unpacks as ``table, settings = audioclip.read_embeddings(path)``.
    """

    table: pa.Table
    settings: dict

    def matrix(self) -> np.ndarray:
        """The vectors as one ``(rows, dim)`` float32 array, row ``i`` for ``table`` row ``i``."""
        return matrix(self.table)

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
    files = Files(path)
    if files.is_dir(files.root):
        return _read_folder(files, files.root)
    table, settings = read_file(files, files.root, format_for(files.root, fmt))
    return Embeddings(table, settings)


def _read_folder(files: Files, folder: str) -> Embeddings:
    parts = files.list(folder, suffix=".parquet")
    tables, settings = [], {}
    for part in parts:
        table, part_settings = read_file(files, part, "parquet")
        tables.append(table)
        settings = settings or dict(part_settings)
        if earliest(settings.get("created"), part_settings.get("created")):
            settings["created"] = earliest(settings.get("created"), part_settings.get("created"))
    if not tables:
        raise OutputError(f"{folder}: no Parquet files in this folder")
    table = sorted_rows(concat_unique(tables))
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


def read_file(files: Files, path: str, fmt: str, columns: list[str] | None = None) -> tuple[pa.Table, dict]:
    """``(table, settings)`` of one output file in the current schema.

    With ``columns`` (Parquet only) a quick look: those columns as stored, not upgraded.
    """
    if fmt == "parquet" and columns is not None:
        raw = files.read_table(path, columns)
        return raw, settings_from_metadata(raw.schema.metadata)
    if fmt == "parquet":
        raw = files.read_table(path)
        settings = settings_from_metadata(raw.schema.metadata)
        if "start" in raw.column_names and "start_s" not in raw.column_names:
            settings.setdefault("schema_version", 1)
        if not settings.get("checkpoint") and raw.num_rows:
            settings["checkpoint"] = raw["checkpoint"][0].as_py()
        return upgrade(raw, settings).replace_schema_metadata(settings_metadata(settings)), settings
    sidecar = sidecar_path(path)
    settings = {k: typed(k, v) for k, v in json.loads(files.read_bytes(sidecar)).items() if k != "columns"} \
        if files.exists(sidecar) else {"schema_version": 1}
    if fmt == "jsonl":
        rows = _jsonl_rows(files.read_bytes(path), path)
        if any(not isinstance(row.get("embedding"), list) for row in rows):
            raise OutputError(f"{path}: a row without an embedding: not an embeddings output")
        vectors = np.asarray([row.pop("embedding") for row in rows], dtype=np.float32) if rows else None
    else:
        vectors = np.load(io.BytesIO(files.read_bytes(path)))
        index = rows_path(path)
        if not files.exists(index):
            index = earlier_rows_path(files, path)  # written by an earlier release: OUT with .jsonl
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
    table = build_table({name: columns.get(name, [None] * len(rows)) for name in COLUMNS if name != "embedding"},
                        vectors if rows else None, settings)
    return table, settings
