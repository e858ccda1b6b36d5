"""One picture per recording: its spectrogram, the top labels' scores over time, and the events as bars.

All three share one time axis in seconds. Drawn with matplotlib (the ``eval`` extra) without
a display (the Agg backend); PNG or SVG. The spectrogram is computed from the recording
streamed block by block and averaged into at most :data:`MAX_COLUMNS` time columns, so an
hour-long recording costs what a minute does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..media import stream_audio
from ..media.files import DecodeOptions

__all__ = ["plot_file", "spectrogram", "MAX_COLUMNS"]

MAX_COLUMNS = 2000
_N_FFT = 1024
_TOP_LABELS = 10


def spectrogram(path: str, duration_s: float, options: DecodeOptions | None = None,
                max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, float]:
    """``(dB (bins, columns), seconds per column)``: the mono power spectrum, averaged into at most ``max_columns``."""
    options = options or DecodeOptions()
    rate = options.sample_rate
    total = max(1, int(round(duration_s * rate)))
    per_column = max(_N_FFT, int(np.ceil(total / max_columns)))
    window = np.hanning(_N_FFT).astype(np.float32)
    columns, carry = [], np.zeros(0, np.float32)
    for block in stream_audio(path, sample_rate=rate, mono=True, limits=options.limits):
        carry = np.concatenate([carry, block.numpy()[0]])
        while carry.shape[0] >= per_column:
            piece, carry = carry[:per_column], carry[per_column:]
            # a few spectra spread over the column, averaged: a coarse picture, cheap to draw
            starts = np.linspace(0, per_column - _N_FFT, num=min(8, per_column // _N_FFT)).astype(int)
            frames = np.stack([piece[s:s + _N_FFT] * window for s in starts])
            columns.append((np.abs(np.fft.rfft(frames, axis=-1)) ** 2).mean(axis=0))
    if carry.shape[0] or not columns:
        piece = np.pad(carry, (0, max(0, _N_FFT - carry.shape[0])))[:_N_FFT]
        columns.append(np.abs(np.fft.rfft(piece * window)) ** 2)
    power = np.stack(columns, axis=1)
    return 10 * np.log10(np.maximum(power, 1e-12)), per_column / rate


def plot_file(result, folder: Path, *, fmt: str = "png", options: DecodeOptions | None = None,
              top: int = _TOP_LABELS) -> Path:
    """Draw one recording's spectrogram, its ``top`` labels' scores and its events into ``folder/<stem>.<fmt>``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = result.frames
    duration = frames.duration_s
    spec, per_column = spectrogram(result.path, duration, options)
    peak = frames.scores.max(axis=0) if frames.scores.size else np.zeros(len(frames.labels))
    order = np.argsort(-peak, kind="stable")[:top]
    labels = [frames.labels[i] for i in order]

    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(12, 7), gridspec_kw={"height_ratios": [2, 2, 1]})
    rate = (options or DecodeOptions()).sample_rate
    axes[0].imshow(spec, origin="lower", aspect="auto", cmap="magma",
                   extent=(0, spec.shape[1] * per_column, 0, rate / 2000))
    axes[0].set_ylabel("kHz")
    axes[0].set_title(Path(result.path).name)
    heat = frames.scores[:, order].T
    # one column per time step, placed on its cell: pcolormesh takes the cell edges
    edges = np.concatenate([frames.cell_start, frames.cell_end[-1:]]) if len(frames.cell_start) else np.zeros(1)
    axes[1].pcolormesh(edges, np.arange(len(labels) + 1), heat, vmin=0, vmax=1, cmap="viridis", shading="flat")
    axes[1].set_yticks(np.arange(len(labels)) + 0.5, labels)
    axes[1].set_ylabel("score")
    row = {label: i for i, label in enumerate(labels)}
    for ev in result.events:
        y = row.get(ev["label"])
        if y is not None:
            axes[2].broken_barh([(ev["start_s"], ev["end_s"] - ev["start_s"])], (y + 0.1, 0.8))
    axes[2].set_yticks(np.arange(len(labels)) + 0.5, labels)
    axes[2].set_ylim(0, max(1, len(labels)))
    axes[2].set_xlim(0, duration)
    axes[2].set_xlabel("seconds")
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{Path(result.path).stem}.{fmt}"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt)
    plt.close(fig)
    return out
