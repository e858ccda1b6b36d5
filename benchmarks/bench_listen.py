"""``audioclip listen`` at real time: latency, processing per hop, drops, memory, over a long recording.

A real recording (the ESC-50 clips in ../shared/data/esc50/audio, one after another, looped to
``--minutes``; a noise recording when they are absent) is played into ``audioclip listen -``
through standard input at real-time speed (raw s16le in 0.1 s pieces, each written when its
audio has "happened"), so no sound card is needed. From the per-window stream
(``--frames -``) it reports:

- latency: from the end of a window's audio to its scores being written (``emitted_s - end_s``,
  both in seconds since listening began), p50 / p99;
- processing time per window as a share of the hop (``compute_s / hop``: under 1 keeps up);
- windows scored and dropped;
- resident memory (VmRSS of the listening process) after the first minute (or a tenth of
  the run) and at the end.

One row per ``--hops`` value, so the hop at which this machine starts to drop windows can
be read off the table. The model is the full architecture ``AudioCLIP-RN50`` with random
weights by default (the same computation as the trained ``full`` weights, which need a
download). The full run::

    python benchmarks/bench_listen.py --minutes 60 --window 2 --hops 0.5

``--smoke``: 20 s of audio into the tiny architecture (numbers meaningless; every path runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ESC = ROOT.parent / "shared" / "data" / "esc50" / "audio"
RATE = 44100
PIECE_S = 0.1


def recording(seconds: float) -> tuple[np.ndarray, str]:
    """int16 mono samples of ``seconds``: the ESC-50 clips in turn (looped), else noise."""
    clips = sorted(ESC.glob("*.flac")) if ESC.is_dir() else []
    if not clips:
        rng = np.random.default_rng(0)
        return (rng.standard_normal(int(seconds * RATE)) * 3000).astype("<i2"), "noise (../shared absent)"
    import soundfile as sf

    parts, total = [], 0
    for clip in clips:
        x, rate = sf.read(clip, dtype="float32", always_2d=True)
        if rate != RATE:
            continue
        parts.append((x.mean(axis=1) * 32767).astype("<i2"))
        total += len(parts[-1])
    one = np.concatenate(parts)
    loops = int(np.ceil(seconds * RATE / len(one)))
    kind = f"{len(parts)} ESC-50 clips ({len(one) / RATE / 60:.1f} min)" + (f", looped {loops}x" if loops > 1 else "")
    return np.tile(one, loops)[: int(seconds * RATE)], kind


def rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run(samples: np.ndarray, *, window: float, hop: float, checkpoint: str, labels: str, device: str,
        max_delay: float) -> dict:
    cmd = [sys.executable, "-m", "audioclip", "listen", "-", "--format", "s16le", "--rate", str(RATE),
           "--labels", labels, "--window", str(window), "--hop", str(hop), "--checkpoint", checkpoint,
           "--device", device, "--max-delay", str(max_delay), "--frames", "-", "-v"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ready = threading.Event()
    stderr_lines: list[str] = []

    def read_stderr():
        for line in proc.stderr:
            text = line.decode(errors="replace").rstrip()
            stderr_lines.append(text)
            if "loaded " in text:
                ready.set()
        ready.set()

    windows: dict[float, dict] = {}
    duration = len(samples) / RATE
    rss = {"start": float("nan"), "end": float("nan"), "max": 0.0}
    mark = min(60.0, duration / 10)

    def read_frames():
        for line in proc.stdout:
            row = json.loads(line)
            windows.setdefault(row["start_s"], row)
            if row["end_s"] >= mark and rss["start"] != rss["start"]:  # NaN: not measured yet
                rss["start"] = rss_mb(proc.pid)

    threads = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_frames, daemon=True)]
    for t in threads:
        t.start()
    ready.wait(600)
    time.sleep(1.0)  # the labels' text embeddings follow the model's loading
    piece = int(PIECE_S * RATE)
    began = time.monotonic()
    try:
        for i in range(0, len(samples), piece):
            due = began + (i + piece) / RATE  # written once its audio has been "heard"
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            proc.stdin.write(samples[i: i + piece].tobytes())
            proc.stdin.flush()
            rss["max"] = max(rss["max"], rss_mb(proc.pid))
        rss["end"] = rss_mb(proc.pid)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    status = proc.wait(600)
    for t in threads:
        t.join(10)
    if status != 0:
        raise SystemExit(f"listen failed ({status}): " + " | ".join(stderr_lines[-3:]))
    rows = sorted(windows.values(), key=lambda r: r["start_s"])
    latency = np.array([r["emitted_s"] - r["end_s"] for r in rows])
    compute = np.array([r["compute_s"] for r in rows])
    grid = int(np.floor((duration - window) / hop + 1e-9)) + 1
    return {
        "hop": hop, "window": window, "minutes": duration / 60, "windows": len(rows),
        "dropped": rows[-1]["dropped"] if rows else 0, "grid": grid,
        "p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99)),
        "share": float(np.median(compute) / hop), "share_p99": float(np.percentile(compute, 99) / hop),
        "rss_start": rss["start"], "rss_end": rss["end"], "rss_max": rss["max"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="audio played (default: 60)")
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--hops", default="0.5", help="comma-separated hops, one run each (default: 0.5)")
    parser.add_argument("--checkpoint", default="AudioCLIP-RN50",
                        help="default: the full architecture, random weights (the compute of 'full')")
    parser.add_argument("--labels", default="dog,rain,siren,crying baby,chainsaw,helicopter,rooster,crackling fire")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-delay", type=float, default=1.0,
                        help="listen's --max-delay: how long windows may wait before being dropped (default: 1)")
    parser.add_argument("--smoke", action="store_true", help="20 s into the tiny architecture")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.checkpoint, args.hops = 20 / 60, "AudioCLIP-tiny", "0.5"
    samples, kind = recording(args.minutes * 60)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = [run(samples, window=args.window, hop=float(h), checkpoint=args.checkpoint, labels=args.labels,
                   device=args.device, max_delay=args.max_delay) for h in args.hops.split(",")]
    print(f"\naudioclip listen at real time: {kind}, {args.minutes:g} min, --window {args.window:g}, "
          f"--max-delay {args.max_delay:g}, "
          f"{args.checkpoint} on {args.device}, {os.cpu_count()} CPUs, load average {load:.1f} at the start\n")
    print("| hop (s) | minutes | windows scored | dropped | latency p50 (s) | latency p99 (s) | "
          "compute / hop (median, p99) | RSS start -> end (MB) | RSS max (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['hop']:g} | {r['minutes']:.1f} | {r['windows']} of {r['grid']} | {r['dropped']} | "
              f"{r['p50']:.3f} | {r['p99']:.3f} | {r['share']:.2f}, {r['share_p99']:.2f} | "
              f"{r['rss_start']:.0f} -> {r['rss_end']:.0f} | {r['rss_max']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
