#!/usr/bin/env python
"""``audioclip fit`` on ESC-10: time to embed, time to fit, and accuracy per shot count, in one table.

    .venv/bin/python benchmarks/bench_fit.py                      # ../shared/data/esc50 (400 ESC-10 clips, 5 folds)
    .venv/bin/python benchmarks/bench_fit.py --shots 1,5,all --seeds 3
    .venv/bin/python benchmarks/bench_fit.py --smoke              # generated clips, AudioCLIP-tiny: the script runs

The clips are ESC-10's 400 (the 16 kHz copy in ``audio_16k/``, decoded to
44.1 kHz as any file is), with the dataset's 5 folds from its metadata. The
evaluation is ``audioclip fit``'s own: each fold in turn is the test set;
``C``, the mixing weight and the shots come from the other four. Accuracy is
the mean ± standard deviation over ``--seeds`` draws of the shots (each
draw's predictions pooled over the five test folds).

The weights are the published ones (``full``) when they are in the cache, else
``AudioCLIP-RN50`` with random weights: the numbers then measure the
mechanics (time, that nothing breaks), not AudioCLIP's accuracy.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ESC50 = ROOT.parent / "shared" / "data" / "esc50"


def _esc10_table(root: Path, folder: Path) -> Path:
    """path,label,fold for the ESC-10 clips in ``root/audio_16k`` (files.csv lists them with their folds)."""
    rows = [r for r in csv.DictReader(open(root / "files.csv", newline="")) if r["path"].startswith("audio_16k/")]
    table = folder / "esc10.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "fold"])
        for r in rows:
            writer.writerow([str(root / r["path"]), r["category"], r["fold"]])
    return table


def _generated(folder: Path) -> Path:
    """Three classes of 1 s sounds, five clips each, in class folders (the smoke run's data)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    for name, freq in (("low", 220.0), ("high", 3000.0), ("noise", None)):
        (folder / name).mkdir(parents=True)
        for i in range(5):
            wave = 0.05 * rng.standard_normal(len(t)) + (0 if freq is None else 0.4 * np.sin(2 * np.pi * freq * t))
            sf.write(folder / name / f"{name}{i}.wav", wave.astype(np.float32), 44100)
    return folder


def _model(name: str | None, smoke: bool, device: str):
    from audioclip import create_model

    if smoke:
        return create_model("AudioCLIP-tiny", device=device), "AudioCLIP-tiny (random weights)"
    if name:
        return create_model(name, device=device), name
    try:
        return create_model("full", device=device, offline=True), "full (published weights)"
    except Exception:  # noqa: BLE001 - not in the cache: random weights, said in the table's title
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_model("AudioCLIP-RN50", device=device), "AudioCLIP-RN50 (random weights)"


def _pm(stat: dict) -> str:
    return "-" if stat["mean"] is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ESC50, help="the ESC-50 folder (files.csv, audio_16k/)")
    parser.add_argument("--checkpoint", help="weights (default: full if cached, else AudioCLIP-RN50 random)")
    parser.add_argument("--shots", default="1,5,10,all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="keep the head folder here (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="generated clips, AudioCLIP-tiny, 1 and all shots")
    args = parser.parse_args()

    from audioclip.fit import fit
    from audioclip.inference import DecodeOptions

    work = Path(tempfile.mkdtemp(prefix="bench-fit-"))
    if args.smoke:
        data, args.shots, args.seeds, what = _generated(work / "sounds"), "1,all", 2, "generated sounds (3 classes)"
    else:
        if not (args.data / "files.csv").is_file():
            print(f"bench_fit: skipped: no ESC-50 copy at {args.data} (files.csv and audio_16k/ expected)")
            return 0
        data, what = _esc10_table(args.data, work), "ESC-10 (400 clips, 5 official folds)"
    model, weights = _model(args.checkpoint, args.smoke, args.device)
    out = args.out or work / "head"
    options = DecodeOptions(window=1.0) if args.smoke else None

    start = time.perf_counter()
    first = fit(model, data, out, shots=args.shots, seeds=args.seeds, options=options, workers=args.workers,
                plot=not args.smoke)
    total = time.perf_counter() - start
    again = fit(model, data, out, shots="all", seeds=1, options=options)  # the embeddings reused; one evaluation
    report = first.report
    print(f"\n{what}; weights: {weights}; device: {next(model.parameters()).device}\n")
    print(f"- embedding {first.embedded} clips: {first.seconds_embedding:.1f} s "
          f"({first.embedded / max(first.seconds_embedding, 1e-9):.1f} clips/s)")
    print(f"- fitting and evaluating (embedding excluded): {first.seconds_fitting:.1f} s "
          f"(shots {args.shots}, {args.seeds} seed(s), C from {report['solver']['C_tried']}, 11 mixing weights)")
    print(f"- a second fit into the same folder (shots all, 1 seed): {again.seconds_embedding:.1f} s to find its "
          f"{again.reused} clips already embedded, {again.seconds_fitting:.1f} s fitting (first run in all: "
          f"{total:.1f} s)\n")
    print("| shots per class | zero-shot accuracy (%) | head accuracy (%) | mixed accuracy (%) | mixed macro F1 (%) "
          "| mixing weights chosen |")
    print("| --- | --- | --- | --- | --- | --- |")
    for entry in report["evaluation"]["shots"]:
        alphas = sorted({c["alpha"] for c in entry["chosen"]})
        print(f"| {entry['shots']} | {_pm(entry['zeroshot']['accuracy'])} | {_pm(entry['head']['accuracy'])} "
              f"| {_pm(entry['combined']['accuracy'])} | {_pm(entry['combined']['macro_f1'])} "
              f"| {', '.join(f'{a:g}' for a in alphas)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
