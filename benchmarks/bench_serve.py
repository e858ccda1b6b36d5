#!/usr/bin/env python
"""The search page keeps answering: text search latency while a long recording is uploaded as a query.

    .venv/bin/python benchmarks/bench_serve.py                      # full-size model, ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_serve.py --tiny               # AudioCLIP-tiny: a quick check
    .venv/bin/python benchmarks/bench_serve.py --upload-minutes 5 --searches 50
    .venv/bin/python benchmarks/bench_serve.py --smoke              # AudioCLIP-tiny, a 6 s upload: checks the script

A small index (a few generated 3 s WAVs) is built with the model and served by
``make_server`` in this process (port 0, a background thread). Then, over HTTP
on 127.0.0.1, each request on a new connection:

- idle: ``--searches`` text searches (``GET /api/search?q=...``) one after the
  other, with nothing else running: the baseline;
- during an upload: a long recording (default 10 minutes of quiet noise, mono
  16-bit FLAC at 44.1 kHz, ~16 MB: under the server's 20 MB upload cap) is
  POSTed as an audio query from a thread, and text searches are sent back to
  back until it is answered. The server decodes it in a worker process and
  embeds it here ``upload_batch`` windows per hold of the model lock, which the
  text searches also take (``index/uploads.py``): each search should wait for
  at most one batch, not for the whole upload. These searches are also shown
  in two parts: sent before the server began to embed (the body received and
  decoded in the worker) and after.

A second upload, sent as soon as the first holds the server's one decoding
slot (``max_uploads=1``), should be refused 503 at once. The table gives median, p90 and max
latency of each phase, how many searches were answered, and the ratio of the
medians to the idle one; a line gives the upload's wall time and status. The
model has random weights (speed does not depend on their values), written to a
temporary checkpoint unless ``--checkpoint`` is given.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

QUERIES = ["rain on a window", "a dog barking", "church bells", "footsteps", "an engine starting", "birdsong"]


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON answer, seconds) of one request on a new connection."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        payload = json.loads(response.read() or b"{}")
        return response.status, payload, time.perf_counter() - start
    finally:
        conn.close()


def search(port: int, i: int) -> float:
    q = QUERIES[i % len(QUERIES)].replace(" ", "+")
    status, payload, took = request(port, "GET", f"/api/search?q={q}&k=10")
    if status != 200:
        raise SystemExit(f"text search answered {status}: {payload}")
    return took


def upload(port: int, data: bytes, name: str) -> tuple[int, dict, float]:
    return request(port, "POST", f"/api/search?kind=audio&name={name}&k=5", body=data,
                   headers={"X-Audioclip": "1", "Content-Type": "application/octet-stream"})


def write_noise(path: Path, seconds: float, amplitude: float, rate: int = 44100, seed: int = 0) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        left = int(seconds * rate)
        while left > 0:
            n = min(rate * 60, left)
            f.write((amplitude * rng.standard_normal(n)).astype(np.float32))
            left -= n
    return path


def summary(name: str, latencies: list[float], baseline: float | None) -> str:
    ms = sorted(1000 * t for t in latencies)
    median = statistics.median(ms)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    ratio = f"{median / baseline:.2f}x" if baseline else "1.00x"
    return f"| {name} | {median:.0f} | {p90:.0f} | {ms[-1]:.0f} | {len(ms)} | {ratio} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="weights to use (default: a random-weight checkpoint written here)")
    parser.add_argument("--tiny", action="store_true", help="AudioCLIP-tiny instead of the full-size AudioCLIP-RN50")
    parser.add_argument("--upload-minutes", type=float, default=10.0, help="length of the upload (default 10)")
    parser.add_argument("--searches", type=int, default=30, help="idle text searches (default 30)")
    parser.add_argument("--upload-batch", type=int, help="windows per hold of the model lock (default: the server's)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script in seconds: --tiny, a 6 s upload, 3 searches, 1 window per batch")
    args = parser.parse_args()
    if args.smoke:
        args.tiny, args.upload_minutes, args.searches, args.upload_batch = True, 0.1, 3, 1

    import torch

    from audioclip import create_model, save_model
    from audioclip.index import Index
    from audioclip.index import server as serving
    from audioclip.index.uploads import QUERY_BATCH, start_worker_pool

    load_before = os.getloadavg()
    config = "AudioCLIP-tiny" if args.tiny else "AudioCLIP-RN50"
    with tempfile.TemporaryDirectory(prefix="audioclip-serve-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            print(f"writing a random-weight {config} checkpoint", file=sys.stderr)
            torch.manual_seed(0)
            checkpoint = str(save_model(create_model(config), tmp / f"{config}-random.pt"))
        media = tmp / "media"
        media.mkdir()
        for i in range(6):
            write_noise(media / f"clip{i}.wav", 3.0, 0.05, seed=i + 1)
        print("indexing 6 clips", file=sys.stderr)
        index = Index.open(tmp / "db", checkpoint=checkpoint, config=None if args.checkpoint else config,
                           device="cpu")
        index.add(media)
        seconds = args.upload_minutes * 60
        long = write_noise(tmp / "long.flac", seconds, 0.0002)  # quiet: FLAC packs it into ~1.6 MB a minute
        data = long.read_bytes()
        clip = (media / "clip0.wav").read_bytes()
        options = {"max_uploads": 1}
        if len(data) > 20_000_000:
            options["max_upload"] = len(data)
        if seconds > 600:
            options["max_query_seconds"] = seconds
        if args.upload_batch:
            options["upload_batch"] = args.upload_batch
        server = serving.make_server(index, port=0, quiet=True, **options).start()
        start_worker_pool()  # the decoding workers' fork server is up (it imports torch) before the baseline
        try:
            for i in range(3):  # warm-up
                search(server.port, i)
            print(f"{args.searches} text searches, idle", file=sys.stderr)
            idle = [search(server.port, i) for i in range(args.searches)]

            print(f"uploading {args.upload_minutes:g} min ({len(data) / 1e6:.1f} MB) with text searches meanwhile",
                  file=sys.stderr)
            done: dict = {}
            embed = serving.embed_upload

            def timed_embed(*args, **kwargs):  # the server's embed_upload, its start noted
                done["embedding"] = time.perf_counter()
                return embed(*args, **kwargs)

            serving.embed_upload = timed_embed

            def send():
                done["status"], done["answer"], done["took"] = upload(server.port, data, "long.flac")
                done["at"] = time.perf_counter()

            uploader = threading.Thread(target=send)
            uploader.start()
            # The second upload is sent once the first holds the one decoding slot (its body is whole), so
            # that it is refused however slowly a loaded machine receives the first; 30 s at most.
            waited = time.perf_counter()
            while server.site.uploads == 0 and uploader.is_alive() and time.perf_counter() - waited < 30:
                time.sleep(0.01)
            probe_at = time.perf_counter()
            busy_status, _, busy_took = upload(server.port, clip, "second.wav")
            sent = []  # (sent at, latency)
            while uploader.is_alive():
                at = time.perf_counter()
                sent.append((at, search(server.port, len(sent))))
            uploader.join()
            during = [(at, took) for at, took in sent if at < done["at"]]  # sent before the upload was answered
        finally:
            server.shutdown()
            server.server_close()

    if done["status"] != 200:
        print(f"the upload was answered {done['status']}: {done['answer']}", file=sys.stderr)
    base = statistics.median(1000 * t for t in idle)
    load = os.getloadavg()
    changed = ", ".join(f"{k}={v}" for k, v in options.items())
    model = f"{config} (random weights)" if args.checkpoint is None else args.checkpoint
    print(f"\n{model}, CPU: {os.cpu_count()} "
          f"cores, load average {load_before[0]:.2f} before and {load[0]:.2f} after (1 min). Server options: "
          f"{changed}; upload batch {args.upload_batch or QUERY_BATCH} windows. Each search is a new connection.\n")
    print("| request | median (ms) | p90 (ms) | max (ms) | answered | median vs idle |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(summary("text search, idle", idle, None))
    embedding = done.get("embedding", done["at"])
    for name, part in ((f"text search, during a {args.upload_minutes:g}-minute upload", during),
                       ("... sent while it was received and decoded", [p for p in during if p[0] < embedding]),
                       ("... sent while it was embedded", [p for p in during if p[0] >= embedding])):
        if part:
            print(summary(name, [took for _, took in part], base))
    print(f"\nUpload: {args.upload_minutes:g} min mono FLAC, {len(data) / 1e6:.1f} MB, answered {done['status']} "
          f"after {done['took']:.1f} s, the last {done['at'] - embedding:.1f} s embedding it; a second upload "
          f"{probe_at - waited:.1f} s in was answered {busy_status} in {1000 * busy_took:.0f} ms"
          f"{'' if probe_at < done['at'] else ' (sent after the first was answered)'}.")
    refused = busy_status == 503 or probe_at >= done["at"]
    if not refused:
        print(f"the second upload, sent while the first held the decoding slot, was answered {busy_status}",
              file=sys.stderr)
    return 0 if done["status"] == 200 and refused else 1


if __name__ == "__main__":
    sys.exit(main())
