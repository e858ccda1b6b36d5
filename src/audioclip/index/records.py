"""What an index holds: the columns of its rows, the record of an indexed file, the names of its values.

One row per embedding: an audio window, an image or a video frame (a
recording's pooled vector is the renormalised mean of its windows, so it is
not stored: search ranks a recording by its best window), with the identity of
the file it came from repeated on every row (``ROW_FIELDS``). Keeping a file's
identity on its own rows is what makes a write of a file all-or-nothing: a
file is indexed exactly when its rows are there, and rows arrive in one atomic
commit per batch of files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

__all__ = [
    "FILE_FIELDS",
    "FailureRecord",
    "FileRecord",
    "LATER_FIELDS",
    "LEGACY_NAMES",
    "Modality",
    "ROW_FIELDS",
    "RowKind",
    "Source",
    "as_int64",
    "file_id_of",
    "row_schema",
    "stat_identity",
    "with_current_columns",
]

# The file a row came from, what its vector embeds, and what part of the file it is.
Source = Literal["audio", "image", "video"]
Modality = Literal["audio", "image"]
RowKind = Literal["window", "image", "frame"]  # a recording's "pooled" vector is not stored
SOURCES: tuple[Source, ...] = ("audio", "image", "video")
ROW_KINDS: tuple[RowKind, ...] = ("window", "image", "frame")

# Name, Arrow type of each row's columns; "vector" (fixed-size float32 list) comes last.
ROW_FIELDS: list[tuple[str, pa.DataType]] = [
    ("file_id", pa.int64()),  # file_id_of(path): the id the web page uses
    ("path", pa.string()),  # absolute path of the file
    ("source", pa.string()),  # Source: the file
    ("modality", pa.string()),  # Modality: the embedding
    ("kind", pa.string()),  # RowKind
    ("start_s", pa.float64()),  # seconds; null for images and frames (as in embed outputs)
    ("end_s", pa.float64()),
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
# Columns an older table holds under another name (SQL keywords there): read under the current name; such a
# table keeps its names on disk and is written under them.
LEGACY_NAMES = {"start": "start_s", "end": "end_s"}


def row_schema(dim: int) -> pa.Schema:
    return pa.schema([*ROW_FIELDS, ("vector", pa.list_(pa.float32(), dim))])


def with_current_columns(data: pa.Table) -> pa.Table:
    """``data`` (rows as a table stored them) under the current column names (``LEGACY_NAMES``), with the
    ``LATER_FIELDS`` it lacks added as nulls, before the vector column if any."""
    if any(old in data.schema.names for old in LEGACY_NAMES):
        data = data.rename_columns([LEGACY_NAMES.get(n, n) for n in data.schema.names])
    for name, kind in LATER_FIELDS:
        if name not in data.schema.names:
            column = pa.nulls(data.num_rows, kind)
            at = data.schema.get_field_index("vector")
            data = data.add_column(at, name, column) if at >= 0 else data.append_column(name, column)
    return data


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
    source: Source
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
