"""Embedding files on disk: Parquet (default), or .npy + .jsonl index, or JSON lines.

Long jobs write as they go: finished files are appended, a part at a time,
to ``OUT.parts/`` (each part written atomically), and a final step merges
everything into ``OUT``. A killed job therefore loses only the files of the
part it was filling, and a re-run skips every file already in ``OUT`` or in
the parts, provided it was embedded with the same checkpoint.

Row schema: ``path, source, modality, kind, start, end, checkpoint, embedding``
(see :class:`audioclip.inference.Embedding`); rows are sorted by path, so
the outputs of several shards concatenate into the output of one run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .inference import FileResult
from .io import atomic_path, atomic_write

FORMATS = ("parquet", "npy", "jsonl")
_KIND_ORDER = {"image": 0, "frame": 1, "window": 2, "pooled": 3}


class OutputError(ValueError):
    """The output cannot be written or resumed (e.g. it holds another checkpoint's vectors)."""


def format_for(path: str | os.PathLike, requested: str | None = None) -> str:
    """The output format: as requested, else from the file suffix, else Parquet."""
    if requested:
        if requested not in FORMATS:
            raise OutputError(f"unknown output format {requested!r}; choose from {', '.join(FORMATS)}")
        return requested
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "parquet"


def rows_from_results(results: Iterable[FileResult], checkpoint: str) -> list[dict]:
    rows = []
    for result in results:
        for e in result.embeddings:
            rows.append(
                {
                    "path": result.path,
                    "source": result.source,
                    "modality": e.modality,
                    "kind": e.kind,
                    "start": e.start,
                    "end": e.end,
                    "checkpoint": checkpoint,
                    "embedding": e.vector.numpy().astype(np.float32),
                }
            )
    return rows


def _schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("path", pa.string()),
            ("source", pa.string()),
            ("modality", pa.string()),
            ("kind", pa.string()),
            ("start", pa.float64()),
            ("end", pa.float64()),
            ("checkpoint", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


def _table(rows: list[dict]) -> pa.Table:
    dim = len(rows[0]["embedding"]) if rows else 0
    columns = {name: [r[name] for r in rows] for name in _schema(dim).names}
    columns["embedding"] = [r["embedding"].tolist() for r in rows]
    return pa.Table.from_pydict(columns, schema=_schema(dim))


def _sorted(table: pa.Table) -> pa.Table:
    order = sorted(
        range(table.num_rows),
        key=lambda i: (
            table["path"][i].as_py(),
            _KIND_ORDER.get(table["kind"][i].as_py(), 9),
            table["start"][i].as_py() if table["start"][i].is_valid else -1.0,
        ),
    )
    return table.take(pa.array(order, type=pa.int64()))


def read_embeddings(path: str | os.PathLike, fmt: str | None = None) -> pa.Table:
    """Read an output written by :class:`EmbeddingWriter` back as an Arrow table."""
    path = Path(path)
    fmt = format_for(path, fmt)
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
        return _table(rows)
    vectors = np.load(path)
    rows = [json.loads(line) for line in _index_path(path).read_text().splitlines() if line.strip()]
    for row, vector in zip(rows, vectors):
        row["embedding"] = vector
    return _table(rows)


def _index_path(npy: Path) -> Path:
    return npy.with_suffix(".jsonl")


class EmbeddingWriter:
    """Appends finished files' rows as parts and merges them into the final output."""

    def __init__(self, out: str | os.PathLike, checkpoint: str, fmt: str | None = None, part_size: int = 64):
        self.out = Path(out)
        self.fmt = format_for(self.out, fmt)
        self.checkpoint = checkpoint
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.part_size = part_size
        self._buffer: list[FileResult] = []
        self._next_part = len(self._part_files())

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def _existing(self) -> list[pa.Table]:
        tables = []
        if self.out.exists():
            try:
                tables.append(read_embeddings(self.out, self.fmt))
            except Exception as err:
                raise OutputError(f"{self.out}: exists but cannot be read as {self.fmt} ({err})") from None
        tables += [pq.read_table(p) for p in self._part_files()]
        return tables

    def done_paths(self) -> set[str]:
        """Paths already embedded, in the output or its parts; refuses another checkpoint's output."""
        done = set()
        for table in self._existing():
            checkpoints = set(table["checkpoint"].to_pylist())
            if checkpoints - {self.checkpoint}:
                other = ", ".join(sorted(checkpoints - {self.checkpoint}))
                raise OutputError(
                    f"{self.out} holds embeddings from another checkpoint ({other}); "
                    f"this run uses {self.checkpoint}. Write to a new output instead."
                )
            done.update(table["path"].to_pylist())
        return done

    def add(self, result: FileResult) -> None:
        if result.ok and result.embeddings:
            self._buffer.append(result)
            if len(self._buffer) >= self.part_size:
                self.flush()

    def flush(self) -> None:
        """Write buffered files as one new part (atomically)."""
        if not self._buffer:
            return
        table = _table(rows_from_results(self._buffer, self.checkpoint))
        part = self.parts / f"part-{self._next_part:06d}.parquet"
        with atomic_path(part) as tmp:
            pq.write_table(table, tmp)
        self._next_part += 1
        self._buffer = []

    def finalize(self) -> int:
        """Merge the existing output and all parts into ``out``; returns the number of rows."""
        self.flush()
        tables = [t for t in self._existing() if t.num_rows]
        if not tables:
            return 0
        table = _sorted(pa.concat_tables(tables, promote_options="default"))
        if self.fmt == "parquet":
            with atomic_path(self.out) as tmp:
                pq.write_table(table, tmp)
        elif self.fmt == "jsonl":
            with atomic_write(self.out, "w") as f:
                f.write(_jsonl(table, with_embedding=True))
        else:
            vectors = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
            with atomic_write(_index_path(self.out), "w") as f:
                f.write(_jsonl(table, False))
            with atomic_write(self.out, "wb") as f:  # a file object: np.save would append ".npy" to a temp name
                np.save(f, vectors)
        shutil.rmtree(self.parts, ignore_errors=True)
        self._next_part = 0
        return table.num_rows


def _jsonl(table: pa.Table, with_embedding: bool) -> str:
    lines = []
    for row in table.to_pylist():
        if not with_embedding:
            row.pop("embedding")
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"
