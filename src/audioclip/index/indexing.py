"""Bringing an index up to date with folders on disk: incremental and crash-safe.

A file is identified by its absolute path and recognised as unchanged by its
size and modification time. When those changed, or a new file has the size of
an indexed one, its content hash decides: same content at the same path only
gets its metadata updated ("touched"); content already indexed under another
path (a copy, a rename) has its vectors copied ("reused"); anything else is
embedded.

Crash safety rests on two facts: every store write is one atomic commit, and
a file's identity (size, mtime, hash) is stored on its own vector rows. So a
file is either fully in the index, with the identity it had when embedded, or
absent. Finished files are committed in batches (``flush_every`` files or
``flush_seconds``, whichever comes first), a changed file's old rows are
deleted just before its new ones are added. Killed between the two commits, the
file is merely absent and the next run embeds it again; killed at any other
point, the next run sees the committed files as unchanged and goes on with
the rest. A file is never added twice because a run only adds files it
found absent or changed, and one writer at a time holds the index's lock.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..inference import DecodeOptions, FileResult, embed_files, expand_paths
from ..media import sniff_modality
from .store import FailureRecord, FileRecord, VectorStore, file_id_of, row_schema

__all__ = ["IndexReport", "content_hash", "update_index"]


@dataclass
class IndexReport:
    """What one indexing run did. Paths are absolute."""

    added: list[str] = field(default_factory=list)  # new files, embedded
    updated: list[str] = field(default_factory=list)  # changed files, embedded again
    touched: list[str] = field(default_factory=list)  # new mtime, same content: metadata only
    reused: list[str] = field(default_factory=list)  # same content as an indexed file: vectors copied
    removed: list[str] = field(default_factory=list)  # gone from disk (or removed on request)
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run
    skipped_failed: list[tuple[str, str]] = field(default_factory=list)  # failed before, unchanged since
    changed_during: list[str] = field(default_factory=list)  # modified while embedded; next run
    ignored: list[str] = field(default_factory=list)  # non-media files under the folders
    files: int = 0  # files in the index after the run
    rows: int = 0  # vectors in the index after the run

    @property
    def indexed_now(self) -> int:
        return len(self.added) + len(self.updated) + len(self.touched) + len(self.reused)


@dataclass
class _Todo:
    path: str
    size: int
    mtime_ns: int
    old: FileRecord | None  # the stored version of a changed file
    hash: str | None = None


# A progress callback gets (event, path, detail): event is "embedded", "failed",
# "reused", "touched", "removed" or "changed"; detail is the reason of a failure.
Progress = Callable[[str, str, str | None], None]


def content_hash(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _in_scope(path: str, roots: Sequence[str], files: set[str]) -> bool:
    return path in files or any(path.startswith(root) for root in roots)


def update_index(
    store: VectorStore,
    model,
    paths: Sequence[str | os.PathLike],
    *,
    options: DecodeOptions,
    batch_size: int = 16,
    workers: int = 0,
    precision: str = "fp32",
    flush_every: int = 32,
    flush_seconds: float = 10.0,
    retry_failed: bool = False,
    prune: bool = False,
    progress: Progress | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> IndexReport:
    """Embed what is new or changed under ``paths``, drop what is gone. The caller holds the lock."""
    report = IndexReport()
    note = progress or (lambda event, path, detail=None: None)
    found, report.ignored = expand_paths(paths)
    found = [os.path.abspath(p) for p in found]
    report.ignored = [os.path.abspath(p) for p in report.ignored]
    roots = [os.path.join(os.path.abspath(p), "") for p in paths if os.path.isdir(p)]
    named = {os.path.abspath(p) for p in paths if not os.path.isdir(p)}

    stored = store.files()
    failures = store.failures()
    by_hash = {r.hash: r for r in stored.values()}
    sizes = {r.size for r in stored.values()}

    # -- plan -------------------------------------------------------------------------
    todo: list[_Todo] = []
    touch: list[FileRecord] = []
    reuse: list[tuple[_Todo, FileRecord]] = []
    for path in found:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            report.failed.append((path, "file name is not valid UTF-8; rename it"))
            continue
        try:
            st = os.stat(path)
        except OSError as err:
            report.failed.append((path, err.strerror or str(err)))
            continue
        old = stored.get(path)
        if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            report.unchanged += 1
            continue
        failure = failures.get(path)
        if failure and failure.size == st.st_size and failure.mtime_ns == st.st_mtime_ns and not retry_failed:
            report.skipped_failed.append((path, failure.error))
            continue
        item = _Todo(path, st.st_size, st.st_mtime_ns, old)
        if st.st_size in sizes:  # could be a touch, a copy or a rename: worth a hash
            try:
                item.hash = content_hash(path)
            except OSError as err:
                report.failed.append((path, err.strerror or str(err)))
                continue
            if old is not None and old.hash == item.hash:
                touch.append(FileRecord(old.file_id, path, old.source, st.st_size, st.st_mtime_ns, item.hash,
                                        old.duration))
                continue
            twin = by_hash.get(item.hash)
            if twin is not None and twin.source == sniff_modality(path):
                reuse.append((item, twin))
                continue
        todo.append(item)

    removed = [r for p, r in stored.items() if (prune or _in_scope(p, roots, named)) and not os.path.isfile(p)]
    gone_failures = [f.file_id for p, f in failures.items()
                     if (prune or _in_scope(p, roots, named)) and not os.path.isfile(p)]
    if on_plan:
        on_plan(len(todo))

    # -- cheap changes first: metadata updates and copies, then removals ----------------
    if touch:
        store.update_files(touch)
        for r in touch:
            report.touched.append(r.path)
            note("touched", r.path, None)
    for item, twin in reuse:
        rows = _retarget(store.rows([twin.file_id]), item)
        if item.old is not None:
            store.delete_files([item.old.file_id])
        store.add(rows)
        store.set_failures([], [file_id_of(item.path)])
        report.reused.append(item.path)
        note("reused", item.path, None)
    if removed or gone_failures:
        store.delete_files([r.file_id for r in removed])
        store.set_failures([], gone_failures)
        for r in removed:
            report.removed.append(r.path)
            note("removed", r.path, None)

    # -- embedding, committed in batches ----------------------------------------------
    if todo:
        _embed_and_commit(store, model, todo, report, note, options=options, batch_size=batch_size,
                          workers=workers, precision=precision, flush_every=flush_every,
                          flush_seconds=flush_seconds)

    files = store.files()
    report.files = len(files)
    report.rows = store.count_rows()
    return report


def _embed_and_commit(store, model, todo, report, note, *, options, batch_size, workers, precision,
                      flush_every, flush_seconds) -> None:
    plan = {item.path: item for item in todo}
    done: list[tuple[_Todo, FileResult]] = []
    failed: list[tuple[_Todo, str]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal done, failed, last_flush
        stale = [i.old.file_id for i, _ in done if i.old] + [i.old.file_id for i, _ in failed if i.old]
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

    start_method = _worker_start_method(workers)
    results = embed_files(model, [item.path for item in todo], batch_size=batch_size, workers=workers,
                          precision=precision, options=options)
    try:
        for result in results:
            item = plan[result.path]
            if not result.ok:
                failed.append((item, result.error))
                note("failed", item.path, result.error)
            elif _changed_since(item):
                report.changed_during.append(item.path)
                note("changed", item.path, "modified while being indexed; run again to index it")
            else:
                done.append((item, result))
                note("embedded", item.path, None)
            if len(done) + len(failed) >= flush_every or time.monotonic() - last_flush >= flush_seconds:
                flush()
    finally:
        # Also on Ctrl-C or SIGTERM (raised as SystemExit by the command line): keep what is done.
        results.close()
        start_method.close()
        flush()


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


def _changed_since(item: _Todo) -> bool:
    """Hash the content (if not yet) and check the file did not change since it was planned."""
    try:
        if item.hash is None:
            item.hash = content_hash(item.path)
        st = os.stat(item.path)
    except OSError:
        return True
    return (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns)


def _rows(done: list[tuple[_Todo, FileResult]], dim: int) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in row_schema(dim).names}
    vectors = []
    for item, result in done:
        windows = [e for e in result.embeddings if e.kind == "window"]
        duration = max(e.end for e in windows) if windows else None
        for e in result.embeddings:
            if e.kind == "pooled":  # the mean of the windows: not stored (see store.py)
                continue
            values = dict(file_id=file_id_of(item.path), path=item.path, source=result.source,
                          modality=e.modality, kind=e.kind, start=e.start, end=e.end, duration=duration,
                          size=item.size, mtime_ns=item.mtime_ns, hash=item.hash)
            for name, value in values.items():
                columns[name].append(value)
            vectors.append(e.vector.numpy().astype(np.float32, copy=False))
    flat = np.stack(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    schema = row_schema(dim)
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) if name != "vector"
                     else columns[name] for name in schema.names}, schema=schema)


def _retarget(rows: pa.Table, item: _Todo) -> pa.Table:
    """Another file's rows, relabelled as ``item``'s (same content, so the same vectors)."""
    n = rows.num_rows
    replace = {"file_id": pa.array([file_id_of(item.path)] * n, pa.int64()),
               "path": pa.array([item.path] * n, pa.string()),
               "size": pa.array([item.size] * n, pa.int64()),
               "mtime_ns": pa.array([item.mtime_ns] * n, pa.int64()),
               "hash": pa.array([item.hash] * n, pa.string())}
    for name, column in replace.items():
        rows = rows.set_column(rows.schema.get_field_index(name), name, column)
    return rows
