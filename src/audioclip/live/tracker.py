"""``detect``'s post-processing applied causally: frames arrive one at a time, events leave as they are decided.

:class:`EventTracker` takes one frame of scores at a time (its cell: the seconds it stands
for, as :func:`audioclip.detection.scores.window_cells` gives a window) and returns what
became known: events that ended (``kind="end"``) and, with ``emit="onset"``, events that
started (``kind="onset"``, their end following later as an ``"end"``). Fed a whole
recording's frames and then :meth:`~EventTracker.finish`, it yields exactly the events of
:func:`audioclip.detection.postprocess.events_from_scores` on the same frames.

Each step is made causal at the least cost in delay:

- the median filter is the centred one of ``detect`` (edges padded with the edge frame), so a
  frame's smoothed score is known ``filter // 2`` frames later: that is the filter's delay;
- hysteresis: a run of frames at or above the low threshold becomes an event once one of its
  frames reaches the high threshold (its start is the run's start, in the past);
- merge gap: an ended event is held until the gap has passed without a new run;
- minimum duration: checked on the merged event (an onset is announced once the event has
  lasted that long).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..detection.postprocess import PostProcessing, frames_for, top_k_mask

__all__ = ["EventTracker", "LiveEvent"]

_EPS = 1e-9


@dataclass
class LiveEvent:
    """An event of one label: ``[start_s, end_s)`` and its raw scores (peak, mean) over that span."""

    label: str
    start_s: float
    end_s: float
    scores: list[float] = field(default_factory=list)
    kind: str = "end"  # "onset": announced at its start (end_s: so far); "end": complete

    @property
    def score(self) -> float:
        return float(max(self.scores))

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.scores))

    def record(self) -> dict:
        return {"label": self.label, "start_s": self.start_s, "end_s": self.end_s, "score": self.score,
                "mean_score": self.mean_score}


@dataclass
class _Label:
    run_start: float | None = None  # the current run of frames >= low
    run_hit: bool = False  # it holds a frame >= high
    run_scores: list[float] = field(default_factory=list)
    run_end: float = 0.0
    event: LiveEvent | None = None  # the last event: open (its run goes on) or waiting out the merge gap
    gap_scores: list[float] = field(default_factory=list)  # raw scores since the event's end
    announced: bool = False


class EventTracker:
    """Causal events of ``labels`` under ``settings`` (:class:`~audioclip.detection.postprocess.PostProcessing`).

    ``step_s``: the seconds between frames (the hop), which sizes the median filter as
    ``detect`` sizes it. ``emit``: ``"end"`` (an event is reported when it has ended, merge
    gap included) or ``"onset"`` (also reported when it starts).
    """

    def __init__(self, labels: Sequence[str], settings: PostProcessing, step_s: float, emit: str = "end"):
        if emit not in ("end", "onset"):
            raise ValueError(f"emit must be 'end' or 'onset', got {emit!r}")
        self.labels, self.settings, self.emit = list(labels), settings, emit
        n = len(self.labels)
        self.high = np.broadcast_to(np.asarray(settings.threshold, dtype=float), (n,)).copy()
        self.low = self.high if settings.threshold_low is None else np.broadcast_to(
            np.asarray(settings.threshold_low, dtype=float), (n,)).copy()
        self.width = frames_for(settings.median_filter_s, step_s)
        self.half = self.width // 2
        #: frames waiting for their smoothed value: (raw scores, cell_start, cell_end)
        self._pending: deque = deque()
        self._history: deque = deque(maxlen=self.width)  # raw scores the filter sees (padded at the start)
        self._state = [_Label() for _ in self.labels]
        self._started = False

    @property
    def delay_frames(self) -> int:
        """Frames between a frame's arrival and its smoothed score being known (the median filter's half)."""
        return self.half

    def push(self, scores: np.ndarray, cell_start: float, cell_end: float) -> list[LiveEvent]:
        """One frame's raw scores ``(C,)``; returns the events decided by it."""
        scores = np.asarray(scores, dtype=float).reshape(len(self.labels))
        if not self._started:  # detect pads the start with the first frame
            self._history.extend([scores] * self.half)
            self._started = True
        self._history.append(scores)
        self._pending.append((scores, cell_start, cell_end))
        out: list[LiveEvent] = []
        if len(self._pending) > self.half:
            out += self._decide(np.median(np.stack(self._history), axis=0))
        return out

    def finish(self) -> list[LiveEvent]:
        """The end of the stream: the last frames (the end padded with the last frame), open events closed."""
        out: list[LiveEvent] = []
        if self._pending:
            last = self._pending[-1][0]
            while self._pending:
                self._history.append(last)
                out += self._decide(np.median(np.stack(self._history), axis=0))
        for c, state in enumerate(self._state):
            out += self._close_run(c, state)
            out += self._flush(c, state)
        return out

    def _decide(self, smooth: np.ndarray) -> list[LiveEvent]:
        raw, start, end = self._pending.popleft()
        allowed = top_k_mask(smooth[None], self.settings.top_k)[0]
        out: list[LiveEvent] = []
        for c, state in enumerate(self._state):
            value = smooth[c] if allowed[c] else -1.0
            if value >= self.low[c]:
                if state.run_start is None:
                    state.run_start, state.run_hit, state.run_scores = start, False, []
                state.run_scores.append(float(raw[c]))
                state.run_end = end
                if value >= self.high[c] and not state.run_hit:
                    state.run_hit = True
                    out += self._join(c, state)
                elif state.run_hit:
                    state.event.end_s = end
                    state.event.scores.append(float(raw[c]))
                elif state.event is not None and state.run_start - state.event.end_s > self.settings.merge_gap_s + _EPS:
                    out += self._flush(c, state)  # this run, if it becomes one, is an event of its own
                out += self._maybe_announce(c, state)
            else:
                out += self._close_run(c, state)
                if state.event is not None:
                    state.gap_scores.append(float(raw[c]))
                    if end - state.event.end_s > self.settings.merge_gap_s + _EPS:
                        out += self._flush(c, state)  # no run can start within the gap any more
        return out

    def _join(self, c: int, state: _Label) -> list[LiveEvent]:
        """The current run just reached the high threshold: it extends the held event or starts a new one."""
        out: list[LiveEvent] = []
        event = state.event
        gap = self.settings.merge_gap_s
        if event is not None and gap > 0 and state.run_start - event.end_s <= gap + _EPS:
            event.scores += state.gap_scores  # the frames between the two runs, as detect's merged span holds them
            event.scores += state.run_scores
            event.end_s = state.run_end
        else:
            out += self._flush(c, state)
            state.event = LiveEvent(self.labels[c], state.run_start, state.run_end, list(state.run_scores))
            state.announced = False
        state.gap_scores = []
        return out

    def _maybe_announce(self, c: int, state: _Label) -> list[LiveEvent]:
        event = state.event
        if self.emit != "onset" or event is None or state.announced or not state.run_hit:
            return []
        if event.end_s - event.start_s >= self.settings.min_duration_s - _EPS:
            state.announced = True
            return [LiveEvent(event.label, event.start_s, event.end_s, list(event.scores), kind="onset")]
        return []

    def _close_run(self, c: int, state: _Label) -> list[LiveEvent]:
        if state.run_start is not None and not state.run_hit:  # never reached the high threshold: not an event
            if state.event is not None:
                state.gap_scores += state.run_scores
        state.run_start, state.run_hit, state.run_scores = None, False, []
        return []

    def _flush(self, c: int, state: _Label) -> list[LiveEvent]:
        event, state.event, state.gap_scores = state.event, None, []
        if event is None or event.end_s - event.start_s < self.settings.min_duration_s - _EPS:
            return []
        return [LiveEvent(event.label, event.start_s, event.end_s, list(event.scores), kind="end")]
