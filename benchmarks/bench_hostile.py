#!/usr/bin/env python
"""Work per input is bounded: peak memory of a long recording against a short clip, and a hostile header.

    .venv/bin/python benchmarks/bench_hostile.py                 # full-size model, ~4 min on 2 cores
    .venv/bin/python benchmarks/bench_hostile.py --hours 0.25    # a shorter "long" file

Each row runs ``audioclip embed`` in its own process under ``/usr/bin/time`` and
reports wall time and peak resident memory (the whole process: Python, torch,
the model, the decoded audio), on files this script generates:

- a 5 s clip (the baseline) and a long recording (default 1 h) of quiet noise,
  mono FLAC at 44.1 kHz: the long one is decoded and embedded window by window,
  so its peak should stay within 1.5 x the clip's;
- a 441 KB WAV whose header claims 1000 channels: refused from its header.

The model is a full-size AudioCLIP with random weights saved to a temporary
checkpoint (speed and memory do not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit status) of ``cmd`` run under /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        run = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd],
                             capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_kb = int(Path(report.name).read_text().split()[-1])
    if run.returncode not in (0, 3):
        print(run.stderr[-2000:], file=sys.stderr)
    return wall, peak_kb / 1024, run.returncode


def write_noise(path: Path, seconds: float, rate: int = 44100) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = rate * 60
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        left = int(seconds * rate)
        while left > 0:
            n = min(block, left)
            f.write((0.01 * rng.standard_normal(n)).astype(np.float32))
            left -= n
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="length of the long recording (default 1)")
    parser.add_argument("--checkpoint", help="weights to embed with (default: a full-size random checkpoint)")
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("audioclip"))
    with tempfile.TemporaryDirectory(prefix="audioclip-hostile-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            from audioclip import create_model, save_model

            checkpoint = str(save_model(create_model("AudioCLIP-RN50"), tmp / "AudioCLIP-RN50-random.pt"))
        clip = write_noise(tmp / "clip.flac", 5.0)
        long = write_noise(tmp / "long.flac", args.hours * 3600)
        wide = tmp / "wide.wav"
        with wave.open(str(wide), "wb") as w:
            w.setnchannels(1000)
            w.setsampwidth(2)
            w.setframerate(44100)
            w.writeframes(np.zeros(1000 * 220, np.int16).tobytes())
        base = [exe, "embed", "--checkpoint", checkpoint, "--device", "cpu", "-q", "--batch-size", "8"]
        rows = []
        for name, path in (("5 s clip", clip), (f"{args.hours:g} h recording", long),
                           (f"1000-channel header ({wide.stat().st_size / 1024:.0f} KB)", wide)):
            out = tmp / f"{path.stem}.parquet"
            wall, peak, status = measure([*base, str(path), "-o", str(out)])
            rows.append((name, wall, peak, status))
            print(f"  {name}: {wall:.1f} s, {peak:.0f} MB, exit {status}", file=sys.stderr)
    baseline = rows[0][2]
    print(f"\nCPU: {os.cpu_count()} cores; `audioclip embed` per file, full process peak RSS\n")
    print("| input | wall (s) | peak RSS (MB) | vs 5 s clip | exit status |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, wall, peak, status in rows:
        print(f"| {name} | {wall:.1f} | {peak:.0f} | {peak / baseline:.2f}x | {status} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
