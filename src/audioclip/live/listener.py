"""The live loop: audio on a capture thread into a bounded ring buffer, inference on the complete windows.

::

    source --(capture thread)--> RingBuffer --(Listener.run: windows due)--> scorer --> EventTracker
                                                                                 |            |
                                                                       frames stream    events: stdout, log

Windows lie on a fixed grid (``window`` s long, every ``hop`` s from the first sample), the
grid ``detect --method windows`` cuts a file on. Complete windows may wait for the model up to
``max_delay`` seconds behind the newest one (``1 + max_delay / hop`` windows, scored together
in one batch when the model is free): one slow call (another process taking the CPU for a
moment) delays a few windows instead of losing them. When inference stays slower than the
audio, the oldest pending windows beyond that are dropped: each drop is counted (a field of
every frame line, a line on standard error at most once a second, the total at exit), and the
ring buffer holds a fixed number of samples, so memory stays flat and a window's scores come at
most ``max_delay`` and a hop after its audio, plus the model's time for one batch of the windows
waiting (up to ``min(1 + max_delay / hop, batch_size)`` of them). On a machine that cannot keep
up at all, ``max_delay=0`` (only the newest window is ever scored) gives the lowest latency.
With ``drop=False`` (a recording read faster than it plays) the capture thread waits for room
instead, and every window is scored.

Times are seconds since listening began (the first sample) and wall-clock times: the wall
time of the first sample plus the seconds. For a live source (``drop=True``) the first sample's
time is the earliest that the arrivals allow: sample ``s`` cannot arrive before ``s`` seconds
after the first, so audio waiting in a pipe when listening began moves the start back.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F

from ..detection.postprocess import PostProcessing
from ..media.audio import SAMPLE_RATE
from .tracker import EventTracker, LiveEvent

__all__ = ["RingBuffer", "Listener", "ListenReport", "EventLog", "iso_time", "json_line"]


class RingBuffer:
    """The last ``capacity`` samples of a ``(channels, n)`` stream; ``written``: samples ever written.

    One writer (the capture thread) and one reader. ``block=True`` makes the writer wait while
    the samples the reader still needs (from :attr:`needed_from` on) would be overwritten.
    """

    def __init__(self, channels: int, capacity: int):
        self.data = np.zeros((channels, capacity), np.float32)
        self.capacity = capacity
        self.written = 0
        self.needed_from = 0
        self.closed = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def write(self, block: np.ndarray, block_until_room: bool = False) -> None:
        n = block.shape[1]
        for i in range(0, n, self.capacity // 2):  # a block longer than half the ring goes in pieces
            piece = block[:, i: i + self.capacity // 2]
            with self.cond:
                if block_until_room:
                    while self.written + piece.shape[1] - self.needed_from > self.capacity and not self.closed:
                        self.cond.wait(0.5)
                at = self.written % self.capacity
                first = min(piece.shape[1], self.capacity - at)
                self.data[:, at: at + first] = piece[:, :first]
                self.data[:, : piece.shape[1] - first] = piece[:, first:]
                self.written += piece.shape[1]
                self.cond.notify_all()

    def read(self, start: int, size: int) -> np.ndarray:
        """Samples ``[start, start + size)`` (still in the ring) as a new array."""
        with self.cond:
            if start < self.written - self.capacity or start + size > self.written:
                raise IndexError(f"samples {start}..{start + size} are not in the ring (written {self.written})")
            idx = np.arange(start, start + size) % self.capacity
            return self.data[:, idx]

    def close(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.closed, self.error = True, error
            self.cond.notify_all()


def iso_time(seconds: float) -> str:
    """A wall-clock time (``time.time()`` seconds) as local ISO 8601 with its offset, to the millisecond."""
    return datetime.fromtimestamp(seconds, timezone.utc).astimezone().isoformat(timespec="milliseconds")


@dataclass
class ListenReport:
    windows: int = 0  # windows scored
    dropped: int = 0  # windows dropped because inference fell behind
    events: int = 0
    seconds: float = 0.0  # audio heard
    stopped_by: str = "end"  # "end" of the source, "error", "interrupt", "broken pipe"


class Listener:
    """Listen to ``source`` (an iterable of float32 ``(channels, n)`` blocks at 44.1 kHz) and report events.

    - ``embed``: a batch of windows ``(N, channels, samples)`` -> L2-normalised embeddings
      ``(N, D)`` (:meth:`from_model` gives the model's, as ``detect`` embeds a window);
    - ``scorer``: embeddings -> scores ``(N, C)`` of ``labels`` (``detect``'s scorers);
    - ``on_event(event_dict)``, ``on_frame(frame_dicts)``: called on the inference thread.

    An event dict: ``label, start, end`` (ISO 8601), ``start_s, end_s`` (seconds since
    listening began), ``score`` (peak), ``mean_score``, and ``event`` (``"onset"`` or
    ``"end"``) with ``emit="onset"``.
    """

    def __init__(self, source: Iterable[np.ndarray], embed: Callable[[torch.Tensor], torch.Tensor],
                 scorer: Callable[[torch.Tensor], torch.Tensor], labels: Sequence[str], *, window: float = 2.0,
                 hop: float = 0.5, postprocess: PostProcessing = PostProcessing(), emit: str = "end",
                 drop: bool = True, max_delay: float = 1.0, batch_size: int = 8, ring_seconds: float | None = None,
                 on_event: Callable[[dict], None] | None = None, on_frame: Callable[[list[dict]], None] | None = None,
                 on_drop: Callable[[int, int], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.source, self.embed, self.scorer, self.labels = source, embed, scorer, list(labels)
        self.size = max(1, round(window * SAMPLE_RATE))
        self.step = max(1, round(hop * SAMPLE_RATE))
        self.window, self.hop = window, hop
        self.tracker = EventTracker(self.labels, postprocess, hop, emit)
        self.emit, self.drop, self.batch_size = emit, drop, batch_size
        if max_delay < 0:
            raise ValueError(f"max_delay must be 0 or more seconds, got {max_delay}")
        # complete windows that may wait: the newest and those at most max_delay older
        self.backlog = 1 + int(max_delay / hop + 1e-9)
        # the window, the backlog (or 8 hops), and room for a source's block (up to ~4 s)
        self.ring_seconds = ring_seconds or window + max(8 * hop, 4.0, max_delay + hop) + 4.0
        self.on_event, self.on_frame, self.on_drop = on_event, on_frame, on_drop
        self.clock, self.wall = clock, wall
        self.report = ListenReport()
        self.t0: float | None = None  # clock() of the first sample
        self.wall0: float | None = None
        self._ring: RingBuffer | None = None
        self._stop = threading.Event()

    @classmethod
    def from_model(cls, model, source, scorer, labels, **kwargs) -> Listener:
        """A listener embedding windows with ``model.encode_audio``, as ``detect --method windows`` does."""
        def embed(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return F.normalize(model.encode_audio(batch.to(model.device)).float(), dim=-1).cpu()

        return cls(source, embed, scorer, labels, **kwargs)

    # -- the capture thread ------------------------------------------------------------------------

    def _capture(self, first: np.ndarray, blocks) -> None:
        ring = self._ring
        try:
            block = first
            while block is not None and not self._stop.is_set():
                ring.write(block, block_until_room=not self.drop)
                if self.drop:
                    # A live source delivers sample s no earlier than s after the first: audio that was already
                    # waiting when listening began (a pipe filled while the model loaded) moves the start back.
                    behind = self.t0 - (self.clock() - ring.written / SAMPLE_RATE)
                    if behind > 0:
                        self.t0 -= behind
                        self.wall0 -= behind
                block = next(blocks, None)
            ring.close()
        except BaseException as err:  # noqa: BLE001 - handed to the inference thread, which reports it
            ring.close(err)

    # -- the inference loop ------------------------------------------------------------------------

    def run(self) -> ListenReport:
        """Listen until the source ends (or :meth:`stop`); raises the source's error. Returns the report."""
        blocks = iter(self.source)
        first = next(blocks, None)
        if first is None:
            return self.report
        arrived = self.clock()
        # the first block's samples were captured over the block's duration, before it arrived
        self.t0 = arrived - first.shape[1] / SAMPLE_RATE
        self.wall0 = self.wall() - first.shape[1] / SAMPLE_RATE
        # at least the windows that may wait, and one more hop being written
        self._ring = ring = RingBuffer(first.shape[0], max(self.size + self.backlog * self.step,
                                                           int(self.ring_seconds * SAMPLE_RATE)))
        thread = threading.Thread(target=self._capture, args=(first, blocks), name="audioclip-capture", daemon=True)
        thread.start()
        next_start = 0
        last_warning = -1.0
        try:
            while True:
                with ring.cond:  # the windows are read under the lock: the writer cannot overtake the read
                    while ring.written < next_start + self.size and not ring.closed:
                        ring.cond.wait(0.5)
                    if ring.error is not None:
                        raise ring.error
                    if ring.written < next_start + self.size:  # the source ended
                        break
                    ready = (ring.written - self.size - next_start) // self.step + 1  # complete windows pending
                    skipped = max(0, ready - self.backlog) if self.drop else 0
                    if skipped:
                        self.report.dropped += skipped
                        next_start += skipped * self.step
                        ready = self.backlog
                    count = min(ready, self.batch_size)
                    starts = [next_start + i * self.step for i in range(count)]
                    batch = torch.from_numpy(np.stack([ring.read(s, self.size) for s in starts]))
                    next_start += count * self.step
                    ring.needed_from = next_start
                    ring.cond.notify_all()
                if skipped:
                    now = self.clock()
                    if self.on_drop is not None and now - last_warning >= 1.0:
                        self.on_drop(skipped, self.report.dropped)
                        last_warning = now
                self._score(starts, batch)
                if self._stop.is_set():
                    break
        finally:
            self._stop.set()
            ring.close()
        self.report.seconds = ring.written / SAMPLE_RATE
        self._events(self.tracker.finish())
        return self.report

    def stop(self) -> None:
        self._stop.set()

    def close_events(self) -> None:
        """Report the events still open (at an interruption), ending at the last frame scored."""
        self._events(self.tracker.finish())

    def _score(self, starts: list[int], batch: torch.Tensor) -> None:
        began = self.clock()
        with torch.no_grad():
            scores = self.scorer(self.embed(batch)).float().cpu().numpy()
        emitted = self.clock() - self.t0
        compute = (self.clock() - began) / len(starts)
        frames = []
        for start, row in zip(starts, scores):
            start_s, end_s = start / SAMPLE_RATE, (start + self.size) / SAMPLE_RATE
            centre = (start_s + end_s) / 2
            # the hop around the window's centre; the first reaches back to 0 (as detect's cells)
            cell_start = 0.0 if start == 0 else centre - self.hop / 2
            self._events(self.tracker.push(row, cell_start, centre + self.hop / 2))
            if self.on_frame is not None:
                frames += [{"start_s": round(start_s, 6), "end_s": round(end_s, 6), "label": label,
                            "score": float(s), "emitted_s": round(emitted, 6), "compute_s": round(compute, 6),
                            "dropped": self.report.dropped} for label, s in zip(self.labels, row)]
        self.report.windows += len(starts)
        if frames:
            self.on_frame(frames)

    def _events(self, events: list[LiveEvent]) -> None:
        for ev in events:
            record = {"label": ev.label, "start": iso_time(self.wall0 + ev.start_s),
                      "end": iso_time(self.wall0 + ev.end_s), **ev.record()}
            if self.emit == "onset":
                record["event"] = ev.kind
            if ev.kind == "end":
                self.report.events += 1
            if self.on_event is not None:
                self.on_event(record)


class EventLog:
    """Events appended to a file, one line each, flushed and fsynced as they come: a kill loses nothing written.

    Formats that can be appended: ``jsonl`` (the event dicts), ``csv`` (``detect``'s columns
    ``path, label, start_s, end_s, score, mean_score`` and the wall-clock ``start, end``; the
    header written once, when the file is new), ``audacity`` (``start<TAB>end<TAB>label score``,
    seconds since that run began listening).
    """

    CSV_COLUMNS = ("path", "label", "start_s", "end_s", "score", "mean_score", "start", "end")

    def __init__(self, path: str | os.PathLike, fmt: str, source_name: str):
        self.path, self.fmt, self.source_name = os.fspath(path), fmt, source_name
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if fmt == "csv" and os.fstat(self.fd).st_size == 0:
            self._write(",".join(self.CSV_COLUMNS) + "\n")

    def _write(self, text: str) -> None:
        data = text.encode("utf-8")
        while data:  # O_APPEND: each write lands at the end, whole lines from one process
            data = data[os.write(self.fd, data):]
        os.fsync(self.fd)

    def write(self, event: dict) -> None:
        if event.get("event", "end") != "end" and self.fmt != "jsonl":
            return  # a table holds complete events only
        if self.fmt == "jsonl":
            self._write(json.dumps(event, ensure_ascii=False) + "\n")
        elif self.fmt == "csv":
            import csv
            import io

            buffer = io.StringIO()
            row = {"path": self.source_name, **event}
            csv.writer(buffer, lineterminator="\n").writerow([row[c] for c in self.CSV_COLUMNS])
            self._write(buffer.getvalue())
        else:  # audacity
            label = " ".join(str(event["label"]).replace("\t", " ").split())
            self._write(f"{event['start_s']:.6f}\t{event['end_s']:.6f}\t{label} {event['score']:.4f}\n")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def json_line(stream, obj) -> None:
    """One JSON object per line on ``stream``, flushed (a reader downstream sees it at once)."""
    stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
    stream.flush()


def stderr_line(text: str) -> None:
    print(f"audioclip listen: {text}", file=sys.stderr, flush=True)
