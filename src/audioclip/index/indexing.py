"""Carrying out an indexing run: :func:`apply_plan` writes what :func:`plan.plan_update` decided.

:func:`update_index` is the two together: walk the paths, plan (see
``plan.py`` for how a file's identity and changes are decided), apply.

**Cost.** The plan needs no model: a run with nothing to embed never loads
it (``load_model`` is called only when a file must be embedded). Touched
files and filled-in inodes are written with one ``update_files`` call (one
commit), copies in batches.

**Crash safety** rests on two facts: every store write is one atomic commit,
and a file's identity (size, mtime, hash, dev, inode) is stored on its own
vector rows. So a file is either fully in the index, with the identity it had
when embedded, or absent. Finished files are committed in batches
(``flush_every`` files or ``flush_seconds``, whichever comes first), a changed
file's old rows are deleted just before its new ones are added. Killed between
the two commits, the file is merely absent and the next run embeds it again;
killed at any other point, the next run sees the committed files as unchanged
and goes on with the rest. A file is never added twice because a run only adds
files it found absent or changed, and one writer at a time holds the index's
lock.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import pyarrow as pa

from ..media.files import expand_paths
from ..util import is_uri
from .base import VectorStore
from .plan import FileToIndex, Scope, UpdatePlan, content_hash, plan_update
from .records import FailureRecord, FileRecord, Modality, RowKind, Source, file_id_of, row_schema, stat_identity

if TYPE_CHECKING:
    from ..inference import FileResult
    from ..media.files import DecodeOptions

__all__ = ["EmbeddedFile", "EmbeddedVector", "IndexReport", "apply_plan", "column_matrix", "embedded_files",
           "timestamp_ns", "update_index"]

REUSE_BATCH = 256  # files whose vectors are copied per pair of commits (bounds the rows held in memory)


@dataclass
class IndexReport:
    """What one indexing run did. Paths are resolved absolute paths."""

    added: list[str] = field(default_factory=list)  # new files, embedded
    updated: list[str] = field(default_factory=list)  # changed files, embedded again
    touched: list[str] = field(default_factory=list)  # new mtime or inode, same content: metadata only
    reused: list[str] = field(default_factory=list)  # same content as an indexed file: vectors copied
    removed: list[str] = field(default_factory=list)  # gone from disk (or removed on request)
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run
    skipped_failed: list[tuple[str, str]] = field(default_factory=list)  # failed before, unchanged since
    changed_during: list[str] = field(default_factory=list)  # modified while embedded; next run
    ignored: list[str] = field(default_factory=list)  # non-media files under the folders
    files: int = 0  # files in the index after the run
    rows: int = 0  # vectors in the index after the run
    hashed: int = 0  # files whose content was read to hash it
    # Records still stored under a name that is not their resolved path (an older index), None if not
    # checked (the index says its paths are resolved).
    unresolved: int | None = None
    # A step after every file was committed (compaction, the ANN build) that failed, e.g. on a full disk:
    # what failed and why, in one line. The files are indexed and searches give the same results.
    maintenance_error: str | None = None

    @property
    def indexed_now(self) -> int:
        return len(self.added) + len(self.updated) + len(self.touched) + len(self.reused)


class EmbeddedVector(NamedTuple):
    """One vector of a file, computed before: as an :class:`audioclip.inference.Embedding`, ``vector`` an array."""

    modality: Modality
    kind: RowKind
    start: float | None
    end: float | None
    vector: np.ndarray


class EmbeddedFile(NamedTuple):
    """A file's vectors computed before (read from an embed output), as :class:`audioclip.inference.FileResult`
    gives them: every window (a single-window clip's too), pictures and frames; ``pooled`` vectors are not
    stored."""

    path: str
    source: Source
    embeddings: list[EmbeddedVector]


def embedded_files(table: pa.Table, matrix: np.ndarray) -> dict[str, EmbeddedFile]:
    """The files of an embed output's rows (its schema: docs/output-format.md), by resolved path.

    ``matrix`` holds row ``i``'s vector in row ``i``. The output keeps one
    ``pooled`` row for a clip of one window (its window and its clip are the
    same vector): it becomes that window again, as the index stores windows.
    """
    columns = {name: table[name].to_pylist() for name in ("path", "source", "modality", "kind", "start_s", "end_s",
                                                          "windows")}
    files: dict[str, EmbeddedFile] = {}
    for i, path in enumerate(columns["path"]):
        key = path if is_uri(path) else os.path.realpath(path)
        entry = files.setdefault(key, EmbeddedFile(key, columns["source"][i], []))
        kind = columns["kind"][i]
        if kind == "pooled" and columns["windows"][i] != 1:
            continue  # the mean of the windows, which are there
        entry.embeddings.append(EmbeddedVector(columns["modality"][i], "window" if kind == "pooled" else kind,
                                               columns["start_s"][i], columns["end_s"][i], matrix[i]))
    return files


def column_matrix(table: pa.Table) -> np.ndarray:
    """The vectors of an embed output read without its own reader (its ``embedding`` column), one per row."""
    rows = table["embedding"].to_pylist()
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def timestamp_ns(text: str | None) -> int | None:
    """An ISO-8601 time (an output's ``created``, to the second) as nanoseconds, rounded up to the next second."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (int(when.timestamp()) + 1) * 1_000_000_000


# A progress callback gets (event, path, detail): detail is the reason of a failure.
ProgressEvent = Literal["embedded", "failed", "reused", "touched", "removed", "changed"]
Progress = Callable[[ProgressEvent, str, str | None], None]


def update_index(store: VectorStore, model, paths: Sequence[str | os.PathLike], *, retry_failed: bool = False,
                 prune: bool = False, paths_resolved: bool = False, **apply) -> IndexReport:
    """Embed what is new or changed under ``paths``, drop what is gone. The caller holds the lock.

    ``paths_resolved``: the index is known to store resolved paths only (its
    metadata says so), so records under other names are not looked for.
    Other keyword arguments go to :func:`apply_plan`.
    """
    found, ignored = expand_paths(paths, resolve=True)
    plan = plan_update(found, store.files(), store.failures(), scope=Scope.of(paths), prune=prune,
                       retry_failed=retry_failed, paths_resolved=paths_resolved,
                       records_inodes=getattr(store, "records_inodes", True))  # False: an older Milvus collection
    report = apply_plan(store, plan, model=model, **apply)
    report.ignored = ignored
    return report


def apply_plan(store: VectorStore, plan: UpdatePlan, *, model=None, options: DecodeOptions | None = None,
               batch_size: int = 16, workers: int = 0, precision: str = "fp32", flush_every: int = 32,
               flush_seconds: float = 10.0, progress: Progress | None = None,
               on_plan: Callable[[int], None] | None = None, load_model: Callable[[], object] | None = None,
               embedded: Mapping[str, EmbeddedFile] | None = None) -> IndexReport:
    """Write ``plan`` to ``store``: cheap changes first (identities, copies, removals), then what is embedded.

    ``model`` may be None with ``load_model`` given: it is called once, only if
    a file must be embedded. ``embedded``: the vectors of the files, already
    computed (resolved path -> :class:`EmbeddedFile`, from an embed output):
    no model is used, and a file that is not there is reported as failed.
    ``on_plan`` gets the number of files left to embed.
    """
    report = IndexReport(touched=list(plan.touched), unchanged=plan.unchanged, failed=list(plan.failed),
                         skipped_failed=list(plan.skipped_failed), hashed=plan.hashed, unresolved=plan.unresolved)
    note = progress or (lambda event, path, detail=None: None)
    todo = list(plan.embed)
    if plan.identity:
        store.update_files(plan.identity)  # one commit for all of them
        for path in plan.touched:
            note("touched", path, None)
    for chunk in range(0, len(plan.reuse), REUSE_BATCH):
        todo += _copy_vectors(store, plan.reuse[chunk : chunk + REUSE_BATCH], report, note)
    if plan.remove or plan.duplicates or plan.drop_failures:
        store.delete_files([r.file_id for r in plan.remove + plan.duplicates])
        store.set_failures([], plan.drop_failures)
        for r in plan.remove:
            report.removed.append(r.path)
            note("removed", r.path, None)
    if on_plan:
        on_plan(len(todo))
    if todo and embedded is not None:
        _commit_embedded(store, todo, embedded, report, note, flush_every=flush_every)
    elif todo:
        _embed_and_commit(store, model if model is not None else load_model(), todo, report, note,
                          options=options, batch_size=batch_size, workers=workers, precision=precision,
                          flush_every=flush_every, flush_seconds=flush_seconds)
    report.files = len(store.files()) if plan.writes else plan.stored
    report.rows = store.count_rows()
    return report


def _copy_vectors(store: VectorStore, batch: list[tuple[FileToIndex, FileRecord]], report: IndexReport,
                  note: Progress) -> list[FileToIndex]:
    """Give files the vectors of another record (a copy, a rename, a file moved to its resolved name).

    The rows copied from are read first; then two commits for the batch: the
    records the files replace are deleted, then the copied rows added (killed
    in between, those files are absent and the next run embeds them again).
    Returns the files to embed after all: their source's rows were gone (the
    old record of a file replaced in an earlier batch).
    """
    sources = store.rows(sorted({twin.file_id for _, twin in batch}))
    by_id: dict[int, list[int]] = {}
    for i, fid in enumerate(sources["file_id"].to_pylist()):
        by_id.setdefault(fid, []).append(i)
    copied = [(item, twin) for item, twin in batch if twin.file_id in by_id]
    parts = [_retarget(sources.take(pa.array(by_id[twin.file_id], pa.int64())), item) for item, twin in copied]
    replaced = [r.file_id for item, _ in copied for r in item.replaced()]
    if replaced:
        store.delete_files(replaced)
    if parts:
        store.add(pa.concat_tables(parts))
        store.set_failures([], [file_id_of(item.path) for item, _ in copied])
    for item, _ in copied:
        report.reused.append(item.path)
        note("reused", item.path, None)
    return [item for item, twin in batch if twin.file_id not in by_id]


def _embed_and_commit(store, model, todo, report, note, *, options, batch_size, workers, precision,
                      flush_every, flush_seconds) -> None:
    plan = {item.path: item for item in todo}
    done: list[tuple[FileToIndex, FileResult]] = []
    failed: list[tuple[FileToIndex, str]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal done, failed, last_flush
        stale = [r.file_id for i, _ in done + failed for r in i.replaced()]
        if stale:  # commit 1: the changed files' old rows (a crash here leaves them absent, not doubled)
            store.delete_files(stale)
        if done:  # commit 2: all rows of the finished files
            store.add(_rows(done, model.embed_dim))
        records = [FailureRecord(file_id_of(i.path), i.path, i.size, i.mtime_ns, reason) for i, reason in failed]
        if records or done:
            store.set_failures(records, [file_id_of(i.path) for i, _ in done])
        for item, _ in done:
            (report.updated if item.old else report.added).append(item.path)
        report.failed.extend((i.path, reason) for i, reason in failed)
        done, failed, last_flush = [], [], time.monotonic()

    from ..inference import embed_files  # the model's code: imported only when something is embedded

    start_method = _worker_start_method(workers)
    results = embed_files(model, [item.path for item in todo], batch_size=batch_size, workers=workers,
                          precision=precision, options=options)
    try:
        for result in results:
            item = plan[result.path]
            if not result.ok:
                failed.append((item, result.error))
                note("failed", item.path, result.error)
            else:
                _take(item, result, done, report, note)
            if len(done) + len(failed) >= flush_every or time.monotonic() - last_flush >= flush_seconds:
                flush()
    finally:
        # Also on Ctrl-C or SIGTERM (raised as SystemExit by the command line): keep what is done.
        results.close()
        start_method.close()
        flush()


def _take(item: FileToIndex, result, done: list, report: IndexReport, note: Progress) -> None:
    """A file's vectors are ready: to be committed, unless the file changed since it was planned (then reported)."""
    if _changed_since(item):
        report.changed_during.append(item.path)
        note("changed", item.path, "modified while being indexed; run again to index it")
    else:
        done.append((item, result))
        note("embedded", item.path, None)


def _commit_embedded(store, todo: list[FileToIndex], embedded: Mapping[str, EmbeddedFile], report: IndexReport,
                     note: Progress, *, flush_every: int) -> None:
    """Commit files whose vectors were computed before (an embed output), ``flush_every`` files a batch.

    As :func:`_embed_and_commit`, without the model: each batch deletes the old
    rows of changed files, then adds the new ones. A file that is not in
    ``embedded``, or that changed since it was planned, is reported and not
    remembered as failed (it is not a bad file: indexing it from disk works).
    """
    dim = None
    for chunk in range(0, len(todo), flush_every):
        done = []
        for item in todo[chunk : chunk + flush_every]:
            result = embedded.get(item.path)
            if result is None:
                report.failed.append((item.path, "not in the embeddings"))
                note("failed", item.path, "not in the embeddings")
            else:
                _take(item, result, done, report, note)
        if not done:
            continue
        dim = dim or len(done[0][1].embeddings[0].vector)
        stale = [r.file_id for i, _ in done for r in i.replaced()]
        if stale:
            store.delete_files(stale)
        store.add(_rows(done, dim))
        store.set_failures([], [file_id_of(i.path) for i, _ in done])
        for item, _ in done:
            (report.updated if item.old else report.added).append(item.path)


def _worker_start_method(workers: int):
    """Decoding workers start by "forkserver" while indexing, and the previous method is restored after.

    LanceDB runs threads of its own, and a process forked from it may
    deadlock; the workers only decode files, so they need nothing of this
    process's state. Returns an object whose ``close()`` restores the method.
    """
    class Restore:
        def __init__(self, previous):
            self.previous = previous

        def close(self):
            if self.previous is not False:
                multiprocessing.set_start_method(self.previous, force=True)
                self.previous = False

    if workers <= 0 or "forkserver" not in multiprocessing.get_all_start_methods():
        return Restore(False)
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    return Restore(previous)


def _changed_since(item: FileToIndex) -> bool:
    """Hash the content (if not yet) and check the file did not change (nor was replaced) since it was planned."""
    try:
        if item.hash is None:
            item.hash = content_hash(item.path)
        st = os.stat(item.path)
    except OSError:
        return True
    return (st.st_size, st.st_mtime_ns, *stat_identity(st)) != (item.size, item.mtime_ns, item.dev, item.inode)


def _rows(done: list[tuple[FileToIndex, FileResult]], dim: int) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in row_schema(dim).names}
    vectors = []
    for item, result in done:
        windows = [e for e in result.embeddings if e.kind == "window"]
        duration = max(e.end for e in windows) if windows else None
        for e in result.embeddings:
            if e.kind == "pooled":  # the mean of the windows: not stored (see records.py)
                continue
            values = dict(file_id=file_id_of(item.path), path=item.path, source=result.source,
                          modality=e.modality, kind=e.kind, start_s=e.start, end_s=e.end, duration=duration,
                          size=item.size, mtime_ns=item.mtime_ns, hash=item.hash, dev=item.dev, inode=item.inode)
            for name, value in values.items():
                columns[name].append(value)
            vectors.append(np.asarray(e.vector, dtype=np.float32))  # a CPU tensor or an array
    flat = np.stack(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    schema = row_schema(dim)
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) if name != "vector"
                     else columns[name] for name in schema.names}, schema=schema)


def _retarget(rows: pa.Table, item: FileToIndex) -> pa.Table:
    """Another file's rows, relabelled as ``item``'s (same content, so the same vectors)."""
    n = rows.num_rows
    replace = {"file_id": pa.array([file_id_of(item.path)] * n, pa.int64()),
               "path": pa.array([item.path] * n, pa.string()),
               "size": pa.array([item.size] * n, pa.int64()),
               "mtime_ns": pa.array([item.mtime_ns] * n, pa.int64()),
               "hash": pa.array([item.hash] * n, pa.string()),
               "dev": pa.array([item.dev] * n, pa.int64()),
               "inode": pa.array([item.inode] * n, pa.int64())}
    for name, column in replace.items():
        rows = rows.set_column(rows.schema.get_field_index(name), name, column)
    return rows
