#!/usr/bin/env python
"""``embed`` on one machine: the plain engine against ``--engine ray``, files/s and peak memory in the same run.

    .venv/bin/python benchmarks/bench_engines.py                 # ESC-10 (83 clips), full-size model, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_engines.py --files 20 --checkpoint AudioCLIP-tiny   # quick
    .venv/bin/python benchmarks/bench_engines.py --smoke   # 3 generated clips, AudioCLIP-tiny: checks the script runs

Each engine runs in a fresh child process on the same files into a new
Parquet output (the model is built first and not timed). The parent samples
the memory of the child and of every process it starts (Ray's GCS, raylet,
workers; DataLoader workers) every 0.1 s and keeps the peak of their summed
PSS, which counts shared memory (Ray's object store, torch's libraries) once.
For Ray the local instance's start is timed apart from the job. The engines
alternate over ``--rounds`` and each keeps its best round. Prints a markdown
table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ESC = ROOT.parent / "shared" / "data" / "esc50" / "audio"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(root: int) -> float:
    """Summed PSS of ``root`` and all its descendants, MiB."""
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        total += _pss_kib(pid)
        todo.extend(tree.get(pid, []))
    return total / 1024


def _pressure_s() -> float:
    """Seconds that some task waited for a CPU (Linux PSI), 0 where unavailable."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def run_child(args: argparse.Namespace, engine: str) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--files", str(args.files), "--checkpoint", args.checkpoint,
           "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--audio-dir", str(args.audio_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_pss_mib(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} run failed (exit {proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mib"] = peak[0]
    return result


def child(args: argparse.Namespace) -> None:
    import torch

    import audioclip

    files = sorted(str(p) for p in Path(args.audio_dir).iterdir() if p.suffix in (".flac", ".wav"))[: args.files]
    torch.manual_seed(0)
    model = audioclip.create_model(args.checkpoint, audio_mode="default")
    ray_start = 0.0
    options = {}
    if args.child == "ray":
        import logging

        import ray

        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        ray_start = time.perf_counter() - start
    else:
        options["workers"] = args.workers
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        report = audioclip.embed_to(model, files, Path(folder) / "emb.parquet", engine=args.child,
                                    batch_size=args.batch_size, **options)
        seconds = time.perf_counter() - start
    assert report.done == len(files) and not report.failed
    print(json.dumps({"engine": args.child, "files": len(files), "seconds": seconds, "ray_start": ray_start,
                      "threads": torch.get_num_threads()}))


def write_clips(folder: Path, count: int, seconds: float = 1.0, rate: int = 44100) -> Path:
    """``count`` WAVs of noise in ``folder``: inputs for ``--smoke``."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    for i in range(count):
        sf.write(folder / f"clip{i}.wav", (0.05 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=83, help="ESC-10 clips to embed (default: all 83)")
    parser.add_argument("--checkpoint", default="AudioCLIP-RN50",
                        help="model (default: the full-size architecture, random weights: same compute as 'full')")
    parser.add_argument("--workers", type=int, default=1, help="plain engine: DataLoader decode workers (default 1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each engine keeps its best")
    parser.add_argument("--audio-dir", type=Path, default=ESC, help="the clips to embed (default: the ESC-10 clips "
                        "in ../shared/data/esc50/audio)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script in seconds: 3 generated 1 s clips, AudioCLIP-tiny, one round")
    parser.add_argument("--child", choices=("plain", "ray"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="audioclip-bench-engines-") as folder:
            args.audio_dir = write_clips(Path(folder), 3)
            args.files, args.checkpoint, args.batch_size, args.rounds = 3, "AudioCLIP-tiny", 2, 1
            measure(args)
        return
    measure(args)


def measure(args: argparse.Namespace) -> None:
    if not args.audio_dir.is_dir():
        raise SystemExit(f"no clips at {args.audio_dir} (the ESC-10 clips are expected there; see --audio-dir)")
    load_before = os.getloadavg()
    pressure_before = _pressure_s()
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for engine in ("plain", "ray"):
            result = run_child(args, engine)
            if engine not in best or result["seconds"] < best[engine]["seconds"]:
                best[engine] = result
    load_after = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.checkpoint}; "
          f"{best['plain']['files']} clips from {args.audio_dir}; batch {args.batch_size}; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; CPU pressure (PSI some, "
          f"total over the run) {_pressure_s() - pressure_before:.0f} s\n")
    print("| engine | files/s | seconds | Ray start (s) | peak memory, all processes (MiB PSS) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for engine in ("plain", "ray"):
        r = best[engine]
        what = f"plain (`--workers {args.workers}`)" if engine == "plain" else "`--engine ray` (local, 1 actor)"
        start = f"{r['ray_start']:.1f}" if engine == "ray" else "—"
        print(f"| {what} | {r['files'] / r['seconds']:.2f} | {r['seconds']:.1f} | {start} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
