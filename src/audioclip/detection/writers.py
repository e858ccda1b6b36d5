"""Event and frame outputs: CSV, Parquet, JSON lines, Raven selection tables, Audacity label tracks.

Events are rows ``path, label, start_s, end_s, score, mean_score``; frames are rows
``path, start_s, end_s, label, score`` (one per time step and label; ``start_s``/``end_s``
is the stretch of audio the score describes). A Parquet output carries the settings in its
key-value metadata (``audioclip.*`` keys, JSON values); the other formats have them in a
sidecar ``OUT.meta.json``. Every file is written atomically (:mod:`audioclip.io`).

Raven selection tables are tab-separated with Raven's columns ``Selection, View, Channel,
Begin Time (s), End Time (s), Low Freq (Hz), High Freq (Hz)`` plus ``Label`` and ``Score``.
One table per recording (``<stem>.selections.txt``), or one table for several recordings
opened in Raven as one sequence: ``Begin Time (s)`` then counts from the start of the first
file, and ``Begin Path`` and ``File Offset (s)`` (seconds into that file) say where each
selection is. Audacity label tracks are ``start<TAB>end<TAB>label score`` lines.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_text_atomic, atomic_path

__all__ = ["FORMATS", "SUFFIXES", "format_for", "write_events", "write_frames", "frames_table", "events_table",
           "raven_table", "audacity_labels", "META_SUFFIX", "RAVEN_COLUMNS", "read_settings"]

FORMATS = ("csv", "parquet", "jsonl", "raven", "audacity")
#: output suffixes and their format; ``.txt`` is Raven's or Audacity's and needs ``--format``
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
FRAME_FORMATS = ("csv", "parquet", "jsonl")
META_SUFFIX = ".meta.json"
EVENT_COLUMNS = ("path", "label", "start_s", "end_s", "score", "mean_score")
FRAME_COLUMNS = ("path", "start_s", "end_s", "label", "score")
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Label", "Score")
METADATA_PREFIX = "audioclip."


def format_for(path: str | os.PathLike, requested: str | None = None, allowed: Sequence[str] = FORMATS) -> str:
    """The output format: as requested, else from the suffix; a ValueError naming the choices if neither works."""
    if requested:
        if requested not in allowed:
            raise ValueError(f"unknown format {requested!r}; choose from {', '.join(allowed)}")
        return requested
    suffix = Path(os.fspath(path)).suffix.lower()
    fmt = SUFFIXES.get(suffix)
    if fmt is None or fmt not in allowed:
        got = f"'{suffix}'" if suffix else "no suffix"
        known = ", ".join(s for s, f in SUFFIXES.items() if f in allowed)
        extra = " (a Raven or Audacity table: give --format raven or --format audacity)" if "raven" in allowed else ""
        raise ValueError(f"{path}: {got} is not an output format; use {known}{extra}")
    return fmt


# -- tables ------------------------------------------------------------------------------------------


def events_table(events: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None = None):
    import pyarrow as pa

    columns = {
        "path": pa.array([e["path"] for e in events], pa.string()),
        "label": pa.array([e["label"] for e in events], pa.string()),
        **{k: pa.array([float(e[k]) for e in events], pa.float64()) for k in ("start_s", "end_s")},
        **{k: pa.array([float(e[k]) for e in events], pa.float32()) for k in ("score", "mean_score")},
    }
    return pa.table(columns).replace_schema_metadata(_metadata(settings))


def frames_table(frames, settings: Mapping[str, Any] | None = None):
    """Frame scores (:class:`~audioclip.detection.scores.FrameScores`, several) as one long table."""
    import pyarrow as pa

    paths, starts, ends, labels, scores = [], [], [], [], []
    for f in frames:
        t, c = f.scores.shape
        paths.append(np.full(t * c, f.path, dtype=object))
        starts.append(np.repeat(f.start_s, c))
        ends.append(np.repeat(f.end_s, c))
        labels.append(np.tile(np.asarray(f.labels, dtype=object), t))
        scores.append(f.scores.reshape(-1))
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
    table = pa.table({
        "path": pa.array(cat(paths, object), pa.string()),
        "start_s": pa.array(cat(starts, float), pa.float64()),
        "end_s": pa.array(cat(ends, float), pa.float64()),
        "label": pa.array(cat(labels, object), pa.string()),
        "score": pa.array(cat(scores, np.float32), pa.float32()),
    })
    return table.replace_schema_metadata(_metadata(settings))


def _metadata(settings: Mapping[str, Any] | None) -> dict[bytes, bytes] | None:
    if not settings:
        return None
    return {(METADATA_PREFIX + k).encode(): json.dumps(v).encode() for k, v in settings.items()}


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings an output was made with: from a Parquet file's metadata or the sidecar ``OUT.meta.json``."""
    from ..io import read_text_bounded

    path = os.fspath(path)
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
        return {k.decode()[len(METADATA_PREFIX):]: json.loads(v) for k, v in metadata.items()
                if k.decode().startswith(METADATA_PREFIX)}
    return json.loads(read_text_bounded(path + META_SUFFIX, 1 << 24, what="output settings"))


