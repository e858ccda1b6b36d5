"""Strongly labelled test recordings: real clips mixed at known onsets over background noise.

A small, documented mixer (not scaper: it stays within this package's dependencies):

- each event is a real clip, loaded mono at 44.1 kHz and trimmed to where it sounds (the
  first to the last 50 ms frame within 30 dB of the clip's loudest frame);
- it is placed at a random onset (events of a soundscape do not overlap, and keep
  ``gap_s`` apart) and scaled so that its RMS is ``snr_db`` (drawn from ``snr_range``)
  above the background's;
- the background is white noise at RMS ``background_rms``;
- the annotation is the event's onset, offset (onset + trimmed length) and label, written
  ``onset<TAB>offset<TAB>label`` per line (the URBAN-SED layout that
  ``audioclip evaluate --task detection`` reads).

Everything is drawn from one seeded generator: the same arguments give the same files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_path, write_text_atomic
from ..media import load_audio

__all__ = ["trim_silence", "mix_soundscape", "make_soundscapes", "esc50_clips"]

RATE = 44100
_FRAME = int(0.05 * RATE)


def trim_silence(wave: np.ndarray, top_db: float = 30.0) -> np.ndarray:
    """``wave`` (1-d) from its first to its last 50 ms frame within ``top_db`` of its loudest frame."""
    n = len(wave) // _FRAME
    if n == 0:
        return wave
    energy = (wave[: n * _FRAME].reshape(n, _FRAME) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (-top_db / 10))
    return wave[loud[0] * _FRAME: (loud[-1] + 1) * _FRAME]


def mix_soundscape(events: Sequence[tuple[np.ndarray, str]], duration_s: float, rng: np.random.Generator, *,
                   snr_range: tuple[float, float] = (0.0, 12.0), background_rms: float = 0.01,
                   gap_s: float = 0.5) -> tuple[np.ndarray, list[dict]]:
    """Mix ``events`` (trimmed mono clips and labels) into noise; returns ``(wave, annotations)``.

    Events that do not fit in the remaining time are left out.
    """
    total = int(round(duration_s * RATE))
    wave = (rng.standard_normal(total) * background_rms).astype(np.float32)
    free = [(0, total)]  # spans still free
    annotations = []
    for clip, label in events:
        need = len(clip) + int(gap_s * RATE)
        spans = [(a, b) for a, b in free if b - a >= need]
        if not spans:
            continue
        a, b = spans[rng.integers(len(spans))]
        start = int(rng.integers(a, b - need + 1)) + int(gap_s * RATE) // 2
        snr = rng.uniform(*snr_range)
        rms = float(np.sqrt(np.mean(clip ** 2))) or 1.0
        wave[start: start + len(clip)] += clip * (background_rms * 10 ** (snr / 20) / rms)
        free.remove((a, b))
        free += [(a, start), (start + len(clip), b)]
        annotations.append({"onset": start / RATE, "offset": (start + len(clip)) / RATE, "label": label,
                            "snr_db": snr})
    peak = float(np.abs(wave).max())
    if peak > 0.99:
        wave *= 0.99 / peak
    annotations.sort(key=lambda e: e["onset"])
    return wave, annotations


def make_soundscapes(folder: str | os.PathLike, clips: Mapping[str, Sequence[str]], *, count: int = 10,
                     duration_s: float = 30.0, events_per_scape: int = 4, seed: int = 0,
                     snr_range: tuple[float, float] = (0.0, 12.0)) -> list[tuple[str, list[dict]]]:
    """Write ``count`` soundscapes to ``folder/audio/scape-NNN.wav`` and their annotations to
    ``folder/annotations/scape-NNN.txt``; ``clips``: label -> clip files. Returns ``[(wav, annotations)]``."""
    import soundfile

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    loaded = {label: [trim_silence(load_audio(p, mono=True)[0].numpy()) for p in paths]
              for label, paths in clips.items()}
    labels = sorted(loaded)
    made = []
    for i in range(count):
        picks = [labels[int(rng.integers(len(labels)))] for _ in range(events_per_scape)]
        events = [(loaded[label][int(rng.integers(len(loaded[label])))], label) for label in picks]
        wave, annotations = mix_soundscape(events, duration_s, rng, snr_range=snr_range)
        wav = folder / "audio" / f"scape-{i:03d}.wav"
        with atomic_path(wav) as tmp:
            soundfile.write(tmp, wave, RATE, format="WAV", subtype="FLOAT")
        write_text_atomic(folder / "annotations" / f"scape-{i:03d}.txt",
                          "".join(f"{e['onset']:.6f}\t{e['offset']:.6f}\t{e['label']}\n" for e in annotations),
                          encoding="utf-8")
        made.append((str(wav), annotations))
    return made


def esc50_clips(esc50: str | os.PathLike, *, esc10: bool = True, folds: Sequence[int] | None = None,
                audio: str = "audio") -> dict[str, list[str]]:
    """label -> clip files of an ESC-50 folder (``meta/esc50.csv``, ``audio/``; clips present only, any suffix)."""
    import csv

    esc50 = Path(esc50)
    present = {Path(p).stem: p for p in (esc50 / audio).iterdir()}
    out: dict[str, list[str]] = {}
    with open(esc50 / "meta" / "esc50.csv", newline="") as f:
        for row in csv.DictReader(f):
            if esc10 and row["esc10"] != "True" or folds and int(row["fold"]) not in folds:
                continue
            path = present.get(Path(row["filename"]).stem)
            if path is not None:
                out.setdefault(row["category"].replace("_", " "), []).append(str(path))
    return {label: sorted(paths) for label, paths in sorted(out.items())}
