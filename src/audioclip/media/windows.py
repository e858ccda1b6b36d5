"""Cutting a clip of any length into fixed-length windows for the audio head."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .audio import SAMPLE_RATE

__all__ = ["AudioWindow", "split_windows"]


@dataclass
class AudioWindow:
    """One window of a clip: the real audio it covers, in seconds, and its samples."""

    start: float  # s from the clip's start
    end: float  # s; end - start < window length only for a padded short clip
    wave: torch.Tensor  # (channels, window_samples)


def split_windows(
    wave: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    window: float = 5.0,
    hop: float | None = None,
) -> list[AudioWindow]:
    """Cut ``wave`` ``(channels, samples)`` (or ``(samples,)``) into windows of ``window`` s.

    - A clip no longer than one window gives one window, zero-padded equally on both
      sides (the odd sample goes to the right), as the paper centres short clips;
      ``start=0`` and ``end`` = the clip's duration.
    - A longer clip gives windows starting at 0, ``hop``, 2 ``hop``, ... (``hop``
      defaults to ``window``: no overlap) while they fit, plus one aligned to end at the
      clip's end if the tail would otherwise be left out. No window is padded then,
      and none is repeated when the length is an exact multiple of the hop.

    Windows of a long clip are views into ``wave`` (no copy); a padded one is new.
    Lengths in samples are ``round(seconds * sample_rate)``.
    """
    hop = window if hop is None else hop
    if not window > 0:
        raise ValueError(f"window must be positive seconds, got {window!r}")
    if not hop > 0:
        raise ValueError(f"hop must be positive seconds, got {hop!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise ValueError(f"wave must be (channels, samples) or (samples,), got shape {tuple(wave.shape)}")
    size = max(1, round(window * sample_rate))
    step = max(1, round(hop * sample_rate))
    length = wave.shape[-1]
    if length == 0:
        raise ValueError("wave has no samples")

    if length <= size:
        left = (size - length) // 2
        padded = torch.nn.functional.pad(wave, (left, size - length - left))
        return [AudioWindow(0.0, length / sample_rate, padded)]

    starts = list(range(0, length - size + 1, step))
    if starts[-1] + size < length:
        starts.append(length - size)
    return [
        AudioWindow(start / sample_rate, (start + size) / sample_rate, wave[:, start : start + size])
        for start in starts
    ]
