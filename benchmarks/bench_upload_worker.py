#!/usr/bin/env python
"""The search page's decode worker is bounded: its peak memory on ordinary and hostile query uploads.

    .venv/bin/python benchmarks/bench_upload_worker.py            # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_upload_worker.py --smoke    # tiny files: a few seconds

``audioclip serve`` decodes each uploaded query in a worker process forked from
a fork server that has imported torch and the decoders (``index/uploads.py``).
Each row here runs that worker's function, ``_decode_worker``, the same way (a
``forkserver`` process, the query options of an index with the default model
options, the default bound on decoded bytes) and reports its wall time, its
peak resident memory (``VmHWM``, which includes the ~0.45 GB the fork server
holds before a byte is decoded) and what it decided, on files this script
generates:

- a 5 s stereo clip and a 600 s stereo FLAC (44.1 kHz, two tones): the longest
  recording a query may be, decoded window by window;
- a 944 KB WAV of 8 channels at 100 Hz lasting 590 s (830 MB once decoded at
  44.1 kHz): refused from its header, before decoding;
- the same file with the header check switched off, as for a format whose
  header states no length: what the worker's memory cap (``RLIMIT_DATA``,
  ``WORKER_MEMORY`` beyond its start) stops;
- a PNG of 128 megapixels (the media limits' largest picture; simple stripes,
  so the file is small): it must decode within the memory cap.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _worker(path: str, folder: str, header_check: bool, queue) -> None:
    from audioclip.index import uploads
    from audioclip.media.files import DecodeOptions

    options = uploads.query_options(DecodeOptions(), 600.0)
    if not header_check:
        uploads._stated_too_large = lambda *args: False
    start = time.perf_counter()
    uploads._decode_worker(path, options, folder, uploads.decoded_bound(options))
    wall = time.perf_counter() - start
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    if meta["too_large"]:
        outcome = "refused: " + ("over the memory cap" if meta["too_large"] == "memory" else "too large once decoded")
    elif meta["error"]:
        outcome = "error: " + meta["error"]
    else:
        outcome = f"decoded ({len(meta['spans'])} windows{', a picture' if meta['frame'] else ''})"
    queue.put((wall, peak, outcome))


def run(context, path: Path, header_check: bool = True) -> tuple[float, float, str]:
    folder = tempfile.mkdtemp(prefix="audioclip-query-")
    try:
        query = os.path.join(folder, "query" + path.suffix)
        shutil.copyfile(path, query)
        queue = context.Queue()
        process = context.Process(target=_worker, args=(query, folder, header_check, queue))
        process.start()
        process.join(600)
        if process.exitcode != 0:
            return float("nan"), float("nan"), f"worker died (exit {process.exitcode})"
        return queue.get(timeout=10)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write(path: Path, seconds: float, rate: int, channels: int, tones: bool = False) -> Path:
    import soundfile as sf

    n = int(seconds * rate)
    if tones:
        t = np.arange(n) / rate
        wave = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (440, 330)[:channels]], 1)
    else:
        wave = 0.1 * np.random.default_rng(channels).standard_normal((n, channels))
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny files, to check that the script runs")
    args = parser.parse_args()
    long_s, hostile_s = (20.0, 60.0) if args.smoke else (600.0, 590.0)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["audioclip.index.uploads"])
    with tempfile.TemporaryDirectory(prefix="audioclip-bench-upload-") as tmp:
        tmp = Path(tmp)
        clip = write(tmp / "clip.flac", 5.0, 44100, 2, tones=True)
        long = write(tmp / "long.flac", long_s, 44100, 2, tones=True)
        hostile = write(tmp / "hostile.wav", hostile_s, 100, 8)
        size = hostile.stat().st_size / 1000
        cases = [("5 s clip (stereo FLAC)", clip, True), (f"{long_s:g} s recording (stereo FLAC)", long, True),
                 (f"{size:.0f} KB WAV, 8 ch at 100 Hz, {hostile_s:g} s", hostile, True),
                 ("... without the header check", hostile, False)]
        side = 800 if args.smoke else int(128e6 ** 0.5) - 2
        picture = np.zeros((side, side, 3), np.uint8)
        picture[::7] = 200
        picture[:, ::5, 1] = 90
        Image.fromarray(picture).save(tmp / "picture.png")
        del picture
        cases.append((f"{side * side / 1e6:.0f}-megapixel PNG", tmp / "picture.png", True))
        rows = []
        for name, path, check in cases:
            wall, peak, outcome = run(context, path, check)
            rows.append((name, wall, peak, outcome))
            print(f"  {name}: {wall:.2f} s, {peak:.0f} MB, {outcome}", file=sys.stderr)
    print(f"\nCPU: {os.cpu_count()} cores; the upload decode worker, peak RSS (VmHWM) of its process\n")
    print("| upload | wall (s) | peak RSS (MB) | outcome |")
    print("| --- | ---: | ---: | --- |")
    for name, wall, peak, outcome in rows:
        print(f"| {name} | {wall:.2f} | {peak:.0f} | {re.sub(r'[|]', '/', outcome)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
