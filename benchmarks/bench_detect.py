#!/usr/bin/env python
"""Sound events over time: the two ways of scoring a long recording, side by side, and event F1.

    .venv/bin/python benchmarks/bench_detect.py                      # a 1 h recording, RN50-size random weights
    .venv/bin/python benchmarks/bench_detect.py --minutes 10         # a shorter recording (a busy machine)
    .venv/bin/python benchmarks/bench_detect.py --smoke              # seconds: checks the script runs

1. Cost and agreement. A recording of ``--minutes`` minutes is made from the real ESC-10
   clips in ../shared/data (soundscapes: clips at random onsets over noise; white noise
   alone where the clips are absent) and written as 16-bit FLAC. Each method runs in its
   own process (``--threads`` threads), which reports its wall time and its peak resident
   memory (``ru_maxrss``):

   - ``columns``: one pass of the audio head over stretches (a score every 0.41 s);
   - ``windows``: 5 s windows every 0.5 s, on the first ``--windows-minutes`` minutes only
     (its cost per second of audio does not depend on the length; memory is measured on
     that stretch too, and is flat in the length since the recording is streamed).

   Real-time factor = seconds of compute per second of audio. Agreement: for each 5 s
   window, the window's scores against the mean of the column scores whose stretch lies in
   that window: mean absolute difference, Pearson r over all scores, and how often both
   rank the same label first.
2. Event F1 on synthetic soundscapes (``audioclip.detection.synthetic``): ESC-10 clips mixed
   over noise at 0-12 dB SNR, scored by sed_eval (event-based, 200 ms collar; segment-based,
   1 s), for the ESC-10 labels zero-shot and for a head fitted by ``audioclip.fit`` (what
   ``audioclip fit`` runs). Each class's clips are split in two halves by recording (the takes
   of one ESC-50 recording on one side): the head is fitted on the first (at most
   ``--train-clips`` per class, at least 2), the soundscapes are made of the second: the same
   classes, other recordings. With random weights (the default:
   the published checkpoint is a download) the F1 measures the mechanics only.

Weights: ``--checkpoint`` (default ``AudioCLIP-RN50``: the full-size architecture with its
deterministic random weights, the same in every process; ``full`` for the published ones).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ESC50 = ROOT.parent / "shared" / "data" / "esc50"
LABELS_FALLBACK = ["dog", "rain", "sea waves", "crying baby", "clock tick", "sneezing", "helicopter", "chainsaw",
                   "rooster", "crackling fire"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _model(checkpoint: str):
    import audioclip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return audioclip.create_model(checkpoint, audio_mode="default", device="cpu")


# -- the recording ------------------------------------------------------------------------------------


def make_recording(path: Path, minutes: float, seed: int = 0) -> list[str]:
    """Write ``minutes`` of soundscapes (ESC-10 clips over noise) to ``path`` (FLAC, 16 bit); returns the labels."""
    import soundfile

    from audioclip.detection.synthetic import RATE, esc50_clips, mix_soundscape, trim_silence
    from audioclip.media import load_audio

    rng = np.random.default_rng(seed)
    clips = esc50_clips(ESC50) if (ESC50 / "meta" / "esc50.csv").is_file() else {}
    loaded = [(trim_silence(load_audio(p, mono=True)[0].numpy()), label)
              for label, paths in clips.items() for p in paths[:3]]
    left = minutes * 60.0
    with soundfile.SoundFile(path, "w", RATE, 1, format="FLAC", subtype="PCM_16") as out:
        while left > 0:  # a minute at a time: memory stays flat
            piece_s, left = min(60.0, left), left - 60.0
            events = [loaded[int(rng.integers(len(loaded)))] for _ in range(int(piece_s // 8))] if loaded else []
            wave, _ = mix_soundscape(events, piece_s, rng)
            out.write(wave)
    return sorted(clips) or LABELS_FALLBACK


# -- one method in its own process ------------------------------------------------------------------------


def worker(args) -> None:
    """``--worker METHOD``: score the recording, save the scores, print seconds and peak RSS as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    from audioclip.detection import zero_shot_scorer
    from audioclip.detection.scores import frame_scores

    model = _model(args.checkpoint)
    labels = json.loads(args.labels)
    scorer = zero_shot_scorer(model, labels)
    start = time.perf_counter()
    scores = frame_scores(model, args.file, labels, scorer, method=args.worker, window=5.0, hop=0.5)
    seconds = time.perf_counter() - start
    np.savez(args.save, scores=scores.scores, start=scores.start_s, end=scores.end_s)
    print(json.dumps({"seconds": seconds, "audio_s": scores.duration_s,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_method(method: str, file: Path, labels: list[str], args, folder: Path) -> dict:
    save = folder / f"{method}.npz"
    cmd = [sys.executable, __file__, "--worker", method, "--file", str(file), "--labels", json.dumps(labels),
           "--save", str(save), "--checkpoint", args.checkpoint, "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{method} failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    data = np.load(save)
    result.update(scores=data["scores"], start=data["start"], end=data["end"])
    return result


def agreement(windows: dict, columns: dict) -> dict:
    """Window scores against the mean of the column scores inside each window (see the module docstring)."""
    pairs_w, pairs_c = [], []
    for i, (a, b) in enumerate(zip(windows["start"], windows["end"])):
        inside = (columns["start"] >= a - 1e-9) & (columns["end"] <= b + 1e-9)
        if inside.any():
            pairs_w.append(windows["scores"][i])
            pairs_c.append(columns["scores"][inside].mean(axis=0))
    w, c = np.asarray(pairs_w), np.asarray(pairs_c)
    return {"windows_compared": len(w), "mae": float(np.abs(w - c).mean()),
            "pearson_r": float(np.corrcoef(w.ravel(), c.ravel())[0, 1]) if len(w) > 1 else float("nan"),
            "top1_same": float((w.argmax(1) == c.argmax(1)).mean()) if len(w) else float("nan")}


# -- event F1 ------------------------------------------------------------------------------------------------


def halves_by_recording(paths: list[str]) -> tuple[list[str], list[str]]:
    """``paths`` in two parts of about half each, whole recordings in each (the recording of a clip as
    ``audioclip fit`` groups its folds: :func:`audioclip.fit.folds.group_of`)."""
    from audioclip.fit.data import Example
    from audioclip.fit.folds import group_of

    by_recording: dict[str, list[str]] = {}
    for path in sorted(paths):
        by_recording.setdefault(group_of(Example(path, ())), []).append(path)
    first: list[str] = []
    groups = [by_recording[key] for key in sorted(by_recording)]
    while groups and len(first) + len(groups[0]) <= len(paths) / 2:
        first += groups.pop(0)
    return first, [p for group in groups for p in group]


def event_f1(args, folder: Path) -> list[tuple[str, dict]]:
    from audioclip.detection import detect
    from audioclip.detection.synthetic import esc50_clips, make_soundscapes
    from audioclip.evaluate.detection import score_events
    from audioclip.fit import fit
    from audioclip.heads import load_head

    if not (ESC50 / "meta" / "esc50.csv").is_file():
        log("event F1 skipped: ../shared/data/esc50 is absent")
        return []
    import importlib.util

    if importlib.util.find_spec("sed_eval") is None:
        log("event F1 skipped: sed_eval is not installed (pip install 'audioclip[eval]')")
        return []
    # each class's clips in two halves by recording (the takes A, B, ... of one ESC-50 recording stay on one
    # side): the head is fitted on the first (at most --train-clips clips), the soundscapes are made of the
    # second; the same classes, never the same recordings
    per_label = 2 if args.smoke else args.train_clips  # a class needs two clips to be fitted
    train_clips, test_clips = {}, {}
    for label, paths in esc50_clips(ESC50).items():
        first, second = halves_by_recording(paths)
        train_clips[label], test_clips[label] = first[:per_label], second
    count, duration = (1, 15.0) if args.smoke else (args.soundscapes, 30.0)
    made = make_soundscapes(folder / "scapes", test_clips, count=count, duration_s=duration, seed=1)
    labels = sorted(test_clips)
    reference = {path: events for path, events in made}
    model = _model(args.checkpoint)
    rows = []
    found = detect(model, list(reference), labels=labels, median_filter=1.0, min_duration=0.5, merge_gap=0.5)
    rows.append(("zero-shot labels", score_events(reference, {f.path: f.events for f in found.files}, labels)))

    # a head fitted with audioclip.fit (what `audioclip fit` runs) on other clips of the same classes
    tree = folder / "train"
    for label in labels:
        (tree / label).mkdir(parents=True)
        for path in train_clips.get(label, []):
            (tree / label / Path(path).name).symlink_to(Path(path).resolve())
    report = fit(model, tree, folder / "head", n_folds=min(5, per_label), plot=False)
    head = load_head(folder / "head")
    fitted_on = min(len(paths) for paths in train_clips.values())
    log(f"head fitted on {fitted_on}+ clips per label"
        f"{' (' + '; '.join(report.problems) + ')' if report.problems else ''}")
    found = detect(model, list(reference), head=head, median_filter=1.0, min_duration=0.5, merge_gap=0.5)
    rows.append((f"head from audioclip fit ({fitted_on}+ clips per class; recordings not in the soundscapes)",
                 score_events(reference, {f.path: f.events for f in found.files}, labels)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the recording (default: 60)")
    parser.add_argument("--windows-minutes", type=float, default=5.0,
                        help="minutes the windows method runs on (default: 5)")
    parser.add_argument("--checkpoint", default="AudioCLIP-RN50", help="weights (default: AudioCLIP-RN50, random)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--soundscapes", type=int, default=20, help="synthetic soundscapes for F1 (default: 20)")
    parser.add_argument("--train-clips", type=int, default=8,
                        help="clips per label the head is fitted on, at most (default: 8; at least 2): from "
                        "the first half of each class's recordings, the soundscapes being made of the second")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.train_clips < 2:
        parser.error("--train-clips: a class needs at least 2 clips to be fitted")
    if args.smoke:
        args.minutes, args.windows_minutes, args.checkpoint = 0.25, 0.1, "AudioCLIP-tiny"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log(f"writing a {args.minutes:g} min recording")
        long_file = folder / "long.flac"
        labels = make_recording(long_file, args.minutes)
        short_file = folder / "short.flac"
        make_recording(short_file, args.windows_minutes)  # the same seed: the first minutes of the long one
        log("columns ...")
        columns = run_method("columns", long_file, labels, args, folder)
        log("windows ...")
        windows = run_method("windows", short_file, labels, args, folder)
        log("columns on the windows' stretch (for agreement) ...")
        columns_short = run_method("columns", short_file, labels, args, folder)
        agree = agreement(windows, columns_short)
        rows = event_f1(args, folder)

    print(f"## Frame scores of a long recording ({args.checkpoint}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs)\n")
    print("| method | audio | time resolution | compute | real-time factor | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, r, step in (("columns", columns, "0.41 s"), ("windows 5 s / hop 0.5 s", windows, "0.5 s")):
        print(f"| {name} | {r['audio_s'] / 60:.1f} min | {step} | {r['seconds']:.1f} s | "
              f"{r['seconds'] / r['audio_s']:.4f} | {r['rss_mib']:.0f} MiB |")
    print(f"\nAgreement of columns with windows (5 s, hop 0.5 s) over {agree['windows_compared']} windows: "
          f"mean |difference| {agree['mae']:.4f}, Pearson r {agree['pearson_r']:.3f}, same top label "
          f"{100 * agree['top1_same']:.1f} %")
    if rows:
        print("\n## Event detection on synthetic soundscapes (ESC-10 clips over noise, 0-12 dB SNR)\n")
        print("| scores | event F1 (200 ms collar) | event error rate | segment F1 (1 s) | segment error rate |")
        print("|---|---|---|---|---|")
        for name, m in rows:
            print(f"| {name} | {100 * m['event']['f1']:.1f} % | {m['event']['error_rate']:.2f} | "
                  f"{100 * m['segment']['f1']:.1f} % | {m['segment']['error_rate']:.2f} |")
        if args.checkpoint.startswith("AudioCLIP-"):
            print("\nRandom weights: the F1 figures measure the mechanics only, not the model.")


if __name__ == "__main__":
    main()
