#!/usr/bin/env python
"""Re-indexing is cheap: `audioclip index` wall times for a fresh index, a run with nothing to do, and a run
after every file was touched, each against the fresh index in the same run; plus a no-op run with a
full-size checkpoint.

    .venv/bin/python benchmarks/bench_reindex.py                    # 2,000 clips, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_reindex.py --files 200        # a quick look
    .venv/bin/python benchmarks/bench_reindex.py --skip-full-size   # without the 0.5 GB checkpoint
    .venv/bin/python benchmarks/bench_reindex.py --smoke            # 4 clips, the tiny checkpoint in both parts

Every figure is one ``audioclip index`` process, start-up included (Python,
torch and LanceDB imports), timed from outside. The clips are generated
here: 1 s of noise each (mono 16-bit WAV, 44.1 kHz, distinct content), in
one folder. They are embedded with the small ``AudioCLIP-tiny`` architecture
(random weights, saved to a checkpoint file): the fresh index's time is
mostly decoding and embedding, which a re-index must not do at all. The
touched run sets every file's mtime (``os.utime``) without changing its
bytes: the content hash of each file is read, no model is loaded, and the
new mtimes are written in one commit.

The full-size row indexes a few clips with a random-weight ``AudioCLIP-RN50``
checkpoint (the published architecture, ~0.5 GB) written by this script, then
times a run with nothing to do: the checkpoint is identified by its cached
hash and the model is not loaded. It is timed once more with an empty hash
cache (the checkpoint's sha256 read again).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_clips(folder: Path, count: int, seconds: float, rate: int = 44100) -> None:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        sf.write(folder / f"clip{i:05d}.wav", (0.05 * rng.standard_normal(int(seconds * rate))).astype(np.float32),
                 rate, subtype="PCM_16")


def run_index(exe: list[str], folder: Path, db: Path, checkpoint: str, env: dict) -> tuple[float, str]:
    """Wall seconds of one ``audioclip index`` process, and its summary line."""
    cmd = [*exe, "index", str(folder), "--db", str(db), "--checkpoint", checkpoint, "--device", "cpu"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"audioclip index failed with exit status {done.returncode}")
    summary = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    print(f"  {wall:6.1f} s  {summary}", file=sys.stderr)
    return wall, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="clips to index (default 2000)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each clip (default 1 s)")
    parser.add_argument("--skip-full-size", action="store_true", help="leave out the full-size checkpoint row")
    parser.add_argument("--full-size-checkpoint", help="a full-size checkpoint to use instead of writing one")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script in seconds: 4 clips of 0.5 s, and the tiny checkpoint standing in "
                        "for the full-size one")
    args = parser.parse_args()
    if args.smoke:
        args.files, args.seconds = 4, 0.5
    script = Path(sys.executable).with_name("audioclip")  # the console script, else python -m audioclip
    exe = [str(script)] if script.is_file() else [sys.executable, "-m", "audioclip"]

    from audioclip import create_model, save_model

    with tempfile.TemporaryDirectory(prefix="audioclip-reindex-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "AUDIOCLIP_CACHE": str(tmp / "cache"), "AUDIOCLIP_OFFLINE": "1"}
        print(f"writing {args.files} clips of {args.seconds:g} s", file=sys.stderr)
        write_clips(tmp / "clips", args.files, args.seconds)
        tiny = str(save_model(create_model("AudioCLIP-tiny"), tmp / "AudioCLIP-tiny-random.pt"))
        time.sleep(2.1)  # let the checkpoint's ctime age past the hash cache's racy window

        db = tmp / "db"
        rows = []
        print("fresh index", file=sys.stderr)
        fresh, _ = run_index(exe, tmp / "clips", db, tiny, env)
        rows.append(("fresh index", fresh))
        print("nothing changed", file=sys.stderr)
        rows.append(("re-index, nothing changed", run_index(exe, tmp / "clips", db, tiny, env)[0]))
        stamp = time.time_ns() + 10**9
        for path in (tmp / "clips").iterdir():
            os.utime(path, ns=(stamp, stamp))
        print("every file touched", file=sys.stderr)
        touched, summary = run_index(exe, tmp / "clips", db, tiny, env)
        if f"{args.files} touched" not in summary:
            raise SystemExit(f"expected {args.files} touched files: {summary}")
        rows.append((f"re-index, all {args.files} touched (mtime only)", touched))

        full_rows = []
        if not args.skip_full_size:
            checkpoint = tiny if args.smoke else args.full_size_checkpoint
            if checkpoint is None:
                print("writing a full-size random-weight checkpoint", file=sys.stderr)
                checkpoint = str(save_model(create_model("AudioCLIP-RN50"), tmp / "AudioCLIP-RN50-random.pt"))
                time.sleep(2.1)
            size_mb = os.path.getsize(checkpoint) / 1e6
            few, db_full = tmp / "few", tmp / "db-full"
            if args.smoke:  # the same (tiny) checkpoint: the index built above stands in for the first run
                few, db_full = tmp / "clips", db
            else:
                few.mkdir()
                for name in sorted(os.listdir(tmp / "clips"))[:8]:
                    shutil.copy(tmp / "clips" / name, few / name)
                print("full-size: first index (8 clips)", file=sys.stderr)
                run_index(exe, few, db_full, checkpoint, env)
            print("full-size: nothing changed", file=sys.stderr)
            cached = run_index(exe, few, db_full, checkpoint, env)[0]
            print("full-size: nothing changed, empty checkpoint hash cache", file=sys.stderr)
            shutil.rmtree(tmp / "cache", ignore_errors=True)
            uncached = run_index(exe, few, db_full, checkpoint, env)[0]
            full_rows = [(f"no-op, {Path(checkpoint).name} ({size_mb:.0f} MB), hash cached", cached),
                         ("no-op, same, hash cache empty (sha256 of the file read)", uncached)]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.files} clips of {args.seconds:g} s (mono 16-bit WAV), embedded with AudioCLIP-tiny (random "
          f"weights); CPU: {os.cpu_count()} cores, load average {load:.1f} at the end. Each row is one "
          "`audioclip index` process, start-up included.\n")
    print("| run | wall (s) | vs fresh index |")
    print("| --- | ---: | ---: |")
    for name, wall in rows:
        print(f"| {name} | {wall:.1f} | {wall / fresh:.3f}x |")
    for name, wall in full_rows:
        print(f"| {name} | {wall:.1f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
