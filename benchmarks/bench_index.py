"""Scale of the search index: build and query the LanceDB store at 10^4, 10^5, 10^6 vectors.

Unit vectors (1024-d float32, AudioCLIP's size) in the index's real row schema
(``audioclip.index.store``), written in chunks of 50,000 rows (one commit each,
as indexing does), so 10^6 vectors (4 GB of floats) never sit in memory at once.
For each size:

- build: time to add all rows and compact them, and on-disk size; the ANN
  index build (``store.create_ann_index``, what ``audioclip index`` does past
  ``LanceStore.ANN_MIN_ROWS`` rows) is timed separately;
- query latency p50/p99 of a top-64 search (what a ``k=10`` search asks the
  store first), exact (flat scan) vs ANN at several ``nprobes``;
- recall@10: overlap of the ANN top 10 with the exact top 10.

    python benchmarks/bench_index.py                              # 1e4, 1e5, 1e6: ~8 min here
    python benchmarks/bench_index.py --sizes 1e4 1e5              # ~1.5 min
    python benchmarks/bench_index.py --data clustered --ann ivf_sq ivf_pq --refine 10

``--data random`` (default): uniformly random unit vectors, the worst case for
an ANN index: no clusters to find, and the true top 10 barely closer than the
rest. ``--data clustered``: points scattered around 1 centre per 100 vectors,
closer to how embeddings of similar sounds and pictures group.
Writes into ``--dir`` (default: a temporary folder under /tmp, removed after).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import pyarrow as pa

from audioclip.index.store import ANN_KINDS, ROW_FIELDS, LanceStore, ann_partitions, create_ann_index, row_schema

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
    n = len(vectors)
    ids = np.arange(start, start + n, dtype=np.int64)
    columns = {
        "file_id": ids,
        "path": pa.array([f"/library/sounds/{i // 1000:04d}/clip-{i:07d}.flac" for i in ids]),
        "source": pa.array(["audio"] * n),
        "modality": pa.array(["audio"] * n),
        "kind": pa.array(["window"] * n),
        "start": np.zeros(n), "end": np.full(n, 5.0), "duration": np.full(n, 5.0),
        "size": np.full(n, 441_000, np.int64), "mtime_ns": np.full(n, 1_700_000_000_000_000_000, np.int64),
        "hash": pa.array([f"{i:032x}" for i in ids]),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
    }
    assert list(columns) == [name for name, _ in ROW_FIELDS] + ["vector"]
    return pa.table(columns, schema=row_schema(DIM))


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def search(table, q: np.ndarray, exact: bool, nprobes: int | None = None, refine: int | None = None) -> list[int]:
    query = table.search(q, vector_column_name="vector").distance_type("dot").select(["file_id", "_distance"])
    if exact:
        query = query.bypass_vector_index()
    if nprobes:
        query = query.nprobes(nprobes)
    if refine:
        query = query.refine_factor(refine)
    return query.limit(LIMIT).to_arrow()["file_id"].to_pylist()


def timed(table, queries, **kwargs) -> tuple[list[float], list[list[int]]]:
    search(table, queries[0], **kwargs)  # warm
    times, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(search(table, q, **kwargs))
        times.append(time.perf_counter() - t)
    return times, results


def row(n, method, build_s, index_s, disk, times, recall) -> dict:
    return {"n": n, "method": method, "build_s": build_s, "index_s": index_s, "disk_gb": disk / 1e9,
            "p50_ms": 1000 * float(np.percentile(times, 50)), "p99_ms": 1000 * float(np.percentile(times, 99)),
            "recall": recall, "queries": len(times)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench_size(n: int, args, root: str) -> list[dict]:
    path = os.path.join(root, f"n{n}")
    shutil.rmtree(path, ignore_errors=True)
    store = LanceStore(path, create=True)
    store.write_meta({"bench": True})
    data = Data(args.data, n)
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        store.add(chunk_table(start, data.sample(min(CHUNK, n - start))))
    table = store._table(LanceStore.TABLE)
    table.optimize()  # compaction, as after an indexing run
    build_s = time.perf_counter() - t0
    store.optimize(ann="off", keep_versions=datetime.timedelta(0))  # scalar indexes; old versions gone
    flat_disk = disk_bytes(path)
    log(f"n={n:,}: built in {build_s:.1f} s, {flat_disk / 1e9:.2f} GB on disk")

    queries = data.sample(args.queries, np.random.default_rng(12345))
    exact_count = args.exact_queries or (len(queries) if n <= 100_000 else min(10, len(queries)))
    exact_queries = queries[:exact_count]
    exact_times, exact_ids = timed(table, exact_queries, exact=True)
    rows = [row(n, "exact (flat scan)", build_s, 0.0, flat_disk, exact_times, 1.0)]
    log(f"n={n:,}: exact p50 {rows[0]['p50_ms']:.1f} ms over {len(exact_times)} queries")

    def recall(ids):
        return float(np.mean([len(set(a[:10]) & set(e[:10])) / 10 for a, e in zip(ids, exact_ids)]))

    for kind in args.ann:
        t = time.perf_counter()
        create_ann_index(table, n, kind)
        index_s = time.perf_counter() - t
        store.optimize(keep_versions=datetime.timedelta(0))  # as every indexing run ends
        disk = disk_bytes(path)
        parts = ann_partitions(n)
        probes = [p for p in args.nprobes if p <= parts] or [parts]
        settings = [(p, None) for p in probes] + ([(probes[0], args.refine)] if args.refine else [])
        for nprobes, refine in settings:
            times, ids = timed(table, queries, exact=False, nprobes=nprobes, refine=refine)
            ids = ids[: len(exact_ids)]
            name = f"{kind.upper().replace('_', '-')} ({parts} lists, nprobes {nprobes}" + (
                f", refine x{refine})" if refine else ")")
            rows.append(row(n, name, build_s, index_s, disk, times, recall(ids)))
            log(f"n={n:,}: {name}: index {index_s:.1f} s, p50 {rows[-1]['p50_ms']:.1f} ms, "
                f"recall@10 {rows[-1]['recall']:.3f}")
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return rows


def print_table(rows: list[dict]) -> None:
    header = ("vectors", "method", "build s", "ANN index s", "disk GB", "p50 ms", "p99 ms", "p50 ANN/exact",
              "recall@10")
    exact = {r["n"]: r for r in rows if r["method"].startswith("exact")}
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for r in rows:
        is_exact = r["method"].startswith("exact")
        ratio = r["p50_ms"] / exact[r["n"]]["p50_ms"]
        cells = (f"{r['n']:,}", r["method"], f"{r['build_s']:.1f}", "-" if is_exact else f"{r['index_s']:.1f}",
                 f"{r['disk_gb']:.3f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                 "1" if is_exact else f"{ratio:.3f} ({1 / ratio:.0f}x faster)", f"{r['recall']:.3f}")
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=lambda s: int(float(s)), default=[10_000, 100_000, 1_000_000],
                        help="numbers of vectors (default: 1e4 1e5 1e6; about 8 minutes on 2 busy cores)")
    parser.add_argument("--data", choices=("random", "clustered"), default="random",
                        help="random unit vectors (default) or clustered ones")
    parser.add_argument("--ann", nargs="*", default=["ivf_sq"], choices=ANN_KINDS,
                        help="ANN index types to compare with the exact scan (default: ivf_sq, the index's)")
    parser.add_argument("--nprobes", nargs="+", type=int, default=[20, 80],
                        help="IVF partitions searched per query (default: 20, LanceDB's default, and 80)")
    parser.add_argument("--refine", type=int, default=0,
                        help="also measure with this refine factor (exact re-scoring of this many times the rows "
                        "asked for; useful with ivf_pq); default 0: none")
    parser.add_argument("--queries", type=int, default=50, help="queries for ANN latency (default: 50)")
    parser.add_argument("--exact-queries", type=int, default=None,
                        help="queries for exact latency and recall (default: all --queries up to 10^5 vectors, "
                        "10 beyond: an exact query reads every vector)")
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the built tables")
    args = parser.parse_args(argv)

    import lancedb

    warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
    root = args.dir or tempfile.mkdtemp(prefix="audioclip-bench-index-")
    os.makedirs(root, exist_ok=True)
    need = max(args.sizes) * DIM * 4 * 1.6  # the vectors, the compaction's copy, the index
    free = shutil.disk_usage(root).free
    if need > free:
        print(f"not enough disk in {root}: ~{need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free", file=sys.stderr)
        return 1
    log(f"lancedb {lancedb.__version__}, {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}, "
        f"{args.data} data, dim {DIM}, into {root}")
    rows = []
    started = time.perf_counter()
    try:
        for n in args.sizes:
            rows += bench_size(n, args, root)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    log(f"total {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
