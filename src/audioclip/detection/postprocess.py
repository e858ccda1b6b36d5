"""From frame scores to events: pure numpy functions on a ``(frames, labels)`` score matrix.

The steps, in the order :func:`events_from_scores` applies them:

1. :func:`median_filter`: each label's scores smoothed over time (an odd number of frames);
2. :func:`top_k_mask`: in each frame only the ``k`` best labels may be active;
3. :func:`hysteresis`: a run of frames at or above the low threshold is active when one
   of its frames reaches the high threshold (a single threshold: low = high);
4. :func:`runs` of active frames, then :func:`merge_runs` joins runs whose gap is at most
   the merge gap, and :func:`drop_short` removes those shorter than the minimum duration.

Frames are time steps: frame ``i`` stands for the seconds ``[cell_start[i], cell_end[i])``
(consecutive, non-overlapping), so an event runs from the start of its first frame to the
end of its last. Scores are in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PostProcessing", "median_filter", "top_k_mask", "hysteresis", "runs", "merge_runs", "drop_short",
           "events_from_scores"]


@dataclass(frozen=True)
class PostProcessing:
    """The settings that turn scores into events (all written with the output).

    ``threshold``: one value for every label or one per label, in [0, 1];
    ``threshold_low``: hysteresis (None: the threshold); ``median_filter_s``: the
    filter's length in seconds (0: none); ``min_duration_s``, ``merge_gap_s``:
    seconds; ``top_k``: labels that may be active in one frame (None: all).
    """

    threshold: float | tuple[float, ...] = 0.5
    threshold_low: float | tuple[float, ...] | None = None
    median_filter_s: float = 0.0
    min_duration_s: float = 0.0
    merge_gap_s: float = 0.0
    top_k: int | None = None

    def __post_init__(self):
        for name in ("threshold", "threshold_low"):
            value = getattr(self, name)
            if value is None:
                continue
            values = np.atleast_1d(np.asarray(value, dtype=float))
            if values.size == 0 or not np.all((values >= 0) & (values <= 1)):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.threshold_low is not None and np.any(np.asarray(self.threshold_low) > np.asarray(self.threshold)):
            raise ValueError(f"threshold_low ({self.threshold_low}) must not exceed threshold ({self.threshold})")
        for name in ("median_filter_s", "min_duration_s", "merge_gap_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be 0 or more seconds, got {getattr(self, name)!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be 1 or more, got {self.top_k!r}")

    def settings(self) -> dict:
        """The settings as plain values (lists for per-label thresholds)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def median_filter(scores: np.ndarray, frames: int) -> np.ndarray:
    """Each column of ``scores`` ``(T, C)`` through a running median of ``frames`` (odd; even is made odd + 1).

    The ends are padded with the edge values (the filter never invents zeros); ``frames <= 1`` returns a copy.
    """
    scores = np.asarray(scores, dtype=float)
    if frames <= 1 or scores.shape[0] == 0:
        return scores.copy()
    frames = frames + 1 - frames % 2
    half = frames // 2
    padded = np.pad(scores, ((half, half), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, frames, axis=0)  # (T, C, frames)
    return np.median(windows, axis=-1)


def top_k_mask(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Boolean ``(T, C)``: True where the label is among the frame's ``k`` highest scores (ties: lower index first)."""
    scores = np.asarray(scores, dtype=float)
    if k is None or k >= scores.shape[1]:
        return np.ones(scores.shape, dtype=bool)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def hysteresis(scores: np.ndarray, high, low=None) -> np.ndarray:
    """Boolean ``(T, C)``: a frame is active when it is in a run of scores ``>= low`` holding one ``>= high``.

    ``high``/``low`` are scalars or one value per label; ``low=None`` is ``high`` (a plain threshold).
    """
    scores = np.asarray(scores, dtype=float)
    high = np.broadcast_to(np.asarray(high, dtype=float), scores.shape[1:])
    low = high if low is None else np.broadcast_to(np.asarray(low, dtype=float), scores.shape[1:])
    above_low = scores >= low
    active = np.zeros(scores.shape, dtype=bool)
    for c in range(scores.shape[1]):
        for start, end in runs(above_low[:, c]):
            if np.any(scores[start:end, c] >= high[c]):
                active[start:end, c] = True
    return active


def runs(active: np.ndarray) -> list[tuple[int, int]]:
    """The runs of True in a 1-d boolean array as ``[start, end)`` frame indices."""
    active = np.asarray(active, dtype=bool)
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def merge_runs(spans: Sequence[tuple[int, int]], cell_start: np.ndarray, cell_end: np.ndarray,
               gap_s: float) -> list[tuple[int, int]]:
    """Join consecutive runs whose silence (end of one to start of the next, in seconds) is at most ``gap_s``."""
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and gap_s > 0 and cell_start[start] - cell_end[merged[-1][1] - 1] <= gap_s + 1e-9:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def drop_short(spans: Sequence[tuple[int, int]], cell_start: np.ndarray, cell_end: np.ndarray,
               min_s: float) -> list[tuple[int, int]]:
    """The runs that last at least ``min_s`` seconds."""
    return [(s, e) for s, e in spans if cell_end[e - 1] - cell_start[s] >= min_s - 1e-9]


def frames_for(seconds: float, step_s: float) -> int:
    """The frames a median filter of ``seconds`` spans at ``step_s`` per frame (odd, at least 1)."""
    if seconds <= 0 or step_s <= 0:
        return 1
    n = max(1, int(round(seconds / step_s)))
    return n + 1 - n % 2


def events_from_scores(
    scores: np.ndarray,
    cell_start: np.ndarray,
    cell_end: np.ndarray,
    labels: Sequence[str],
    settings: PostProcessing = PostProcessing(),
) -> list[dict]:
    """Events ``{"label", "start_s", "end_s", "score", "mean_score"}`` from ``scores`` ``(T, len(labels))``.

    ``cell_start``/``cell_end`` ``(T,)``: the seconds each frame stands for. ``score`` is the event's
    peak and ``mean_score`` its mean, both of the scores as given (before the median filter).
    Events are sorted by start, then label order.
    """
    scores = np.asarray(scores, dtype=float)
    cell_start, cell_end = np.asarray(cell_start, dtype=float), np.asarray(cell_end, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != len(labels) or scores.shape[0] != len(cell_start):
        raise ValueError(f"scores {scores.shape} do not match {len(cell_start)} frames and {len(labels)} labels")
    if scores.shape[0] == 0:
        return []
    step = float(np.median(cell_end - cell_start))
    smooth = median_filter(scores, frames_for(settings.median_filter_s, step))
    allowed = top_k_mask(smooth, settings.top_k)
    high = np.broadcast_to(np.asarray(settings.threshold, dtype=float), (len(labels),))
    low = high if settings.threshold_low is None else np.broadcast_to(
        np.asarray(settings.threshold_low, dtype=float), (len(labels),))
    # a label outside the top k is below every threshold in that frame
    active = hysteresis(np.where(allowed, smooth, -1.0), high, low)
    events = []
    for c, label in enumerate(labels):
        spans = runs(active[:, c])
        spans = merge_runs(spans, cell_start, cell_end, settings.merge_gap_s)
        spans = drop_short(spans, cell_start, cell_end, settings.min_duration_s)
        for s, e in spans:
            part = scores[s:e, c]
            events.append({"label": label, "start_s": float(cell_start[s]), "end_s": float(cell_end[e - 1]),
                           "score": float(part.max()), "mean_score": float(part.mean())})
    order = {label: i for i, label in enumerate(labels)}
    events.sort(key=lambda ev: (ev["start_s"], order[ev["label"]]))
    return events
