#!/usr/bin/env python
"""Same file, same vector? The audio embedding of one clip over thread counts, batch sizes and input layouts.

    .venv/bin/python benchmarks/bench_spread.py             # 8 silent + 8 other ESC-10 clips, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_spread.py --checkpoint full   # the published weights
    .venv/bin/python benchmarks/bench_spread.py --smoke     # seconds: checks the script runs (numbers meaningless)

AudioCLIP's front end takes the logarithm of a power spectrum. In a clip with
digital silence (runs of exact zeros) most bins are quiet, and a quiet bin's
float32 value is mostly the rounding of a sum of much larger terms, which
follows the order of summation: the matrix library's blocking for the batch
size, the number of threads, the CPU. This script embeds the same clips in
every combination of ``--threads``, ``--batches`` (each clip in a batch with
its neighbours) and ``--layouts`` (``contiguous``; ``strided``: a view of
every other sample of an interleaved stereo buffer, as decoders return), once
per audio mode (``default``, the command line's; ``spectrum64``, its front end
in float64). ``--isas avx2`` adds the same clips computed as on a CPU without
AVX-512 (a child process with ``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``
and ``ONEDNN_MAX_CPU_ISA`` set to AVX2: other matrix kernels, another order of
summation), at the largest thread count, batch 1. It prints Markdown tables:

- spread: per clip, the smallest cosine between its embeddings in any two
  settings; the worst clip and the median, how many clips were bit-identical
  in every setting, and how many clips' zero-shot top-1 label ("a sound of
  <ESC-10 category>") changed with the setting;
- agreement: the smallest cosine between the two modes' embeddings of a clip
  (same setting), on the silent clips and on clips without digital silence;
- cost: milliseconds per clip of each mode in each setting (the modes
  alternate, so a busy phase of a shared machine hits both), and the ratio.

Silent clips: the ESC-10 clips at 44.1 kHz in ../shared/data with the longest
runs of exact zeros; weights: the deterministic reference weights of the tests
(the published ones may not be downloadable), or ``--checkpoint``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # reference_weights: the deterministic weight rule
ESC50 = ROOT.parent / "shared" / "data" / "esc50"
MODES = ("default", "spectrum64")
SECONDS = 5.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def zero_run(wave: np.ndarray) -> int:
    """Length of the longest run of samples that are exactly zero in every channel."""
    silent = np.concatenate([[False], (wave == 0).all(axis=0), [False]])
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max(initial=0))


def esc10_clips(silent: int, other: int) -> tuple[list[dict], list[dict]]:
    """The ``silent`` 44.1 kHz ESC-10 clips with the longest zero runs, and ``other`` clips with none."""
    from audioclip.media import load_audio

    with open(ESC50 / "files.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["path"].startswith("audio/")]
    clips = []
    for r in rows:
        wave = load_audio(ESC50 / r["path"])[:, : int(SECONDS * 44100)]
        clips.append(dict(name=Path(r["path"]).stem, category=r["category"], wave=wave,
                          zeros=zero_run(wave.numpy()) / 44100))
    clips.sort(key=lambda c: -c["zeros"])
    quiet = [c for c in clips if c["zeros"] >= 0.1]  # a tenth of a second of exact zeros
    loud = [c for c in clips if c["zeros"] < 0.001]  # a few zero crossings that land on 0 are not silence
    step = max(1, len(loud) // max(1, other))
    return quiet[:silent], loud[::step][:other]


def generated_clips(samples: int) -> tuple[list[dict], list[dict]]:
    """``--smoke``: two clips of noise, half of each digital silence, and one without."""
    rng = np.random.default_rng(0)
    clips = []
    for i in range(3):
        wave = (0.1 * rng.standard_normal((1, samples))).astype(np.float32)
        if i < 2:
            wave[:, : samples // 2] = 0.0
        clips.append(dict(name=f"generated-{i}", category=("rain", "dog")[i % 2], wave=torch.from_numpy(wave),
                          zeros=zero_run(wave) / 44100))
    return clips[:2], clips[2:]


def laid_out(batch: torch.Tensor, layout: str) -> torch.Tensor:
    """``batch`` ``(n, channels, samples)`` as ``layout``: the same values, another memory layout."""
    if layout == "contiguous":
        return batch.contiguous()
    if layout == "strided":  # every other sample of an interleaved (n, samples, 2 * channels) buffer
        n, channels, samples = batch.shape
        buffer = torch.zeros(n, samples, 2 * channels)
        buffer[..., ::2] = batch.transpose(1, 2)
        return buffer[..., ::2].transpose(1, 2)
    raise ValueError(f"unknown layout {layout!r}")


def embed(model, waves: torch.Tensor, batch: int, layout: str) -> tuple[torch.Tensor, float]:
    """Embeddings of ``waves`` ``(n, channels, samples)``, ``batch`` clips per call; and the seconds it took."""
    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(waves), batch):
            out.append(model.encode_audio(laid_out(waves[i : i + batch], layout)))
    return torch.cat(out).float(), time.perf_counter() - start


ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def other_isa(isa: str, argv: list[str], folder: Path) -> dict[str, torch.Tensor]:
    """The silent clips' embeddings per mode, computed in a child process limited to ``isa``'s kernels."""
    import subprocess

    out = folder / f"{isa}.pt"
    env = {**os.environ, **ISA_ENV[isa]}
    subprocess.run([sys.executable, __file__, *argv, "--child", str(out)], env=env, check=True)
    return torch.load(out, weights_only=True)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silent", type=int, default=8, help="ESC-10 clips with digital silence (default 8)")
    parser.add_argument("--other", type=int, default=8, help="ESC-10 clips without it, for the agreement (default 8)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch thread counts (default 1 2)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--layouts", nargs="+", choices=("contiguous", "strided"), default=["contiguous", "strided"])
    parser.add_argument("--isas", nargs="*", choices=sorted(ISA_ENV), default=["avx2"],
                        help="also compute as on a CPU with only these instruction sets (default: avx2)")
    parser.add_argument("--checkpoint", help="weights (registry name or file; default: the reference weights)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script in seconds: AudioCLIP-tiny, three generated 0.5 s clips, batches 1 "
                        "and 2; --json defaults to a file in a temporary folder")
    argv = sys.argv[1:]
    args = parser.parse_args()

    from audioclip import AudioCLIP, create_model
    from audioclip.model import apply_audio_mode

    if args.smoke:
        args.batches, args.silent = [1, 2], 2
        if not args.child:
            args.json = args.json or str(Path(tempfile.mkdtemp(prefix="audioclip-bench-spread-")) / "spread.json")
        torch.manual_seed(0)
        model, weights = create_model("AudioCLIP-tiny"), "AudioCLIP-tiny, random weights"
        silent, other = generated_clips(22050)
    else:
        if args.checkpoint:
            model, weights = create_model(args.checkpoint), args.checkpoint
        else:
            from reference_weights import reference_state_dict

            model, weights = AudioCLIP().eval(), "the deterministic reference weights (salt public-v1)"
            model.load_state_dict(reference_state_dict(model, "public-v1"))
        if not (ESC50 / "files.csv").is_file():
            raise SystemExit(f"the ESC-10 clips are not at {ESC50}")
        log("reading the ESC-10 clips")
        silent, other = esc10_clips(args.silent, args.other)
    models = {mode: apply_audio_mode(model, mode) for mode in MODES}
    waves = torch.stack([c["wave"] for c in silent])
    if args.child:  # one setting, for the parent: the largest thread count, batch 1, contiguous
        torch.set_num_threads(max(args.threads))
        torch.save({mode: embed(models[mode], waves, 1, "contiguous")[0] for mode in MODES}, args.child)
        return 0
    categories = sorted({c["category"] for c in silent + other})
    with torch.inference_mode():
        text = F.normalize(model.encode_text([f"a sound of {c.replace('_', ' ')}" for c in categories]), dim=-1)

    load_before, threads_before = os.getloadavg(), torch.get_num_threads()
    settings = list(itertools.product(args.threads, args.batches, args.layouts))
    vectors = {mode: {} for mode in MODES}
    seconds = {mode: {} for mode in MODES}
    for threads, batch, layout in settings:
        torch.set_num_threads(threads)
        log(f"{threads} thread(s), batch {batch}, {layout}")
        for mode in MODES:  # alternating: a busy phase of the machine hits both
            vectors[mode][threads, batch, layout], seconds[mode][threads, batch, layout] = \
                embed(models[mode], waves, batch, layout)
    torch.set_num_threads(threads_before)
    with tempfile.TemporaryDirectory() as folder:
        for isa in args.isas:
            log(f"{isa} kernels (a child process), {max(args.threads)} thread(s), batch 1, contiguous")
            for mode, vecs in other_isa(isa, argv, Path(folder)).items():
                vectors[mode][isa] = vecs
    settings_all = settings + list(args.isas)
    log("agreement of the modes on the other clips")
    agree_other = None
    if other:
        others = torch.stack([c["wave"] for c in other])
        agree_other = cosine(embed(models["default"], others, 1, "contiguous")[0],
                             embed(models["spectrum64"], others, 1, "contiguous")[0])

    rows = []
    for mode in MODES:
        stack = torch.stack([vectors[mode][s] for s in settings_all])  # (settings, clips, dim)
        worst = torch.ones(len(silent), dtype=torch.float64)
        for a, b in itertools.combinations(range(len(settings_all)), 2):
            worst = torch.minimum(worst, cosine(stack[a], stack[b]))
        native = torch.ones(len(silent), dtype=torch.float64)  # this CPU's own kernels only
        for a, b in itertools.combinations(range(len(settings)), 2):
            native = torch.minimum(native, cosine(stack[a], stack[b]))
        identical = sum(all(torch.equal(stack[0, i], stack[s, i]) for s in range(len(settings_all)))
                        for i in range(len(silent)))
        labels = (F.normalize(stack, dim=-1) @ text.T).argmax(dim=-1)  # (settings, clips)
        changed = int((labels != labels[:1]).any(dim=0).sum())
        rows.append(dict(mode=mode, clips=len(silent), settings=len(settings_all), min_cosine=float(worst.min()),
                         native_min_cosine=float(native.min()),
                         median_min_cosine=float(worst.median()), identical=identical, label_changes=changed,
                         per_clip={c["name"]: float(w) for c, w in zip(silent, worst)}))
    reference = settings[0]
    agree_silent = cosine(vectors["default"][reference], vectors["spectrum64"][reference])
    cost = [dict(threads=t, batch=b, layout=lay, **{f"{m}_ms": 1000 * seconds[m][t, b, lay] / len(silent)
                                                    for m in MODES}) for t, b, lay in settings]

    zeros = ", ".join(f"{c['zeros']:.1f}" for c in silent)
    print(f"\n{len(silent)} clips with digital silence (longest zero runs, s: {zeros}), {weights}; settings: threads "
          f"{' '.join(map(str, args.threads))} x batch {' '.join(map(str, args.batches))} x layout "
          f"{' '.join(args.layouts)} ({len(settings)}), plus {' and '.join(args.isas) or 'no'} kernels; torch {torch.__version__}, {os.cpu_count()} CPUs, load "
          f"average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| audio mode | min cosine, this CPU's settings | min cosine, all settings (worst clip) | median clip | "
          "clips bit-identical in every setting | clips whose zero-shot top-1 changed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {r['native_min_cosine']:.6f} | {r['min_cosine']:.6f} | {r['median_min_cosine']:.6f} | "
              f"{r['identical']} of {r['clips']} | {r['label_changes']} of {r['clips']} |")
    print("\n| default vs spectrum64, same setting | clips | min cosine | median cosine |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| clips with digital silence | {len(silent)} | {float(agree_silent.min()):.6f} | "
          f"{float(agree_silent.median()):.6f} |")
    if agree_other is not None:
        print(f"| clips without | {len(other)} | {float(agree_other.min()):.6f} | {float(agree_other.median()):.6f} |")
    print("\n| threads | batch | layout | default ms/clip | spectrum64 ms/clip | spectrum64 / default |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for c in cost:
        print(f"| {c['threads']} | {c['batch']} | {c['layout']} | {c['default_ms']:.0f} | {c['spectrum64_ms']:.0f} | "
              f"{c['spectrum64_ms'] / c['default_ms']:.2f}x |")
    total = {m: sum(c[f"{m}_ms"] for c in cost) for m in MODES}
    print(f"\nAll settings together: spectrum64 takes {total['spectrum64'] / total['default']:.2f}x the default's time "
          f"(median ratio {statistics.median(c['spectrum64_ms'] / c['default_ms'] for c in cost):.2f}x).")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            weights=weights, settings=[list(s) for s in settings] + list(args.isas), spread=rows, cost=cost,
            agreement=dict(silent=agree_silent.tolist(), other=None if agree_other is None else agree_other.tolist()),
            clips=[dict(name=c["name"], zeros_s=c["zeros"]) for c in silent]), indent=1))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
