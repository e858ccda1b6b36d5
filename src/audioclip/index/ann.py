"""A FAISS IVF index beside a store: fast, exact-scored search at 10^5-10^6 vectors and beyond.

The store (LanceDB) stays the truth; this is a derived copy of its vectors,
laid out for speed, in the folder ``ann/`` of the index:

- ``g{G}.index`` + ``g{G}.ivfdata``: a FAISS ``IndexIVFFlat`` (inner product)
  whose inverted lists live in a memory-mapped file, so a searching process
  holds only what the OS keeps in its page cache. Lists hold the raw float32
  vectors: every candidate's score is the exact cosine (no quantisation, no
  re-ranking step needed), and scanning every list is the exact search.
- ``g{G}.rows.npy``: for each vector (its FAISS id is its position), the row's
  ``file_id``, ``start_s`` (as ``start``), ``kind`` and ``source``.
- ``state.json``: which generation is current, the table version it was built
  from, and the *dirty* files: files written since (added, replaced or
  deleted). Their vectors in the index are ignored, and their current rows are
  read from the store and scanned exactly, so a search sees every committed
  row once and never a deleted one.

Writers mark files dirty (an atomic rewrite of ``state.json``) *before* the
store commits, so a crash in between only leaves a file marked that did not
change (harmless: its rows are scanned exactly). A build writes a new
generation's files under new names, fsyncs them and then publishes them by
replacing ``state.json``; a crash before that leaves the previous generation in
use, and its stray files are deleted by the next build. Readers re-read the
state when the file changes (one ``stat`` per query).

Training: FAISS's spherical k-means (``faiss.Kmeans``) on a sample
(``SAMPLE_PER_LIST`` vectors per list); FAISS then puts every vector in the
list of its nearest centroid. About 4·sqrt(n) lists of ~250 vectors; a query
scans the ``nprobe`` lists whose centroids are nearest.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..io import FileReadError, atomic_write, check_regular_file, read_text_bounded
from .ann_files import (KINDS, MAX_STATE_BYTES, ROW_DTYPE, SOURCES, STATE, Unusable, checked_state, fsync,
                        index_bytes, quiet_stdout, read_rows, row_meta, vectors_of)

__all__ = ["AnnIndex", "AnnIndexWarning", "ann_lists", "train_lists"]

SAMPLE_PER_LIST = 16  # k-means training vectors per list
KMEANS_ITERATIONS = 8  # FAISS's default is 25; the figures in docs/performance.md are with 8
BUILD_MEMORY_BYTES = 1 << 32  # vectors held in memory while building (4 GiB: 10^6 at 1024-d); more: shards
SHARD_ROWS = 65_536  # the least vectors per shard


def _in_memory_bytes() -> int:
    """The largest index a searching process reads into memory (a quarter of RAM, at most 8 GiB); larger: mapped."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        ram = 4 << 30
    return min(8 << 30, ram // 4)


IN_MEMORY_BYTES = _in_memory_bytes()  # scans stream about 3x faster from memory than through a file mapping


class AnnIndexWarning(UserWarning):
    """The ANN sidecar of an index cannot be used (unreadable, tampered, inconsistent): searches scan exactly."""


def ann_lists(rows: int) -> int:
    """IVF lists for ``rows`` vectors: a power of two near min(rows / 256, 4 sqrt(rows)); 1 below 2,048 rows."""
    if rows < 2048:
        return 1
    target = min(rows / 256, 4 * rows**0.5)
    return int(2 ** round(np.log2(target)))


class AnnIndex:
    """The FAISS sidecar of one store, in ``folder``. Safe to share between threads."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._state_key = None
        self._state: dict | None = None
        self._loaded = None  # (generation, faiss index, rows array, {source code: mask})
        self._selectors: dict = {}
        self._dirty_cache = None  # (key, table of the dirty files' rows, matrix)
        self._unusable = None  # the state key whose generation failed to load: not tried again

    # -- state ----------------------------------------------------------------------

    def state(self) -> dict | None:
        """The published state, re-read when ``state.json`` changed; None when there is no index."""
        path = self.folder / STATE
        try:
            st = path.stat()
        except FileNotFoundError:
            self._state_key, self._state = None, None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._state_key:
            # Unreadable or not what a build writes: ignore the sidecar (searches scan the store exactly),
            # once per version of the file.
            try:
                state = checked_state(json.loads(read_text_bounded(path, MAX_STATE_BYTES, what="ANN state file")),
                                       path)
            except (FileReadError, ValueError, Unusable) as err:
                if not path.exists():
                    return None
                state = None
                _warn(f"{err}" if isinstance(err, (FileReadError, Unusable)) else f"{path}: not JSON ({err})")
            self._state_key, self._state = key, state
        return self._state

    def exists(self) -> bool:
        return self.state() is not None

    def _write_state(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.folder / STATE, "w", encoding="utf-8") as f:
            json.dump(state, f)

    def mark(self, file_ids: Iterable[int]) -> None:
        """Record, before the store commits, that these files' rows are about to change."""
        state = self.state()
        if state is None:
            return
        ids = {str(int(i)) for i in file_ids}
        if not ids:
            return
        state = dict(state)
        seq = int(state.get("seq", 0)) + 1
        state["dirty"] = {**state.get("dirty", {}), **{i: seq for i in ids}}
        state["seq"] = seq
        self._write_state(state)

    def dirty(self) -> list[int]:
        state = self.state()
        return [] if state is None else [int(i) for i in state.get("dirty", {})]

    def drop(self) -> None:
        """Remove the sidecar (state first: readers then stop using it)."""
        (self.folder / STATE).unlink(missing_ok=True)
        for f in self.folder.glob("g*"):
            f.unlink(missing_ok=True)

    # -- building -----------------------------------------------------------------

    def build(self, scan: Callable[[], Iterable[pa.RecordBatch]], rows: int, dim: int, table_version: int,
              take: Callable[[np.ndarray], pa.Table] | None = None,
              log: Callable[[str], None] | None = None) -> dict:
        """Build a new generation from ``scan()`` (batches with ``file_id, source, kind, start_s, vector``;
        ``rows`` of them), publish it and delete the old one. ``take(offsets)`` reads the training sample
        (rows at those positions of the scan, with a ``vector`` column); without it, a first scan does.
        """
        import faiss

        final = log or (lambda message: None)
        say = final if rows >= 100_000 else (lambda message: None)  # steps of a long build only
        started = time.perf_counter()
        # A search process runs FAISS on one thread (``_load``); a build uses every core, then puts that back.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(_cores())
        try:
            return self._build(scan, rows, dim, table_version, take, final, say, started)
        finally:
            faiss.omp_set_num_threads(threads)

    def _build(self, scan, rows, dim, table_version, take, final, say, started) -> dict:
        import faiss

        self.folder.mkdir(parents=True, exist_ok=True)
        before = self.state() or {}
        generation = int(before.get("generation", 0)) + 1
        seq_at_start = int(before.get("seq", 0))
        for stray in self.folder.glob(f"g{generation}.*"):  # left by a build killed before publishing
            stray.unlink()
        nlist = ann_lists(rows)

        # 1. spherical k-means on a random sample
        if nlist > 1:
            wanted = np.sort(np.random.default_rng(0).choice(rows, min(rows, nlist * SAMPLE_PER_LIST),
                                                             replace=False))
            sample = self._sample(scan, take, wanted, dim)
            say(f"ANN index: read a sample of {len(sample):,} vectors in {time.perf_counter() - started:.1f} s")
            centroids = train_lists(sample, nlist)
            del sample
        else:
            centroids = np.zeros((1, dim), np.float32)
        say(f"ANN index: trained {nlist} list(s) in {time.perf_counter() - started:.1f} s")

        # 2. every vector into its list: in memory up to BUILD_MEMORY_BYTES, else in shards merged on disk
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(centroids)
        shard_rows = max(SHARD_ROWS, BUILD_MEMORY_BYTES // (4 * dim))

        def new_shard():
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.is_trained = True
            return index

        index_path = self.folder / f"g{generation}.index"
        data_path = self.folder / f"g{generation}.ivfdata"
        shard_paths: list[Path] = []
        meta_parts: list[np.ndarray] = []
        position = 0
        shard = new_shard()
        try:
            for batch in scan():
                vectors = vectors_of(batch, dim)
                shard.add_with_ids(vectors, np.arange(position, position + len(vectors), dtype=np.int64))
                meta_parts.append(row_meta(batch))
                position += len(vectors)
                if shard.ntotal >= shard_rows:
                    shard_paths.append(self._write_shard(shard, generation, len(shard_paths)))
                    shard = new_shard()
            say(f"ANN index: assigned {position:,} vectors in {time.perf_counter() - started:.1f} s")
            if not shard_paths:  # one piece: a plain FAISS file, memory-mapped when read
                faiss.write_index(shard, str(index_path))
                files = [index_path]
            else:
                from faiss.contrib.ondisk import merge_ondisk

                if shard.ntotal:
                    shard_paths.append(self._write_shard(shard, generation, len(shard_paths)))
                del shard
                merged = new_shard()
                with quiet_stdout():  # FAISS prints "resizing FILE" on the C stdout
                    merge_ondisk(merged, [str(p) for p in shard_paths], str(data_path))
                faiss.write_index(merged, str(index_path))
                del merged
                files = [index_path, data_path]
        finally:
            shard = None
            _release_memory()
            for p in shard_paths:
                p.unlink(missing_ok=True)
        meta = np.concatenate(meta_parts) if meta_parts else np.zeros(0, ROW_DTYPE)
        with atomic_write(self.folder / f"g{generation}.rows.npy", "wb") as f:
            np.save(f, meta)
        for path in files:
            fsync(path)

        # 3. publish: files marked dirty while building stay dirty (their rows may be newer than the scan)
        current = self.state() or {}
        dirty = {k: v for k, v in current.get("dirty", {}).items() if int(v) > seq_at_start}
        state = {"format": 1, "generation": generation, "table_version": int(table_version), "vectors": position,
                 "lists": nlist, "dim": dim, "seq": int(current.get("seq", 0)), "dirty": dirty,
                 "data_file": str(data_path.resolve()) if data_path in files else None,
                 "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "build_seconds": round(time.perf_counter() - started, 1)}
        self._write_state(state)
        for old in self.folder.glob("g*"):
            if not old.name.startswith(f"g{generation}."):
                old.unlink(missing_ok=True)
        final(f"ANN index: {position:,} vectors in {nlist} list(s), built in {state['build_seconds']} s")
        return state

    @staticmethod
    def _sample(scan, take, wanted: np.ndarray, dim: int) -> np.ndarray:
        if take is not None:
            parts = [vectors_of(take(wanted[i: i + 8192]).combine_chunks().to_batches()[0], dim)
                     for i in range(0, len(wanted), 8192)]
            return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        sample = np.empty((len(wanted), dim), np.float32)
        got, offset = 0, 0
        for batch in scan():
            n = batch.num_rows
            hi = np.searchsorted(wanted, offset + n)
            if hi > got:
                sample[got:hi] = vectors_of(batch, dim)[wanted[got:hi] - offset]
                got = hi
            offset += n
        return sample[:got]

    def _write_shard(self, shard, generation: int, number: int) -> Path:
        import faiss

        path = self.folder / f"g{generation}.shard{number}.tmp"
        faiss.write_index(shard, str(path))
        return path

    # -- searching ---------------------------------------------------------------------

    def _load(self, state: dict):
        loaded = self._loaded
        if loaded is not None and loaded[0] == state["generation"]:
            return loaded
        import faiss

        generation = state["generation"]
        path = self.folder / f"g{generation}.index"
        # Every file FAISS may open is a regular file here (a FIFO would block its open for ever, a device
        # feed it without end), and no larger than the state's vectors need.
        size = check_regular_file(path, index_bytes(state), what="ANN index file").st_size
        data_path = self.folder / f"g{generation}.ivfdata"
        if state.get("data_file"):
            check_regular_file(data_path, 2 * index_bytes(state), what="ANN list data")  # room for list slack
        for entry in self.folder.iterdir():  # what an on-disk index names is looked for in this folder
            if entry.name.startswith("g") and not entry.name.endswith(".tmp"):
                check_regular_file(entry, 1 << 62, what="ANN sidecar file")
        if not state.get("data_file") and size <= IN_MEMORY_BYTES:
            index = faiss.read_index(str(path))  # in memory, where a scan streams fastest
        elif not state.get("data_file"):  # one file: its lists memory-mapped
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        else:  # the lists' data is looked for beside the index file only (the folder may have moved)
            with quiet_stdout():  # FAISS says so on the C stdout
                index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        if not isinstance(index, faiss.IndexIVFFlat) or index.d != state["dim"] \
                or index.metric_type != faiss.METRIC_INNER_PRODUCT or index.nlist != state["lists"]:
            raise Unusable(f"{path}: not the {state['dim']}-d inner-product IVF index of {state['lists']} "
                            "list(s) the state describes")
        if state.get("data_file"):
            lists = faiss.downcast_InvertedLists(index.invlists)
            if not isinstance(lists, faiss.OnDiskInvertedLists) or lists.totsize > os.path.getsize(data_path):
                raise Unusable(f"{data_path}: shorter than its index says")
        meta = read_rows(self.folder / f"g{generation}.rows.npy", state["vectors"])
        if index.ntotal != len(meta):
            raise Unusable(f"{self.folder}: generation {generation} is inconsistent ({index.ntotal} vectors, "
                            f"{len(meta)} rows)")
        # One thread per query: a single query's scan of a few lists gains nothing from a second thread,
        # and waiting for it on a busy machine is what makes the slow percentile slow (docs/performance.md).
        faiss.omp_set_num_threads(1)
        self._loaded = (generation, index, meta)
        self._selectors = {}
        return self._loaded

    def _selector(self, state: dict, meta: np.ndarray, sources: tuple[str, ...] | None):
        """A FAISS id selector keeping clean rows of the given sources; None when every row is kept."""
        import faiss

        dirty = tuple(sorted(int(i) for i in state.get("dirty", {})))
        key = (state["generation"], state.get("seq"), sources)
        cached = self._selectors.get(key)
        if cached is not None:
            return cached
        keep = None
        if dirty:
            keep = ~np.isin(meta["file_id"], np.asarray(dirty, np.int64))
        if sources:
            codes = [SOURCES.index(s) for s in sources if s in SOURCES]
            wanted = np.isin(meta["source"], np.asarray(codes, np.int8))
            keep = wanted if keep is None else keep & wanted
        if keep is None:
            entry = (None, None, int(len(meta)))
        else:
            bits = np.packbits(keep, bitorder="little")
            entry = (faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bits)), bits, int(keep.sum()))
        if len(self._selectors) > 16:
            self._selectors.clear()
        self._selectors[key] = entry
        return entry

    def search(self, query: np.ndarray, limit: int, sources: Sequence[str] | None, exact: bool, nprobe: int,
               table_version: Callable[[], int], read_rows: Callable[[list[int]], pa.Table], max_dirty_rows: int
               ) -> pa.Table | None:
        """The best ``limit`` rows (``file_id, kind, start_s, score``), or None when the sidecar cannot answer
        (none, unreadable, or more dirty rows than ``max_dirty_rows``): the caller then scans the store."""
        import faiss

        with self._lock:
            state = self.state()
            key = self._state_key
            if state is None or "generation" not in state or self._unusable == key:
                return None
            try:
                generation, index, meta = self._load(state)
            except (Unusable, FileReadError) as err:
                self._unusable = self._state_key
                _warn(str(err))
                return None
            except (OSError, RuntimeError, MemoryError, ValueError) as err:  # FAISS on a damaged file
                self._unusable = self._state_key
                first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
                first = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", first)  # FAISS's C++ location
                _warn(f"{self.folder / ('g%d.index' % state['generation'])}: unreadable ({first})")
                return None
            selector, _bits, kept = self._selector(state, meta, tuple(sources) if sources else None)
            dirty = self._dirty_rows(state, table_version, read_rows, max_dirty_rows)
        if dirty is None:
            return None
        query = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        nlist = index.nlist
        probes = nlist if exact else max(1, min(nprobe, nlist))
        params = faiss.SearchParametersIVF(nprobe=probes, sel=selector) if selector is not None else \
            faiss.SearchParametersIVF(nprobe=probes)
        k = max(1, min(limit, kept)) if kept else 0
        if k:
            scores, ids = index.search(query, k, params=params)
            scores, ids = scores[0], ids[0]
            if (ids >= len(meta)).any():  # ids past the row map: a tampered file
                self._unusable = key
                _warn(f"{self.folder / ('g%d.index' % generation)}: holds ids past its row map")
                return None
            found = ids >= 0
            scores, ids = scores[found], ids[found]
        else:
            scores, ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
        rows = meta[ids]
        file_ids, starts = rows["file_id"], rows["start"].astype(np.float64)
        kinds = np.asarray(KINDS, dtype=object)[rows["kind"]]
        starts_mask = rows["kind"] != 0  # images and frames have no start
        dirty_table, matrix = dirty
        if dirty_table.num_rows:
            keep = np.ones(dirty_table.num_rows, bool)
            if sources:
                keep = np.isin(np.asarray(dirty_table["source"].to_pylist(), dtype=object), list(sources))
            d_scores = matrix @ query[0]
            d_scores = d_scores[keep]
            d_table = dirty_table.filter(pa.array(keep))
            file_ids = np.concatenate([file_ids, d_table["file_id"].to_numpy()])
            d_starts = d_table["start_s"].to_numpy(zero_copy_only=False)
            starts = np.concatenate([starts, np.nan_to_num(d_starts, nan=0.0)])
            starts_mask = np.concatenate([starts_mask, d_table["start_s"].is_null().to_numpy(zero_copy_only=False)])
            kinds = np.concatenate([kinds, np.asarray(d_table["kind"].to_pylist(), dtype=object)])
            scores = np.concatenate([scores, d_scores.astype(np.float32)])
        order = np.lexsort((np.arange(len(scores)), -scores))[:limit]
        start_values = pa.array(starts[order], pa.float64(), mask=starts_mask[order])
        return pa.table({"file_id": pa.array(file_ids[order], pa.int64()),
                         "kind": pa.array(kinds[order].tolist(), pa.string()),
                         "start_s": start_values,
                         "score": pa.array(scores[order], pa.float32())})

    def _dirty_rows(self, state: dict, table_version: int, read_rows, max_rows: int):
        """The current rows of the dirty files (and their vectors as a matrix), cached per table version."""
        ids = sorted(int(i) for i in state.get("dirty", {}))
        key = (state["generation"], state.get("seq"), table_version() if ids else None)
        if self._dirty_cache is not None and self._dirty_cache[0] == key:
            return self._dirty_cache[1]
        parts, total = [], 0
        for chunk in range(0, len(ids), 500):
            part = read_rows(ids[chunk: chunk + 500])
            total += part.num_rows
            if total > max_rows:
                return None
            parts.append(part.select(["file_id", "source", "kind", "start_s", "vector"]))
        if parts:
            table = pa.concat_tables(parts)
            dim = table.schema.field("vector").type.list_size
            matrix = vectors_of(table.combine_chunks().to_batches()[0], dim) if table.num_rows else \
                np.zeros((0, dim), np.float32)
        else:
            table = pa.table({"file_id": pa.array([], pa.int64()), "source": pa.array([], pa.string()),
                              "kind": pa.array([], pa.string()), "start_s": pa.array([], pa.float64())})
            matrix = np.zeros((0, 1), np.float32)
        value = (table, matrix)
        self._dirty_cache = (key, value)
        return value

    def describe(self) -> dict | None:
        state = self.state()
        if state is None or "generation" not in state:
            return None
        return {"vectors": state["vectors"], "lists": state["lists"], "dirty_files": len(state.get("dirty", {})),
                "built": state.get("built"), "build_seconds": state.get("build_seconds")}


# -- training -------------------------------------------------------------------------------------------


def train_lists(sample: np.ndarray, lists: int) -> np.ndarray:
    """``lists`` unit centroids of the unit vectors ``sample`` (n, d): FAISS's spherical k-means, seeded."""
    import faiss

    # The sample is drawn already (SAMPLE_PER_LIST per list): FAISS neither warns of its size nor subsamples it.
    kmeans = faiss.Kmeans(sample.shape[1], lists, niter=KMEANS_ITERATIONS, spherical=True, seed=0,
                          min_points_per_centroid=1, max_points_per_centroid=SAMPLE_PER_LIST)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- helpers -----------------------------------------------------------------------------------------------


def _warn(problem: str) -> None:
    warnings.warn(f"{problem}; searching without the ANN index (an exact scan: slower, same results)",
                  AnnIndexWarning, stacklevel=3)


def _release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps the lists' many 1 MB blocks otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
