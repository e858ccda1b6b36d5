"""The files of the ANN index beside a store (``ann.py``): their names and formats, checked before they are read.

A build writes, in the ``ann/`` folder: ``state.json`` (``checked_state``),
``g{G}.rows.npy`` (the row map, ``ROW_DTYPE``; ``read_rows``), and the FAISS
files ``g{G}.index`` and ``g{G}.ivfdata`` (no larger than ``index_bytes``).
Anything else found there (a tampered file, a FIFO) is :class:`Unusable`:
searches then scan the store exactly.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..io import check_regular_file
from .records import ROW_KINDS as KINDS
from .records import SOURCES

__all__ = ["KINDS", "MAX_STATE_BYTES", "ROW_DTYPE", "SOURCES", "STATE", "Unusable", "checked_state", "fsync",
           "index_bytes", "quiet_stdout", "read_rows", "row_meta", "vectors_of"]

# The field names are part of the file format: "start" is the row's ``start_s``.
ROW_DTYPE = np.dtype([("file_id", "<i8"), ("start", "<f8"), ("kind", "i1"), ("source", "i1")])
STATE = "state.json"
MAX_STATE_BYTES = 64 << 20  # state.json: ~30 bytes per dirty file, so about 2 million of them
MAX_DIM = 8192  # the widest vectors an index may claim (AudioCLIP's are 1024-d)
MAX_LISTS = 1 << 24


class Unusable(Exception):
    """A sidecar file is not what a build writes; the message says which and why."""


def checked_state(state, where: Path) -> dict:
    """``state`` if it has the fields and types a build writes (``state.json``), else :class:`Unusable`."""
    if not isinstance(state, dict):
        raise Unusable(f"{where}: not a JSON object ({type(state).__name__})")

    def integer(key, low, high, optional=False):
        value = state.get(key)
        if value is None and optional:
            return
        if type(value) is not int or not low <= value <= high:
            raise Unusable(f"{where}: {key!r} is {value!r}, not a whole number from {low} to {high}")

    if "generation" not in state:  # a sidecar that is only a list of dirty files: nothing to search
        return state
    integer("generation", 1, 2**62)
    integer("vectors", 0, 2**40)
    integer("lists", 1, MAX_LISTS)
    integer("dim", 1, MAX_DIM)
    integer("seq", 0, 2**62, optional=True)
    integer("table_version", 0, 2**62, optional=True)
    dirty = state.get("dirty", {})
    if not isinstance(dirty, dict):
        raise Unusable(f"{where}: 'dirty' is a {type(dirty).__name__}, not an object")
    for key, value in dirty.items():
        try:
            ok = -2**63 <= int(key) < 2**63 and type(value) is int
        except ValueError:
            ok = False
        if not ok:
            raise Unusable(f"{where}: 'dirty' holds {key!r}: {value!r}, not a file id and a number")
    if not isinstance(state.get("data_file"), (str, type(None))):
        raise Unusable(f"{where}: 'data_file' is not a path")
    return state


def read_rows(path: Path, vectors: int) -> np.ndarray:
    """The row map ``g{G}.rows.npy``: exactly ``vectors`` rows of ``ROW_DTYPE``, checked before reading.

    Read through the header (``numpy.lib.format``), never ``np.load``: the
    dtype, order and shape are checked against what a build writes and the
    shape against the file's size before anything is allocated, and nothing
    is ever unpickled.
    """
    from numpy.lib import format as npy

    st = check_regular_file(path, 128 + vectors * ROW_DTYPE.itemsize + 65_536, what="ANN row map")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not os.path.samestat(os.fstat(f.fileno()), st):
            raise Unusable(f"{path}: replaced while being read")
        try:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"format version {version}")
        except ValueError as err:
            raise Unusable(f"{path}: not a row map ({err})") from None
        if dtype != ROW_DTYPE or fortran or shape != (vectors,):
            raise Unusable(f"{path}: holds {dtype} {shape}, not the {vectors} rows of the index")
        if st.st_size != f.tell() + vectors * ROW_DTYPE.itemsize:
            raise Unusable(f"{path}: {st.st_size} bytes, not the size of {vectors} rows")
        meta = np.fromfile(f, dtype=ROW_DTYPE, count=vectors)
    if len(meta) != vectors:
        raise Unusable(f"{path}: truncated")
    for field, names in (("kind", KINDS), ("source", SOURCES)):
        if len(meta) and not (0 <= meta[field].min() and meta[field].max() < len(names)):
            raise Unusable(f"{path}: a row's {field} code is out of range")
    return meta


def index_bytes(state: dict) -> int:
    """The most bytes a generation's FAISS file (lists, ids and centroids, with room for headers) can take."""
    dim, lists, vectors = state["dim"], state["lists"], state["vectors"]
    return vectors * (4 * dim + 8) + lists * (4 * dim + 64) + (1 << 20)


def vectors_of(batch, dim: int) -> np.ndarray:
    column = batch.column(batch.schema.get_field_index("vector"))
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.values if column.offset == 0 else column.flatten()
    return np.ascontiguousarray(values.to_numpy(zero_copy_only=False).reshape(-1, dim), dtype=np.float32)


def codes(column, names: tuple[str, ...]) -> np.ndarray:
    import pyarrow.compute as pc

    codes = pc.fill_null(pc.index_in(column, value_set=pa.array(names)), 0)
    return codes.to_numpy(zero_copy_only=False).astype(np.int8)


def row_meta(batch) -> np.ndarray:
    meta = np.zeros(batch.num_rows, ROW_DTYPE)
    meta["file_id"] = batch.column(batch.schema.get_field_index("file_id")).to_numpy()
    names = batch.schema.names
    start = batch.column(names.index("start_s" if "start_s" in names else "start"))  # an older table's name
    meta["start"] = np.nan_to_num(start.to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
    meta["kind"] = codes(batch.column(batch.schema.get_field_index("kind")), KINDS)
    meta["source"] = codes(batch.column(batch.schema.get_field_index("source")), SOURCES)
    return meta


_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_stdout():
    """Silence what C code prints on file descriptor 1 meanwhile (Python's own output is flushed first)."""
    import sys

    with _STDOUT_LOCK:
        try:
            sys.stdout.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            saved = os.dup(1)
        except OSError:
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
