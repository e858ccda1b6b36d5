"""Writing outputs as a job goes: parts, a lock per output, resuming, and the final merge.

Finished files are written, a part at a time, to
``OUT.parts/part-<time>-<random>.parquet`` (each part complete or absent; names
that two writers or two runs cannot share), and a final step merges everything
into ``OUT``. A killed job therefore loses only the files of the part it was
filling, and a re-run skips every file already in ``OUT`` or in the parts,
provided it was made with the same checkpoint and windows. A file found in two
parts (two runs that overlapped) is kept once. A local output is locked while
it is written, so that a second job on it fails at once.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io import LockedError, exclusive_lock, held_by, write_text_atomic
from .files import (Files, check_output_name, earlier_rows_path, format_for, is_remote, part_name, parts_folder,
                    rows_path, sidecar_path)
from .read import read_file
from .rows import OutputError, concat_unique, matrix, rows_table, sorted_rows, text_path
from .settings import ROW_SETTINGS, SCHEMA_VERSION, earliest, settings_metadata

if TYPE_CHECKING:  # the model's results; imported only for the annotations (writing an output needs no torch)
    from ..inference import FileResult


class OutputLockedError(LockedError, OutputError):  # LockedError first: its __init__ keeps ``holder``
    """Another job is writing the output (``holder`` names it): the command line exits 2."""


def write_part(parts: str | os.PathLike, table: pa.Table, settings: Mapping[str, Any] | None = None) -> str | None:
    """Write ``table`` as a new part in the folder ``parts`` (complete or absent); returns its path (None if empty).

    Safe to call from many processes and machines at once: every call picks
    a new name.
    """
    if table.num_rows == 0:
        return None
    files = Files(parts)
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
    earlier = earlier_rows_path(Files(out), out) if out.suffix.lower() == ".npy" else None
    for extra in (sidecar_path(out), rows_path(out), earlier):
        if extra is not None and os.path.isfile(extra):
            os.unlink(extra)
    if out.is_file():
        out.unlink()


def output_lock(out: str | os.PathLike, folder: bool | None = None) -> Path:
    """The lock file of a local output: ``.lock`` inside a folder output, ``.NAME.lock`` beside a file."""
    folder = os.path.isdir(out) or os.fspath(out).endswith("/") if folder is None else folder
    return Path(out, ".lock") if folder else Path(out).with_name(f".{Path(out).name}.lock")


def _locked(out, holder: str | None) -> OutputLockedError:
    return OutputLockedError(f"{out} is being written by another job now ({holder or 'its lock is held'}); "
                             "wait for it to finish, or write to another output", holder)


def check_not_locked(out: str | os.PathLike) -> None:
    """Raise :class:`OutputLockedError` if another job is writing ``out`` now (a look; takes no lock)."""
    if is_remote(os.fspath(out)):
        return
    holder = held_by(output_lock(out))
    if holder is not None:
        raise _locked(out, holder)


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
        self.files = Files(out)
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
                raise _locked(self.out, err.holder) from None
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
                table, settings = read_file(self.files, self.out, self.fmt, columns)
            except Exception as err:
                raise OutputError(f"{self.out}: exists but cannot be read as {self.fmt} ({err})") from None
            found.append((self.out, table, settings))
        for part in self.part_files():
            table, settings = read_file(self.files, part, "parquet", columns)
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
            for key in ROW_SETTINGS:
                if key in settings and key in self.settings and settings[key] != self.settings[key]:
                    raise OutputError(
                        f"{self.out} was made with {key} = {settings[key]} ({where}); this run uses "
                        f"{self.settings[key]}. Write to a new output, or use the same settings.")
            # Outputs of earlier versions hold paths as they were spelled: compare resolved paths.
            done.update(p if is_remote(p) else os.path.realpath(p) for p in pc.unique(table["path"]).to_pylist())
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
            table = sorted_rows(concat_unique(tables))
            self.settings.setdefault("embedding_dim", table["embedding"].type.list_size)
            # "created" says when the oldest vector was made: a resumed run's files were embedded before it began
            for _, _, settings in existing:
                if settings.get("created"):
                    self.settings["created"] = earliest(self.settings.get("created"), settings["created"])
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
            vectors = matrix(table)
            earlier = earlier_rows_path(self.files, self.out)  # this output's rows, as an earlier release named them
            self.files.write_bytes(rows_path(self.out), lambda f: f.write(_jsonl(table, False).encode()))
            self.files.write_bytes(self.out, lambda f: np.save(f, vectors))
            if earlier is not None:
                self.files.delete(earlier)  # replaced by OUT.rows.jsonl (checked above to be this output's)
        if self.files.local:
            write_text_atomic(sidecar_path(self.out), sidecar)
        else:
            self.files.write_bytes(sidecar_path(self.out), lambda f: f.write(sidecar.encode()))


def _jsonl(table: pa.Table, with_embedding: bool) -> str:
    plain = table.drop_columns(["embedding"]).to_pylist()
    if with_embedding:
        for row, vector in zip(plain, matrix(table).tolist()):
            row["embedding"] = vector
    return "".join(json.dumps(row) + "\n" for row in plain)
