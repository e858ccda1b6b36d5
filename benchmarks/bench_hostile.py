#!/usr/bin/env python
"""Work per input is bounded: peak memory of long and low-rate recordings against a short clip, and a hostile header.

    .venv/bin/python benchmarks/bench_hostile.py                 # full-size model; the 3 h file takes hours on 2 cores
    .venv/bin/python benchmarks/bench_hostile.py --hours 0 --low-rate-hours 0.1   # low-rate files and the clip only
    .venv/bin/python benchmarks/bench_hostile.py --smoke         # tiny model and files: every row, in seconds

Each row runs ``audioclip embed`` in its own process under ``/usr/bin/time`` and
reports wall time and peak resident memory (the whole process: Python, torch,
the model, the decoded audio), on files this script generates:

- a 5 s clip (the baseline) and a long recording (default 1 h) of quiet noise,
  mono FLAC at 44.1 kHz: the long one is decoded and embedded window by window,
  so its peak should stay within 1.5 x the clip's;
- two 8-channel 16-bit WAVs at very low sample rates, small files that grow
  441-fold or 4410-fold on their way to 44.1 kHz: 100 Hz for 590 s (944 KB)
  and 10 Hz for 3 h (1.7 MB, ``--low-rate-hours``). Decoding is bounded in
  output samples, so their peak should stay near that of a 40 s 8-channel
  clip at 44.1 kHz, their baseline: the model runs every channel of every
  window through the audio trunk, so a full batch of eight 5 s windows of 8
  channels (64 trunk inputs) takes more memory than one mono clip, whatever
  the file's length. Their wall time is the model's too: 590 s x 8 channels
  is 944 trunk passes;
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


def measure(cmd: list[str], expected: int = 0) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit status) of ``cmd`` run under /usr/bin/time; its errors shown if unexpected."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        run = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd],
                             capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_kb = int(Path(report.name).read_text().split()[-1])
    if run.returncode != expected:
        print(run.stderr[-2000:], file=sys.stderr)
    return wall, peak_kb / 1024, run.returncode


def write_noise(path: Path, seconds: float, rate: int = 44100, channels: int = 1) -> Path:
    """Quiet noise, 16-bit, written a minute at a time (the format follows the suffix)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = rate * 60
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, subtype="PCM_16") as f:
        left = round(seconds * rate)
        while left > 0:
            n = min(block, left)
            f.write((0.01 * rng.standard_normal((n, channels))).astype(np.float32))
            left -= n
    return path


def write_wide_header(path: Path) -> Path:
    """441 KB of 16-bit PCM whose header says 1000 channels at 44.1 kHz."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1000)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.zeros(1000 * 220, np.int16).tobytes())
    return path


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0,
                        help="length of the long 44.1 kHz recording (default 1; 0 leaves it out)")
    parser.add_argument("--low-rate-hours", type=float, default=3.0,
                        help="length of the 10 Hz 8-channel WAV (default 3; 0 leaves it out)")
    parser.add_argument("--checkpoint", help="weights to embed with (default: a full-size random checkpoint)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and short files: checks that every row runs, measures nothing")
    args = parser.parse_args()
    architecture = "AudioCLIP-tiny" if args.smoke else "AudioCLIP-RN50"
    scale = 1 / 600 if args.smoke else 1.0  # --smoke: 590 s -> 1 s, 3 h -> 18 s, 1 h -> 6 s
    exe = str(Path(sys.executable).with_name("audioclip"))
    with tempfile.TemporaryDirectory(prefix="audioclip-hostile-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            from audioclip import create_model, save_model

            checkpoint = str(save_model(create_model(architecture), tmp / f"{architecture}-random.pt"))
        mono = ("5 s clip", write_noise(tmp / "clip.flac", 5.0))
        # eight 5 s windows: one full batch (--batch-size 8), as every batch of a long file
        octo = ("40 s clip, 8 channels", write_noise(tmp / "clip8.wav", 40.0, channels=8))
        cases = [(*mono, mono[0]), (*octo, octo[0])]  # (name, file, the name of its baseline)
        if args.hours > 0:
            seconds = args.hours * 3600 * scale
            cases.append((f"{_duration(seconds)} recording", write_noise(tmp / "long.flac", seconds), mono[0]))
        for rate, seconds in ((100, 590.0), (10, args.low_rate_hours * 3600)):
            if seconds > 0:
                path = write_noise(tmp / f"low-{rate}hz.wav", seconds * scale, rate, channels=8)
                cases.append((f"{rate} Hz, 8 channels, {_duration(round(seconds * scale))} WAV "
                              f"({path.stat().st_size / 1024:.0f} KB)", path, octo[0]))
        wide = write_wide_header(tmp / "wide.wav")
        cases.append((f"1000-channel header ({wide.stat().st_size / 1024:.0f} KB)", wide, mono[0]))

        base = [exe, "embed", "--checkpoint", checkpoint, "--device", "cpu", "-q", "--batch-size", "8"]
        rows, peaks = [], {}
        for name, path, baseline in cases:
            out = tmp / f"{path.stem}.parquet"
            expected = 1 if path == wide else 0  # the header is refused: nothing processed
            wall, peak, status = measure([*base, str(path), "-o", str(out)], expected)
            peaks[name] = peak
            rows.append((name, wall, peak, peak / peaks[baseline], baseline, status, expected))
            print(f"  {name}: {wall:.1f} s, {peak:.0f} MB, exit {status}", file=sys.stderr)
    print(f"\nCPU: {os.cpu_count()} cores; {architecture}; `audioclip embed` per file, full process peak RSS\n")
    print("| input | wall (s) | peak RSS (MB) | vs baseline | baseline | exit status |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for name, wall, peak, ratio, baseline, status, _ in rows:
        print(f"| {name} | {wall:.1f} | {peak:.0f} | {ratio:.2f}x | {baseline} | {status} |")
    if any(status != expected for *_, status, expected in rows):
        print("unexpected exit statuses: every file but the hostile header should embed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
