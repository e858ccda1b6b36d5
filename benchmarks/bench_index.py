"""Search at scale: the index's store at 10^4, 10^5, 10^6 vectors, exact and ANN, against a FAISS flat scan.

Unit vectors (1024-d float32, AudioCLIP's size) in the index's real row schema
(``audioclip.index.records``), written in chunks of 50,000 rows (one commit each,
as indexing does), so 10^6 vectors (4 GB of floats) never sit in memory at
once while the store is built. For each size, in one run:

- ``exact``: the store's exact search (``search(..., exact=True)``), which
  scans every list of the FAISS index beside the table (``index/ann.py``);
- ``ivf-flat``: the store's default ANN search at several ``nprobe`` (lists
  scanned per query); its ``build_s`` is the time to build that index
  (``LanceStore.build_ann``, what ``audioclip index`` does past
  ``ANN_MIN_ROWS`` rows);
- ``faiss-flat``: the baseline, FAISS ``IndexFlatIP`` holding every vector in
  memory, queried one query at a time (the faster of one thread and all); it
  also gives the exact top 10 that recall@10 is measured against;
- ``lance-exact``: LanceDB's own flat scan (what the store did before), on a
  few queries; ``--lance-ann ivf_sq ...`` adds LanceDB's own ANN indexes.

Every query asks for the best 64 rows (what a ``k=10`` search asks the store
first). Latency p50/p99 per query, after an untimed pass over the same queries
(the steady state of a running server; LanceDB's slow scan: one query). Each setting is measured in a fresh process
(ANN settings first, exact last), whose peak RSS is reported: the high-water
mark is reset before each setting (Linux), and memory-mapped index pages a
setting touches count (the exact scan touches all of them); ``build_s`` of the
store's rows is the ANN build, measured in this process. A Markdown table goes
to stdout, with ratios against the FAISS flat scan of the same run;
``--json PATH`` writes one object per setting.

    python benchmarks/bench_index.py --sizes 1e6 --data clustered --json out.json   # ~9 min here
    python benchmarks/bench_index.py --sizes 1e4 1e5 --data random clustered         # ~2 min
    python benchmarks/bench_index.py --smoke   # every step at 3,000 vectors, a few seconds: checks the script runs

``--data random``: uniformly random unit vectors, the worst case for an ANN
index: no clusters to find, and the true top 10 barely closer than the rest.
``--data clustered``: points around one centre per 100 vectors (cosine ~0.74
to it), closer to how embeddings of similar sounds and pictures group.
Writes into ``--dir`` (default: a temporary folder under /tmp, removed after).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import pyarrow as pa

from audioclip.index.lance import LanceStore
from audioclip.index.records import row_schema

DIM = 1024
CHUNK = 50_000
LIMIT = 64  # rows a k=10 search asks the store for


class Data:
    """Deterministic unit vectors, random or clustered, produced chunk by chunk."""

    def __init__(self, kind: str, n: int, seed: int = 0):
        self.kind, self.rng = kind, np.random.default_rng(seed)
        if kind == "clustered":
            self.centres = self._unit(self.rng.standard_normal((max(1, n // 100), DIM), dtype=np.float32))

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng or self.rng
        noise = rng.standard_normal((n, DIM), dtype=np.float32)
        if self.kind == "random":
            return self._unit(noise)
        # cosine about 0.7 to the centre, like a sound and its near neighbours
        centres = self.centres[rng.integers(0, len(self.centres), n)]
        return self._unit(centres + 0.9 * noise / np.sqrt(DIM))


def chunk_table(start: int, vectors: np.ndarray) -> pa.Table:
    """Rows ``start ...`` of the table, built field by field from the store's own row schema
    (``row_schema``): a column the schema gains later is null here, one it drops is left out,
    so the benchmark keeps writing what the store accepts."""
    n = len(vectors)
    ids = np.arange(start, start + n, dtype=np.int64)
    values = {
        "file_id": ids,
        "path": [f"/library/sounds/{i // 1000:04d}/clip-{i:07d}.flac" for i in ids],
        "source": ["audio"] * n, "modality": ["audio"] * n, "kind": ["window"] * n,
        "start_s": np.zeros(n), "end_s": np.full(n, 5.0),
        "duration": np.full(n, 5.0),
        "size": np.full(n, 441_000, np.int64), "mtime_ns": np.full(n, 1_700_000_000_000_000_000, np.int64),
        "hash": [f"{i:032x}" for i in ids],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
    }
    schema = row_schema(DIM)
    columns = [values[f.name] if isinstance(values.get(f.name), pa.Array)
               else pa.array(values[f.name], f.type) if f.name in values else pa.nulls(n, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


ANN_KINDS = ("ivf_sq", "ivf_pq", "ivf_hnsw_sq")


def ann_partitions(rows: int) -> int:
    """IVF partitions for ``rows`` vectors: about sqrt(rows) / 2, between 1 and 2048."""
    return max(1, min(2048, round(rows**0.5 / 2)))


def create_ann_index(table, rows: int, kind: str = "ivf_sq") -> None:
    """LanceDB's own ANN index on the vectors (dot product), sized for ``rows``, for comparison with the
    store's (the FAISS index beside the table).

    ``ivf_sq``: vectors clustered into about sqrt(rows)/2 IVF partitions and
    stored as 8-bit scalars; a query scans the ``nprobes`` partitions nearest
    to it. ``ivf_pq`` compresses 16 times more (16 dimensions per code) but
    builds much more slowly and ranks coarsely; ``ivf_hnsw_sq`` builds slowest.
    """
    from lancedb.index import HnswSq, IvfPq, IvfSq

    common = dict(distance_type="dot", num_partitions=ann_partitions(rows), max_iterations=20, sample_rate=64)
    config = {"ivf_sq": lambda: IvfSq(**common), "ivf_pq": lambda: IvfPq(num_sub_vectors=DIM // 16, **common),
              "ivf_hnsw_sq": lambda: HnswSq(**common)}[kind]()
    table.create_index("vector", config=config, replace=True)


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM), Linux 4.0+
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, queries, warm_all: bool = True) -> tuple[list[float], list[np.ndarray]]:
    """Latency of each query, after a first untimed pass over them all (``warm_all``; else one query):
    a steady state, with the index pages these queries touch mapped and cached, as in a running server."""
    for q in queries if warm_all else queries[:1]:
        fn(q)
    times, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - t)
    return times, results


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def lance_search(table, q: np.ndarray, exact: bool, nprobes: int | None = None, refine: int | None = None):
    query = table.search(q, vector_column_name="vector").distance_type("dot").select(["file_id", "_distance"])
    if exact:
        query = query.bypass_vector_index()
    if nprobes:
        query = query.nprobes(nprobes)
    if refine:
        query = query.refine_factor(refine)
    return np.asarray(query.limit(LIMIT).to_arrow()["file_id"].to_pylist(), np.int64)


def in_child(fn, *args):
    """``fn(*args)`` in a fresh process (spawned: nothing of this one's memory), its result sent back."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def build_ann(path: str) -> tuple[float, dict, float]:
    """Build the store's ANN index as ``audioclip index`` does at the end of a run: seconds, state, peak RSS."""
    reset_peak_rss()
    t = time.perf_counter()
    state = LanceStore(path).build_ann(log=log)
    return time.perf_counter() - t, state, peak_rss_mb()


def measure_store(path: str, queries: np.ndarray, exact_count: int, nprobes: list[int]) -> list[tuple]:
    """The store's ANN search at each nprobe, then its exact search (which touches every vector) last."""
    store = LanceStore(path)
    out = []
    for nprobe in nprobes:
        store.NPROBE = nprobe
        reset_peak_rss()
        times, ids = timed(lambda q: store.search(q, LIMIT)["file_id"].to_numpy(), queries)
        out.append(("ivf-flat", {"nprobe": nprobe}, times, ids, peak_rss_mb()))
    reset_peak_rss()
    times, ids = timed(lambda q: store.search(q, LIMIT, exact=True)["file_id"].to_numpy(), queries[:exact_count])
    out.insert(0, ("exact", {"scan": "all lists"}, times, ids, peak_rss_mb()))
    return out


def measure_flat(path: str, queries: np.ndarray, exact_count: int) -> tuple:
    """FAISS IndexFlatIP over the table's vectors: load time, single-query latency, the exact top 10s."""
    import faiss

    table = LanceStore(path)._table(LanceStore.TABLE)
    reset_peak_rss()
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    file_ids = []
    for batch in table.search().select(["file_id", "vector"]).limit(None).to_batches(16384):
        flat.add(np.ascontiguousarray(batch.column(1).values.to_numpy().reshape(-1, DIM)))
        file_ids.append(batch.column(0).to_numpy())
    file_ids = np.concatenate(file_ids)
    flat_s = time.perf_counter() - t
    _, truth_pos = flat.search(queries, 10)  # all queries at once: the exact top 10 of each
    truth = [set(file_ids[row].tolist()) for row in truth_pos]
    best = None
    for threads in (1, os.cpu_count() or 1):  # the faster of one thread (as the store's search) and all
        faiss.omp_set_num_threads(threads)
        times, ids = timed(lambda q: file_ids[flat.search(q[None], LIMIT)[1][0]], queries[:exact_count])
        if best is None or np.median(times) < np.median(best[0]):
            best = (times, ids, threads)
    times, ids, threads = best
    return flat_s, times, ids, peak_rss_mb(), truth, threads


def measure_lance(path: str, queries: np.ndarray) -> tuple:
    table = LanceStore(path)._table(LanceStore.TABLE)
    reset_peak_rss()
    times, ids = timed(lambda q: lance_search(table, q, exact=True), queries, warm_all=False)
    return times, ids, peak_rss_mb()


def kept_store(path: str, n: int) -> LanceStore | None:
    """The store a ``--keep`` run left at ``path``, if it holds ``n`` rows and its ANN index."""
    try:
        store = LanceStore(path)
        ok = store.count_rows() == n and store.ann.describe() is not None
    except Exception:  # absent or unreadable: built anew
        return None
    return store if ok else None


def bench_size(n: int, kind: str, args, root: str) -> list[dict]:
    path = os.path.join(root, f"{kind}-n{n}")
    data = Data(kind, n)
    store = kept_store(path, n) if args.reuse else None
    if store is None:
        shutil.rmtree(path, ignore_errors=True)
        store = LanceStore(path, create=True)
        store.write_meta({"bench": True})
        t0 = time.perf_counter()
        for start in range(0, n, args.chunk):
            store.add(chunk_table(start, data.sample(min(args.chunk, n - start))))
        store.optimize(ann="off", keep_versions=datetime.timedelta(0))  # compaction and scalar indexes
        table_s = time.perf_counter() - t0
        log(f"{kind} n={n:,}: table built in {table_s:.1f} s, {disk_bytes(path) / 1e9:.2f} GB on disk")
    else:
        log(f"{kind} n={n:,}: reusing the table and ANN index in {path}")
    table = store._table(LanceStore.TABLE)

    queries = data.sample(args.queries, np.random.default_rng(12345))
    exact_count = min(len(queries), args.exact_queries)
    results: list[dict] = []

    def record(index: str, params: dict, build_s: float, times: list[float], ids: list[np.ndarray] | None,
               rss: float) -> dict:
        entry = {"n": n, "data": kind, "index": index, "params": params, "build_s": round(build_s, 2),
                 "p50_ms": round(1000 * float(np.percentile(times, 50)), 3),
                 "p99_ms": round(1000 * float(np.percentile(times, 99)), 3),
                 "recall_at_10": None, "peak_rss_mb": round(rss, 1), "queries": len(times), "_ids": ids}
        results.append(entry)
        return entry

    # the store's own search: the FAISS index beside the table, exact (every list) and ANN
    if args.reuse and store.ann.describe() is not None:  # kept: its build time as recorded then
        state = store.ann.describe()
        ann_s, lists = state["build_seconds"], state["lists"]
    else:
        ann_s, state, ann_rss = in_child(build_ann, path)
        lists = state["lists"]
        log(f"{kind} n={n:,}: ANN index ({lists} lists) built in {ann_s:.1f} s, peak RSS {ann_rss:.0f} MB")

    # Each setting is measured in a fresh process, so that its peak RSS is its own (not this one's build).
    nprobes = sorted({p for p in args.nprobe if p <= lists} or {lists})
    measured = in_child(measure_store, path, queries, exact_count, nprobes)
    for setting, params, times, ids, rss in measured:
        record(setting, {"lists": lists, **params}, ann_s, times, ids, rss)
        log(f"{kind} n={n:,}: {setting} {params}: p50 {results[-1]['p50_ms']:.2f} ms, "
            f"p99 {results[-1]['p99_ms']:.2f} ms")

    # the baseline: FAISS's flat scan of the same vectors, in memory; also the exact answers
    flat_s, times, ids, rss, truth, threads = in_child(measure_flat, path, queries, exact_count)
    record("faiss-flat", {"baseline": "IndexFlatIP in memory", "threads": threads}, flat_s, times, ids, rss)
    log(f"{kind} n={n:,}: faiss-flat p50 {results[-1]['p50_ms']:.1f} ms")

    if args.lance_queries:
        times, ids, rss = in_child(measure_lance, path, queries[:args.lance_queries])
        record("lance-exact", {"scan": "LanceDB flat"}, 0.0, times, ids, rss)
        log(f"{kind} n={n:,}: lance-exact p50 {results[-1]['p50_ms']:.1f} ms")
    for lance_kind in args.lance_ann:
        t = time.perf_counter()
        create_ann_index(table, n, lance_kind)
        index_s = time.perf_counter() - t
        parts = ann_partitions(n)
        for nprobes in [p for p in args.lance_nprobes if p <= parts] or [parts]:
            reset_peak_rss()
            times, ids = timed(lambda q: lance_search(table, q, exact=False, nprobes=nprobes), queries)
            record(f"lance-{lance_kind}", {"partitions": parts, "nprobes": nprobes}, index_s, times, ids,
                   peak_rss_mb())
            log(f"{kind} n={n:,}: lance {lance_kind} nprobes {nprobes}: p50 {results[-1]['p50_ms']:.1f} ms")

    for entry in results:
        found = entry.pop("_ids")
        entry["recall_at_10"] = round(float(np.mean([len(set(f[:10].tolist()) & truth[i]) / 10
                                                     for i, f in enumerate(found)])), 4)
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return results


def print_table(rows: list[dict]) -> None:
    header = ("vectors", "data", "index", "params", "build s", "p50 ms", "p99 ms", "p50 vs FAISS flat",
              "recall@10", "peak RSS MB")
    flat = {(r["n"], r["data"]): r for r in rows if r["index"] == "faiss-flat"}
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for r in rows:
        base = flat.get((r["n"], r["data"]))
        ratio = r["p50_ms"] / base["p50_ms"] if base and base["p50_ms"] else float("nan")
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        cells = (f"{r['n']:,}", r["data"], r["index"], params, f"{r['build_s']:.1f}", f"{r['p50_ms']:.2f}",
                 f"{r['p99_ms']:.2f}", "1" if r is base else f"{ratio:.3g}x", f"{r['recall_at_10']:.3f}",
                 f"{r['peak_rss_mb']:.0f}")
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=lambda s: int(float(s)), default=[10_000, 100_000, 1_000_000],
                        help="numbers of vectors (default: 1e4 1e5 1e6)")
    parser.add_argument("--data", nargs="+", choices=("random", "clustered"), default=["clustered"],
                        help="clustered unit vectors (default) and/or random ones")
    parser.add_argument("--nprobe", nargs="+", type=int, default=[4, 8, 16, 32, 64],
                        help="IVF lists scanned per ANN query (default: 4 8 16 32 64; the store's default is "
                        f"{LanceStore.NPROBE})")
    parser.add_argument("--queries", type=int, default=200, help="queries for ANN latency and recall (default: 200)")
    parser.add_argument("--exact-queries", type=int, default=20,
                        help="queries timed for the exact scans (default: 20)")
    parser.add_argument("--lance-queries", type=int, default=5,
                        help="queries for LanceDB's own flat scan (default: 5; 0 skips it: ~4 s each at 10^6)")
    parser.add_argument("--lance-ann", nargs="*", default=[], choices=ANN_KINDS,
                        help="also build and measure LanceDB's own ANN index of these kinds (slow to build)")
    parser.add_argument("--lance-nprobes", nargs="+", type=int, default=[20, 80],
                        help="partitions searched by LanceDB's ANN index (default: 20 80)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON (a list of objects)")
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the built tables")
    parser.add_argument("--reuse", action="store_true",
                        help="with --dir: measure the tables and ANN indexes a --keep run left there instead of "
                        "building them again (build s: as recorded by that run); implies --keep")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script in seconds: 3,000 clustered vectors in chunks of 1,000, few queries, "
                        "LanceDB's ivf_sq too; --json defaults to a file in a temporary folder")
    args = parser.parse_args(argv)
    args.chunk = CHUNK
    if args.reuse and not args.dir:
        parser.error("--reuse needs --dir (where a --keep run left its tables)")
    args.keep = args.keep or args.reuse
    if args.smoke:
        args.sizes, args.data, args.chunk, args.nprobe = [3000], ["clustered"], 1000, [2, 8]
        args.queries, args.exact_queries, args.lance_queries = 8, 3, 1
        args.lance_ann, args.lance_nprobes = ["ivf_sq"], [4]
        args.json = args.json or os.path.join(tempfile.mkdtemp(prefix="audioclip-bench-index-smoke-"), "out.json")

    import faiss
    import lancedb

    warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
    root = args.dir or tempfile.mkdtemp(prefix="audioclip-bench-index-")
    os.makedirs(root, exist_ok=True)
    need = max(args.sizes) * DIM * 4 * 2.6  # the table, the compaction's copy, the ANN index and its shards
    free = shutil.disk_usage(root).free
    if need > free:
        print(f"not enough disk in {root}: ~{need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free", file=sys.stderr)
        return 1
    log(f"lancedb {lancedb.__version__}, faiss {faiss.__version__}, {os.cpu_count()} CPU(s), "
        f"load {os.getloadavg()[0]:.1f}, {' and '.join(args.data)} data, dim {DIM}, into {root}")
    rows: list[dict] = []
    started = time.perf_counter()
    try:
        for kind in args.data:
            for n in args.sizes:
                rows += bench_size(n, kind, args, root)
                if args.json:  # as it goes, so that a long run killed late keeps what it measured
                    with open(args.json, "w") as f:
                        json.dump(rows, f, indent=1)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    if args.json:
        log(f"wrote {args.json}")
    log(f"total {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
