"""Frame scores of a recording: label scores over time, by sliding windows or by the trunk's columns.

Both methods give a :class:`FrameScores`: ``scores`` ``(T, C)`` in [0, 1], the stretch of
audio each row describes (``start_s``/``end_s``, what the model saw for it), and the time
step each row stands for in events (``cell_start``/``cell_end``: consecutive, non-overlapping).

- ``windows``: the recording is cut into windows (``window`` s every ``hop`` s, exactly as
  ``embed`` cuts it: :func:`audioclip.media.stream_windows`), each window is embedded and
  scored. Row ``i`` describes window ``i``; its cell is the ``hop`` around the window's centre
  (the first cell reaches back to 0, the last one on to the end of the recording).
- ``columns``: the audio head runs once over long stretches, and each time column of the
  trunk's feature map before pooling (:meth:`ESResNeXtFbsp.feature_map`) is pooled over
  frequency and projected as a clip of its own. Column ``j`` describes the STFT frames
  ``32 j`` to ``32 j + 31``; frame ``k`` covers the samples ``[561 k, 561 k + 1654)`` (hop and
  analysis window of the head at 44.1 kHz), so column ``j`` describes the samples
  ``[17952 j, 17952 j + 19045)``: 0.4319 s starting every 0.4071 s. Its cell is
  ``[17952 j, 17952 (j + 1))`` samples. The receptive field of a column is wider than what it
  describes (the convolutions see neighbouring columns); stretches are run with
  :data:`COLUMN_CONTEXT` columns of real audio on each side so that a column's score does not
  depend on where a stretch was cut, and the recording's end is padded with zeros to a whole
  column (the last column may describe up to 0.43 s past the end; its ``end_s`` is cut there).

A score is the softmax over the labels of the logit-scaled cosine similarities (what
``classify`` gives), or a head's scores (any function from L2-normalised audio embeddings
``(N, D)`` to scores ``(N, C)``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..media import MediaError, stream_audio, stream_windows
from ..media.files import DecodeOptions

__all__ = ["METHODS", "FrameScores", "Scorer", "column_times", "window_cells", "frame_scores",
           "column_embeddings", "window_embeddings", "COLUMN_CONTEXT", "COLUMN_STRETCH"]

METHODS = ("columns", "windows")
#: columns of audio run at once by the ``columns`` method (about 52 s); memory is bounded by it
COLUMN_STRETCH = 128
#: columns of real audio on each side of a stretch, whose scores are dropped (about 3.3 s)
COLUMN_CONTEXT = 8
_DOWNSAMPLE = 32  # the trunk's time stride: five stride-2 steps

#: scores ``(N, C)`` from L2-normalised embeddings ``(N, D)``
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FrameScores:
    """A file's scores over time; rows in time order."""

    path: str
    labels: list[str]
    scores: np.ndarray  # (T, C) float32
    start_s: np.ndarray  # (T,) what row i describes
    end_s: np.ndarray
    cell_start: np.ndarray  # (T,) the time step row i stands for in events
    cell_end: np.ndarray
    duration_s: float
    method: str


def _geometry(model) -> tuple[int, int, int]:
    cfg = model.audio.config
    return cfg.hop_length, cfg.win_length, cfg.sample_rate


def column_times(model, n_columns: int, duration_s: float) -> tuple[np.ndarray, ...]:
    """``(start_s, end_s, cell_start, cell_end)`` of columns ``0 .. n_columns - 1`` (see the module docstring)."""
    hop, win, rate = _geometry(model)
    j = np.arange(n_columns, dtype=float)
    start = j * _DOWNSAMPLE * hop / rate
    end = np.minimum((j * _DOWNSAMPLE * hop + (_DOWNSAMPLE - 1) * hop + win) / rate, duration_s)
    cell_end = np.minimum((j + 1) * _DOWNSAMPLE * hop / rate, duration_s)
    if n_columns:
        cell_end[-1] = duration_s
    return start, end, start.copy(), cell_end


def n_columns(model, samples: int) -> int:
    """Columns of a recording of ``samples`` samples: one per 32 STFT frames, frames as the head cuts them."""
    hop, win, _ = _geometry(model)
    frames = 1 + max(0, samples - win + hop - 1) // hop
    return math.ceil(frames / _DOWNSAMPLE)


def window_cells(start: np.ndarray, end: np.ndarray, hop: float, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The time step each window stands for: ``hop`` s around its centre, the ends reaching the recording's ends."""
    centre = (np.asarray(start) + np.asarray(end)) / 2
    if len(centre) == 0:
        return centre, centre
    bounds = np.concatenate([[0.0], (centre[:-1] + centre[1:]) / 2, [duration_s]])
    return bounds[:-1], bounds[1:]


# -- embeddings --------------------------------------------------------------------------


def _column_pass(model, wave: torch.Tensor) -> torch.Tensor:
    """Waveform ``(channels, samples)`` -> one L2-normalised embedding per column ``(columns, D)``.

    A column is pooled as the head pools a clip (the last gate over the mean over
    frequency), the channels summed, then projected: the embedding of a clip whose
    feature map were that column alone.
    """
    head = model.audio
    with torch.inference_mode():
        log_power = head.log_power(wave[None].to(model.device))  # (1, ch, bands, bins, frames)
        x = log_power.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        fmap = head.feature_map(x)  # (ch, 2048, bins', columns)
        channels, features, height, columns = fmap.shape
        cols = fmap.permute(0, 3, 1, 2).reshape(channels * columns, features, height, 1)
        pooled = head.att5(cols, head.avgpool(cols)).flatten(1).view(channels, columns, features).sum(dim=0)
        return F.normalize(head.fc(pooled).float(), dim=-1).cpu()


def _blocks_with_end(blocks: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, bool]]:
    blocks = iter(blocks)
    current = next(blocks)
    for following in blocks:
        yield current, False
        current = following
    yield current, True