# -- writing ------------------------------------------------------------------------------------------


def _write_table(path: Path, table, fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return
    rows = table.to_pylist()
    if fmt == "csv":
        buffer = _io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=table.column_names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buffer.getvalue(), encoding="utf-8")
    elif fmt == "jsonl":
        write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    else:  # pragma: no cover - checked by the callers
        raise ValueError(f"no table format {fmt!r}")


def _write_sidecar(path: Path, settings: Mapping[str, Any] | None) -> None:
    if settings:
        write_text_atomic(Path(os.fspath(path) + META_SUFFIX), json.dumps(dict(settings), indent=1) + "\n",
                          encoding="utf-8")


def write_frames(path: str | os.PathLike, frames, settings: Mapping[str, Any] | None = None,
                 fmt: str | None = None) -> Path:
    """Write frame scores to ``path`` (.parquet, .csv or .jsonl)."""
    path = Path(path)
    fmt = format_for(path, fmt, FRAME_FORMATS)
    _write_table(path, frames_table(frames, settings if fmt == "parquet" else None), fmt)
    if fmt != "parquet":
        _write_sidecar(path, settings)
    return path


def raven_table(events: Sequence[Mapping[str, Any]], *, high_freq: float = 22050.0,
                offsets: Mapping[str, float] | None = None) -> str:
    """A Raven selection table (tab-separated text) of ``events``.

    ``offsets`` (path -> seconds from the start of the first file to the start of this one):
    one table for several files opened as a sequence, with ``Begin Path`` and ``File Offset (s)``.
    """
    columns = list(RAVEN_COLUMNS) + (["Begin Path", "File Offset (s)"] if offsets is not None else [])
    lines = ["\t".join(columns)]
    for i, ev in enumerate(events, start=1):
        shift = offsets[ev["path"]] if offsets is not None else 0.0
        row = [str(i), "Spectrogram 1", "1", f"{shift + ev['start_s']:.6f}", f"{shift + ev['end_s']:.6f}", "0",
               f"{high_freq:g}", _tsv_text(ev["label"]), f"{ev['score']:.6f}"]
        if offsets is not None:
            row += [_tsv_text(ev["path"]), f"{ev['start_s']:.6f}"]
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def audacity_labels(events: Sequence[Mapping[str, Any]]) -> str:
    """An Audacity label track: ``start<TAB>end<TAB>label score`` per event (seconds, six decimals)."""
    return "".join(f"{ev['start_s']:.6f}\t{ev['end_s']:.6f}\t{_tsv_text(ev['label'])} {ev['score']:.4f}\n"
                   for ev in events)


def _tsv_text(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split())


def per_file_name(path: str, fmt: str) -> str:
    """The name of one recording's table in a folder output: ``<stem>.selections.txt`` or ``<stem>.labels.txt``."""
    stem = Path(path).stem
    return f"{stem}.selections.txt" if fmt == "raven" else f"{stem}.labels.txt"


def write_events(path: str | os.PathLike, events: Sequence[Mapping[str, Any]], *, fmt: str | None = None,
                 settings: Mapping[str, Any] | None = None, durations: Mapping[str, float] | None = None,
                 per_file: bool = False, high_freq: float = 22050.0) -> list[Path]:
    """Write ``events`` to ``path`` in ``fmt`` (default: from the suffix); returns the files written.

    ``durations`` (path -> seconds, in the order the files were given) places the files of a
    combined Raven table one after another. ``per_file`` (Raven, Audacity): ``path`` is a
    folder that gets one table per recording in ``durations`` (also those without events).
    """
    path = Path(path)
    fmt = format_for(path, fmt)
    if fmt in ("csv", "parquet", "jsonl"):
        _write_table(path, events_table(events, settings if fmt == "parquet" else None), fmt)
        if fmt != "parquet":
            _write_sidecar(path, settings)
        return [path]
    render = (lambda evs, offsets=None: raven_table(evs, high_freq=high_freq, offsets=offsets)) if fmt == "raven" \
        else (lambda evs, offsets=None: audacity_labels(evs))
    if per_file:
        path.mkdir(parents=True, exist_ok=True)
        written = []
        names = {}
        for recording in durations or {}:
            name = per_file_name(recording, fmt)
            if name in names.values():  # two recordings with one stem: number the second
                name = f"{Path(name).stem.split('.')[0]}-{len(names)}{''.join(Path(name).suffixes)}"
            names[recording] = name
            mine = [ev for ev in events if ev["path"] == recording]
            written.append(write_text_atomic(path / name, render(mine), encoding="utf-8"))
        _write_sidecar(path / "detect", settings)
        return written
    offsets = None
    if fmt == "raven" and durations is not None and len(durations) > 1:
        offsets, total = {}, 0.0
        for recording, seconds in durations.items():
            offsets[recording] = total
            total += seconds
    write_text_atomic(path, render(events, offsets), encoding="utf-8")
    _write_sidecar(path, settings)
    return [path]
