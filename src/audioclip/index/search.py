"""Ranking files for a query vector, and the matching part of long recordings.

Scores are cosine similarities of L2-normalised vectors. A file's score is
that of its best-matching vector: an audio window, an image, or a video
frame (so a long recording is found by its best moment, not its average).

For a recording, the hit's time range is the best window merged with its
neighbours that also match: the longest run of windows, contiguous in time
(each starting no later than the previous one ends) and containing the best
one, whose scores are all within ``margin`` of the best (see
:func:`merge_windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from .base import VectorStore
from .records import SOURCES, Modality, Source

__all__ = ["DEFAULT_MARGIN", "SOURCES", "SearchHit", "merge_windows", "rank"]

DEFAULT_MARGIN = 0.02  # cosine; windows this close to the best one count as matching too


@dataclass
class SearchHit:
    """One file found by a search."""

    id: int  # the file's id in the index (the web page serves files by it)
    path: str
    source: Source  # the file
    score: float  # cosine similarity of the best-matching vector
    modality: Modality  # what matched: "audio" (the sound) or "image" (the picture / a frame)
    start: float | None  # matching time range in seconds, for sound; None for a picture
    end: float | None
    windows: int  # audio windows merged into start..end (0 for a picture)
    duration: float | None  # seconds of sound in the file

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Window:
    start: float
    end: float
    score: float


def merge_windows(windows: Sequence[tuple[float, float, float]], margin: float = DEFAULT_MARGIN
                  ) -> tuple[float, float, float, int]:
    """``(start, end, best score, count)`` of the run of matching windows around the best one.

    ``windows`` are ``(start, end, score)`` of one recording, in any order.
    Starting from the best window, the run grows to the previous and next
    windows in time while they touch or overlap the run and score at least
    ``best - margin``. Ties for best go to the earliest window.
    """
    if not windows:
        raise ValueError("no windows to merge")
    ws = sorted((_Window(float(s), float(e), float(c)) for s, e, c in windows), key=lambda w: (w.start, w.end))
    best = max(range(len(ws)), key=lambda i: (ws[i].score, -i))
    floor = ws[best].score - margin
    lo = hi = best
    eps = 1e-6
    while lo > 0 and ws[lo - 1].end >= ws[lo].start - eps and ws[lo - 1].score >= floor:
        lo -= 1
    while hi + 1 < len(ws) and ws[hi + 1].start <= ws[hi].end + eps and ws[hi + 1].score >= floor:
        hi += 1
    return ws[lo].start, max(w.end for w in ws[lo : hi + 1]), ws[best].score, hi - lo + 1


def rank(
    store: VectorStore,
    query: np.ndarray,
    k: int = 10,
    sources: Sequence[str] | None = None,
    margin: float = DEFAULT_MARGIN,
    exact: bool = False,
) -> list[SearchHit]:
    """The ``k`` best files for the unit vector ``query``, best first."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    total = store.count_rows()
    if total == 0:
        return []
    # Candidate files from the best rows; a long recording has many rows, so
    # ask for more rows until k distinct files are found or the table is exhausted.
    limit = min(max(8 * k, 64), total)  # never more rows than there are (a huge k must not overflow below)
    while True:
        found = store.search(query, limit, sources=sources, exact=exact)
        ids = list(dict.fromkeys(found["file_id"].to_pylist()))
        if len(ids) >= k or found.num_rows < limit or limit >= total:
            break
        limit = min(limit * 4, total)
    ids = ids[:k]
    # Score every vector of those files exactly, from one read per file (each
    # file's rows are committed together, so a file read while an indexer is
    # writing is either its old version or its new one, never a mix).
    rows = store.rows(ids)
    hits = _hits(rows, query, margin)
    hits.sort(key=lambda h: (-h.score, h.path))
    return hits[:k]


def _hits(rows: pa.Table, query: np.ndarray, margin: float) -> list[SearchHit]:
    if rows.num_rows == 0:
        return []
    vectors = rows["vector"].combine_chunks()
    dim = vectors.type.list_size
    matrix = vectors.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    scores = matrix @ query
    columns = {name: rows[name].to_pylist() for name in ("file_id", "path", "source", "modality", "kind",
                                                         "start_s", "end_s", "duration")}
    by_file: dict[int, list[int]] = {}
    for i, fid in enumerate(columns["file_id"]):
        by_file.setdefault(fid, []).append(i)
    hits = []
    for fid, idx in by_file.items():
        best = max(idx, key=lambda i: scores[i])
        first = idx[0]
        base = dict(id=fid, path=columns["path"][first], source=columns["source"][first],
                    duration=columns["duration"][first])
        if columns["kind"][best] == "window":
            windows = [(columns["start_s"][i], columns["end_s"][i], float(scores[i]))
                       for i in idx if columns["kind"][i] == "window"]
            start, end, score, count = merge_windows(windows, margin)
            hits.append(SearchHit(**base, score=score, modality="audio", start=start, end=end, windows=count))
        else:
            hits.append(SearchHit(**base, score=float(scores[best]), modality="image", start=None, end=None,
                                  windows=0))
    return hits
