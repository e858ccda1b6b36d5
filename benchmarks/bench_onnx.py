#!/usr/bin/env python
"""ONNX Runtime against the exact PyTorch path, on this CPU, in one run.

    .venv/bin/python benchmarks/bench_onnx.py                 # exports the reference-weight model first (~2 min)
    .venv/bin/python benchmarks/bench_onnx.py --onnx-dir DIR  # an existing export (audioclip export onnx)
    .venv/bin/python benchmarks/bench_onnx.py --smoke         # AudioCLIP-tiny, random weights: checks the script runs

Prints a Markdown table: audio embedding of 5 s mono clips (clips/s at batch 1
and 8), image and text items/s, for PyTorch (the command line's default, exact
mode) and ONNX Runtime (CPU provider), with the ratio ORT / PyTorch and the
largest difference between their embeddings relative to the largest value.
Timings are the best of ``--rounds`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx-dir", help="an existing export of the same weights (default: export them now)")
    parser.add_argument("--checkpoint", help="weights (default: the deterministic reference weights)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="check the script in seconds: AudioCLIP-tiny with random weights, 1 s clips, one round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = 5

    from audioclip import AudioCLIP, create_model
    from audioclip.export.onnx import OnnxAudioCLIP, export_onnx
    from audioclip.model import freeze_fbsp_kernel, tokenize

    if args.smoke:
        torch.manual_seed(0)
        model, seconds, args.rounds = create_model("AudioCLIP-tiny"), 1, 1
    elif args.checkpoint:
        model = create_model(args.checkpoint)
    else:
        from reference_weights import reference_state_dict

        model = AudioCLIP().eval()
        model.load_state_dict(reference_state_dict(model, "public-v1"))
    folder, exported = args.onnx_dir, args.onnx_dir is None
    if exported:
        folder = tempfile.mkdtemp(prefix="audioclip-onnx-")
        start = time.perf_counter()
        export_onnx(model, folder, progress=lambda m: print(f"  {m}", file=sys.stderr))
        print(f"export: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    ort_model = OnnxAudioCLIP(folder, threads=args.threads)
    torch_model = freeze_fbsp_kernel(model)

    g = torch.Generator().manual_seed(0)
    clips = torch.rand(8, 1, seconds * 44100, generator=g) * 0.2 - 0.1
    size = model.visual.image_size
    images = torch.randn(8, 3, size, size, generator=g)
    texts = tokenize([f"a sound of thing number {i}" for i in range(32)])
    cases = [
        (f"audio {seconds} s", 1, "clips", lambda m: m.encode_audio(clips[:1])),
        (f"audio {seconds} s", 8, "clips", lambda m: m.encode_audio(clips)),
        ("image", 8, "images", lambda m: m.encode_image(images)),
        ("text", 32, "texts", lambda m: m.encode_text(texts)),
    ]
    rows = []
    for name, batch, unit, fn in cases:
        with torch.inference_mode():
            a, b = fn(torch_model), fn(ort_model)  # warm-up, and the outputs to compare
            error = float((a - b).abs().max() / a.abs().max())
            times = {"pytorch": [], "onnxruntime": []}
            for _ in range(args.rounds):  # interleaved, so a slow phase hits both
                times["pytorch"].append(best(lambda: fn(torch_model), 1))
                times["onnxruntime"].append(best(lambda: fn(ort_model), 1))
        pt, ort = batch / min(times["pytorch"]), batch / min(times["onnxruntime"])
        rows.append((name, batch, unit, pt, ort, error))
    if exported:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\nCPU: {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}\n")
    print("| input | batch | PyTorch (default mode) | ONNX Runtime | ORT / PyTorch | max diff / max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, batch, unit, pt, ort, error in rows:
        print(f"| {name} | {batch} | {pt:.2f} {unit}/s | {ort:.2f} {unit}/s | {ort / pt:.2f}x | {error:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
