"""A ``detect`` run over many files: locked, resumable by file, its outputs written atomically.

While it runs, each finished recording is kept in ``OUT.parts/`` (one JSON file per
recording, written atomically, with the run's settings in ``settings.json``), and the
output is locked (``.OUT.lock`` beside it, :func:`audioclip.io.exclusive_lock`): a second
job on the same output stops at once. An interrupted run started again with the same
settings skips the recordings already done; at the end the events (and frames) are written
from the parts and the parts folder goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioclipError
from ..io import exclusive_lock, held_by, read_text_bounded, write_text_atomic
from . import FileDetection, detect_files
from .scores import FrameScores
from .writers import write_events, write_frames

__all__ = ["DetectJob", "JobReport", "JobError", "lock_path", "parts_path", "check_not_locked"]

#: settings that do not change a recording's result: a resumed run may differ in them
_FREE_SETTINGS = ("package_version", "created")
_MAX_PART_BYTES = 1 << 30


class JobError(AudioclipError, ValueError):
    """The output cannot be resumed (another run's settings are in its parts)."""


def lock_path(out: str | os.PathLike) -> Path:
    """``.NAME.lock`` beside the output (a file or a folder of per-recording tables)."""
    out = Path(os.fspath(out).rstrip("/"))
    return out.with_name(f".{out.name}.lock")


def parts_path(out: str | os.PathLike) -> Path:
    out = Path(os.fspath(out).rstrip("/"))
    return out.with_name(f"{out.name}.parts")


def check_not_locked(out: str | os.PathLike) -> None:
    """A :class:`~audioclip.io.LockedError` now if another job writes ``out`` (a look; takes no lock)."""
    from ..io import LockedError

    holder = held_by(lock_path(out))
    if holder is not None:
        raise LockedError(f"{out} is being written by another job now ({holder}); wait for it to finish, or write "
                          "to another output", holder)


@dataclass
class JobReport:
    done: int = 0
    skipped: int = 0  # done by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)
    events: int = 0
    written: list[Path] = field(default_factory=list)


def _key(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _comparable(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in _FREE_SETTINGS}


@dataclass
class DetectJob:
    """Detect events in ``paths`` into ``out`` (see the module docstring)."""

    model: Any
    paths: Sequence[str]
    labels: Sequence[str]
    scorer: Callable
    settings: dict[str, Any]
    out: str
    fmt: str | None = None
    frames_out: str | None = None
    per_file: bool = False
    overwrite: bool = False
    method: str = "columns"
    window: float = 5.0
    hop: float = 0.5
    postprocess: Any = None
    options: Any = None
    batch_size: int = 16
    plot_dir: str | None = None
    plot_format: str = "png"
    on_file: Callable[[FileDetection], None] | None = None

    def run(self) -> JobReport:
        report = JobReport()
        with exclusive_lock(lock_path(self.out)):
            parts = parts_path(self.out)
            if self.overwrite and parts.exists():
                shutil.rmtree(parts)
            self._start(parts)
            done = {p for p in self.paths if (parts / f"{_key(p)}.json").is_file()}
            report.skipped = len(done)
            todo = [p for p in self.paths if p not in done]
            for result in detect_files(self.model, todo, self.labels, self.scorer, method=self.method,
                                       window=self.window, hop=self.hop, postprocess=self.postprocess,
                                       options=self.options, batch_size=self.batch_size):
                if result.ok:
                    self._keep(parts, result)
                    if self.plot_dir:
                        from .plot import plot_file

                        plot_file(result, Path(self.plot_dir), fmt=self.plot_format, options=self.options)
                    report.done += 1
                else:
                    report.failed.append((result.path, result.error))
                if self.on_file:
                    self.on_file(result)
            finished = [p for p in self.paths if (parts / f"{_key(p)}.json").is_file()]
            if finished:
                report.written, report.events = self._finish(parts, finished)
                shutil.rmtree(parts)
        return report

    def _start(self, parts: Path) -> None:
        marker = parts / "settings.json"
        if marker.is_file():
            earlier = json.loads(read_text_bounded(marker, 1 << 24, what="run settings"))
            if _comparable(earlier) != _comparable(self.settings):
                changed = sorted(k for k in set(earlier) | set(self.settings)
                                 if k not in _FREE_SETTINGS and earlier.get(k) != self.settings.get(k))
                raise JobError(f"{parts} holds a run with other settings ({', '.join(changed)}); give the same "
                               "settings to resume it, or --overwrite to start over")
            return
        parts.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, json.dumps(self.settings) + "\n", encoding="utf-8")

    def _keep(self, parts: Path, result: FileDetection) -> None:
        f = result.frames
        record = {"path": result.path, "duration_s": f.duration_s, "method": f.method, "labels": f.labels,
                  "events": result.events, "scores": f.scores.tolist(),
                  **{k: getattr(f, k).tolist() for k in ("start_s", "end_s", "cell_start", "cell_end")}}
        write_text_atomic(parts / f"{_key(result.path)}.json", json.dumps(record) + "\n", encoding="utf-8")

    def _finish(self, parts: Path, finished: Sequence[str]) -> tuple[list[Path], int]:
        events, durations, frames = [], {}, []
        for path in finished:
            record = json.loads(read_text_bounded(parts / f"{_key(path)}.json", _MAX_PART_BYTES, what="part"))
            durations[path] = record["duration_s"]
            events += [{"path": path, **ev} for ev in record["events"]]
            if self.frames_out:
                frames.append(FrameScores(path, record["labels"], np.asarray(record["scores"], np.float32),
                                          *(np.asarray(record[k], float)
                                            for k in ("start_s", "end_s", "cell_start", "cell_end")),
                                          record["duration_s"], record["method"]))
        written = write_events(self.out, events, fmt=self.fmt, settings=self.settings, durations=durations,
                               per_file=self.per_file)
        if self.frames_out:
            written.append(write_frames(self.frames_out, frames, self.settings))
        return written, len(events)
