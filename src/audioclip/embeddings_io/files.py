"""Where an output's files are: their names, and one file layer for local folders and object stores.

Every side file of an output is named from the output's whole name plus a
suffix no output is given (:data:`SIDE_SUFFIXES`: ``OUT.meta.json``, an
``.npy``'s rows ``OUT.rows.jsonl``, ``OUT.parts``, ``.OUT.lock``), so one
output never writes or removes another's file. Outputs may be object-store
URIs (``s3://bucket/emb.parquet``, through :mod:`pyarrow.fs`), where each
object is written whole by the store; local files go through
:mod:`audioclip.io`'s atomic writes and bounded reads.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import FileReadError, atomic_path, atomic_write, check_regular_file, read_bytes_bounded
from ..util import is_uri
from .rows import OutputError

FORMATS = ("parquet", "npy", "jsonl")
#: an ``.npy`` output's rows without vectors: ``OUT.rows.jsonl`` (``lib.npy.rows.jsonl``)
ROWS_SUFFIX = ".rows.jsonl"
#: the settings of an ``.npy`` or ``.jsonl`` output: ``OUT.meta.json``
META_SUFFIX = ".meta.json"
#: what side files end with (and the lock, ``.OUT.lock``): an output name ending so is refused
SIDE_SUFFIXES = (ROWS_SUFFIX, META_SUFFIX, ".parts", ".lock")
# Local outputs are read only if they are regular files (never a FIFO or a device) of at most this size.
MAX_OUTPUT_BYTES = 1 << 40


def is_remote(path: str) -> bool:
    """Whether ``path`` names an object in a store (``s3://...``); ``file://`` names a local file."""
    return is_uri(path) and not path.startswith("file://")


def format_for(path: str | os.PathLike, requested: str | None = None) -> str:
    """The output format: as requested, else from the file suffix, else Parquet."""
    if requested:
        if requested not in FORMATS:
            raise OutputError(f"unknown output format {requested!r}; choose from {', '.join(FORMATS)}")
        return requested
    suffix = Path(str(path)).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "parquet"


def check_output_name(out: str | os.PathLike) -> None:
    """An :class:`OutputError` if ``out`` is named like another output's side file (:data:`SIDE_SUFFIXES`)."""
    name = os.fspath(out).rstrip("/")
    for suffix in SIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            raise OutputError(f"{out}: names ending in {suffix} are kept for the side files of outputs "
                              f"({', '.join(SIDE_SUFFIXES)}); choose another name")


def rows_path(npy: str | os.PathLike) -> str:
    """Where the rows (without vectors) of the ``.npy`` output ``npy`` are: ``NPY.rows.jsonl``."""
    return f"{os.fspath(npy)}{ROWS_SUFFIX}"


def sidecar_path(path: str | os.PathLike) -> str:
    """Where the settings of the ``.npy`` or ``.jsonl`` output ``path`` are: ``OUT.meta.json``."""
    return f"{os.fspath(path)}{META_SUFFIX}"


def parts_folder(out: str | os.PathLike) -> str:
    """Where the parts of output ``out`` go: ``OUT.parts`` beside it."""
    return f"{os.fspath(out).rstrip('/')}.parts"


def part_name() -> str:
    """A part file name no other writer or run will choose: ``part-<UTC time>-<pid>-<random>.parquet``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"part-{stamp}-{os.getpid()}-{secrets.token_hex(6)}.parquet"


def earlier_rows_path(files: Files, npy: str | os.PathLike) -> str | None:
    """The rows of ``npy`` as earlier releases named them (``lib.npy`` -> ``lib.jsonl``), if that file is them.

    That name is also the name of a ``.jsonl`` output: it is taken for the
    rows only when it has no sidecar of its own (``lib.jsonl.meta.json``) and
    its first row holds no ``embedding`` (a ``.jsonl`` output's rows hold
    their vectors; an ``.npy``'s rows never did).
    """
    npy = os.fspath(npy)
    stem, suffix = os.path.splitext(npy)
    earlier = stem + ".jsonl"
    if suffix.lower() != ".npy" or not files.exists(earlier) or files.exists(sidecar_path(earlier)):
        return None
    try:
        head = files.read_head(earlier, 1 << 20)
        first = next((line for line in head.split(b"\n") if line.strip()), b"")
        row = json.loads(first) if first else {}
    except (OSError, ValueError):
        return None
    return earlier if isinstance(row, dict) and "embedding" not in row else None


def check_regular(path: str) -> None:
    """An :class:`OutputError` unless the local ``path`` is a regular file of at most :data:`MAX_OUTPUT_BYTES`."""
    try:
        check_regular_file(path, MAX_OUTPUT_BYTES, what="embeddings file")
    except FileReadError as err:
        raise OutputError(str(err)) from None


class Files:
    """Where an output lives: a local folder (atomic writes) or a pyarrow file system (an object store)."""

    def __init__(self, target: str | os.PathLike):
        text = os.fspath(target)
        self.local = not is_remote(text)
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

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """The Parquet file ``path`` (only ``columns``, if given)."""
        if self.local:
            check_regular(path)  # a FIFO named like an output never blocks the read
        return pq.read_table(path, filesystem=self.fs, columns=columns)

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
            check_regular(path)
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
