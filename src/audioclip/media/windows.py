"""Cutting a clip of any length into fixed-length windows for the audio head."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from .audio import SAMPLE_RATE

__all__ = ["AudioWindow", "split_windows", "stream_windows"]


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


def stream_windows(
    blocks: Iterable[torch.Tensor],
    sample_rate: int = SAMPLE_RATE,
    window: float = 5.0,
    hop: float | None = None,
) -> Iterator[AudioWindow]:
    """:func:`split_windows` over a clip given as consecutive ``(channels, n)`` blocks, as they arrive.

    The same windows (start, end, samples) as ``split_windows`` of the
    concatenated blocks, while only about one window plus one block is held:
    the end-aligned last window and the centred short clip are decided when the
    blocks run out. Windows are copies, not views into the blocks.
    """
    hop = window if hop is None else hop
    if not window > 0:
        raise ValueError(f"window must be positive seconds, got {window!r}")
    if not hop > 0:
        raise ValueError(f"hop must be positive seconds, got {hop!r}")
    size = max(1, round(window * sample_rate))
    step = max(1, round(hop * sample_rate))
    buffer: torch.Tensor | None = None  # samples from `offset` on
    offset = 0  # clip position of buffer[:, 0]
    length = 0  # samples seen so far
    next_start = 0
    last_start = None  # start of the last window emitted
    for block in blocks:
        block = block.unsqueeze(0) if block.dim() == 1 else block
        buffer = block if buffer is None else torch.cat([buffer, block], dim=1)
        length += block.shape[1]
        while next_start + size <= length:
            begin = next_start - offset
            yield AudioWindow(next_start / sample_rate, (next_start + size) / sample_rate,
                              buffer[:, begin : begin + size].clone())
            last_start, next_start = next_start, next_start + step
        # keep what a later window may need: from the next start, and the last `size` samples
        keep_from = min(next_start, max(0, length - size))
        if keep_from > offset:
            buffer = buffer[:, keep_from - offset :]
            offset = keep_from
    if buffer is None or length == 0:
        raise ValueError("wave has no samples")
    if last_start is None:  # the whole clip fits in one window: centre it
        clip = buffer[:, :length]
        left = (size - length) // 2
        yield AudioWindow(0.0, length / sample_rate, torch.nn.functional.pad(clip, (left, size - length - left)))
    elif last_start + size < length:  # the tail: one more window, aligned to the end
        yield AudioWindow((length - size) / sample_rate, length / sample_rate, buffer[:, -size:].clone())
