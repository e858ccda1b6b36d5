"""Embedding outputs people can query: Parquet (default), .npy + its rows (OUT.rows.jsonl), or JSON lines.

One job per module:

- :mod:`~audioclip.embeddings_io.settings`: the run's settings stored with an
  output (checkpoint and its sha256, architecture, window, hop, sample rate,
  audio mode, package version, creation time, ...), as Parquet key-value
  metadata (keys ``audioclip.*``) or, for ``.npy``/``.jsonl`` outputs, a
  sidecar ``OUT.meta.json``.
- :mod:`~audioclip.embeddings_io.rows`: the row schema (version 2,
  docs/output-format.md: one row per vector, no column an SQL keyword), the
  tables of rows, and the upgrade of the version-1 files of earlier releases.
- :mod:`~audioclip.embeddings_io.files`: the names of an output's side files
  and one file layer for local folders (atomic writes, bounded reads) and
  object stores (``s3://...``, through :mod:`pyarrow.fs`).
- :mod:`~audioclip.embeddings_io.read`: :func:`read_embeddings`, for every
  format, folders of Parquet parts and earlier versions, into an
  :class:`Embeddings` (the table and the settings).
- :mod:`~audioclip.embeddings_io.write`: the :class:`EmbeddingWriter` that
  long jobs write through: parts as they go, a lock per local output, resuming
  where a killed job stopped, and the final merge into ``OUT``.
"""

from __future__ import annotations

from .files import check_output_name, format_for, rows_path
from .read import Embeddings, read_embeddings
from .rows import COLUMNS, OutputError, rows_table, schema, text_path, upgrade
from .settings import SCHEMA_VERSION, SETTINGS, run_settings
from .write import EmbeddingWriter, OutputLockedError, check_not_locked, output_lock, remove_output, write_part

# names of the single module this package was, kept importable from here
from .files import FORMATS, MAX_OUTPUT_BYTES, META_SUFFIX, ROWS_SUFFIX, SIDE_SUFFIXES  # noqa: F401
from .files import part_name, parts_folder  # noqa: F401
from .settings import METADATA_PREFIX, settings_from_metadata, settings_metadata  # noqa: F401

__all__ = [
    "COLUMNS",
    "FORMATS",
    "SCHEMA_VERSION",
    "EmbeddingWriter",
    "Embeddings",
    "OutputError",
    "OutputLockedError",
    "SETTINGS",
    "check_not_locked",
    "check_output_name",
    "format_for",
    "output_lock",
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