def column_embeddings(model, blocks, *, stretch: int = COLUMN_STRETCH,
                      context: int = COLUMN_CONTEXT) -> Iterator[tuple[int, torch.Tensor, int]]:
    """Embeddings of every column of a recording given as ``(channels, n)`` blocks, a stretch at a time.

    Yields ``(first_column, embeddings (n, D), total_samples_so_far)``. A stretch of
    ``stretch`` columns is run with ``context`` columns of audio on each side (where the
    recording has them); its input starts on a column boundary and holds whole frames
    (``32 c`` frames: ``17952 c + 1093`` samples), so frames line up with those of one pass
    over the whole recording. Memory holds one stretch and its context.
    """
    hop, win, _ = _geometry(model)
    cell = _DOWNSAMPLE * hop
    tail = win - hop
    buffer: torch.Tensor | None = None
    offset = 0  # sample index of buffer[:, 0]
    length = 0
    first = 0  # next column to yield

    def run(first_col: int, last_col: int, total: int | None = None) -> torch.Tensor:
        lo = max(0, first_col - context)
        hi = last_col + context if total is None else min(total, last_col + context)
        a, b = lo * cell, hi * cell + tail
        piece = buffer[:, a - offset: b - offset]
        if piece.shape[1] < b - a:  # past the end: zeros, as the head pads a clip's end
            piece = F.pad(piece, (0, b - a - piece.shape[1]))
        emb = _column_pass(model, piece)
        return emb[first_col - lo: last_col - lo]

    for block, final in _blocks_with_end(blocks):
        block = block.unsqueeze(0) if block.dim() == 1 else block
        buffer = block if buffer is None else torch.cat([buffer, block], dim=1)
        length += block.shape[1]
        while (first + stretch + context) * cell + tail <= length:
            yield first, run(first, first + stretch), length
            first += stretch
            keep = max(0, first - context) * cell
            if keep > offset:
                buffer, offset = buffer[:, keep - offset:], keep
        if final:
            total = n_columns(model, length)
            while first < total:
                last = min(total, first + stretch)
                # right context only as far as the recording has columns
                yield first, run(first, last, total), length
                first = last


def window_embeddings(model, blocks, *, window: float, hop: float, sample_rate: int,
                      batch_size: int = 16) -> Iterator[tuple[float, float, torch.Tensor]]:
    """``(start_s, end_s, embedding)`` of each window, as ``embed`` cuts and embeds them (L2-normalised)."""
    pending: list[tuple[float, float, torch.Tensor]] = []

    def flush():
        with torch.inference_mode():
            vectors = F.normalize(model.encode_audio(torch.stack([w for _, _, w in pending]).to(model.device))
                                  .float(), dim=-1).cpu()
        out = [(s, e, v) for (s, e, _), v in zip(pending, vectors)]
        pending.clear()
        return out

    for w in stream_windows(blocks, sample_rate=sample_rate, window=window, hop=hop):
        pending.append((w.start, w.end, w.wave))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


# -- scores ------------------------------------------------------------------------------


def frame_scores(
    model,
    path: str,
    labels: list[str],
    scorer: Scorer,
    *,
    method: str = "columns",
    window: float = 5.0,
    hop: float = 0.5,
    options: DecodeOptions | None = None,
    batch_size: int = 16,
    audio: np.ndarray | torch.Tensor | None = None,
) -> FrameScores:
    """The scores of ``path`` over time (see the module docstring). Raises ``MediaError`` for a bad file.

    ``audio``: the recording already decoded, ``(channels, samples)`` float32 at ``options.sample_rate``
    (``path`` then only names it); it is read a minute at a time, as a file would be.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    options = options or DecodeOptions()
    if audio is not None:
        blocks = _blocks_of(audio, 60 * options.sample_rate)
    else:
        blocks = stream_audio(path, sample_rate=options.sample_rate, mono=options.mono, limits=options.limits)
    try:
        first_block = next(blocks)
    except StopIteration:  # stream_audio raises first; an empty array gets here
        raise MediaError(path, "contains no audio samples") from None
    blocks = itertools.chain([first_block], blocks)
    parts, starts, ends = [], [], []
    length = 0
    if method == "windows":
        for start, end, vector in window_embeddings(model, blocks, window=window, hop=hop,
                                                    sample_rate=options.sample_rate, batch_size=batch_size):
            starts.append(start)
            ends.append(end)
            parts.append(vector[None])
        embeddings = torch.cat(parts)
        # stream_windows' last window ends at the recording's end (or, for a short clip, its end is the duration)
        duration = max(ends)
        start_s, end_s = np.asarray(starts), np.asarray(ends)
        cell_start, cell_end = window_cells(start_s, end_s, hop, duration)
    else:
        for _, vectors, length in column_embeddings(model, blocks):
            parts.append(vectors)
        embeddings = torch.cat(parts)
        duration = length / options.sample_rate
        start_s, end_s, cell_start, cell_end = column_times(model, embeddings.shape[0], duration)
    with torch.no_grad():
        scores = scorer(embeddings).float().cpu().numpy()
    return FrameScores(path, list(labels), scores.astype(np.float32), start_s, end_s, cell_start, cell_end,
                       float(duration), method)


def _blocks_of(audio: np.ndarray | torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """``(channels, size)`` float32 tensors of ``audio`` in order: copies (a memory map is read piece by piece,
    and a read-only one is never handed to torch)."""
    audio = audio.numpy() if isinstance(audio, torch.Tensor) else audio
    for start in range(0, audio.shape[-1], size):
        yield torch.from_numpy(np.array(audio[..., start: start + size], dtype=np.float32))
