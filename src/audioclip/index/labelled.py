"""The search page's label filter: search results kept only where a fitted head gives the chosen label.

``serve --head HEAD_DIR`` loads a head (:mod:`audioclip.heads`) fitted on the index's checkpoint. A search with
``label=NAME`` then answers only the sound hits whose head decision is ``NAME``. The decision is made on the
hit's stored vector: the indexed window that matched the query best (the index stores window vectors; a hit's
score is that window's). A head with several labels per clip (a sigmoid head) keeps a hit when ``NAME`` is one
of its labels.

Filtering happens after ranking, so finding a page of one label's hits may need more ranked files than the
page: the files ranked grow fourfold until the page is full, the index has no more, or
:data:`MAX_LABEL_CANDIDATES` files were ranked (a label that is rare among the best matches then gives fewer
results, never an unbounded search).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .web import Refused, json_answer

__all__ = ["MAX_LABEL_CANDIDATES", "LabelFilter"]

MAX_LABEL_CANDIDATES = 2000  # files ranked, at most, to fill a page of one label's hits
_SOUND_SOURCES = ("audio", "video")


class LabelFilter:
    """The head's labels for the page (``GET /api/labels``) and the filtered search; ``head`` None: no labels."""

    def __init__(self, head=None):
        self.head = head
        # the background class is never a decision (the head says "none" instead)
        self.labels = [] if head is None else [x for x in head.labels if x != head.background]

    def routes(self) -> list[Route]:
        return [Route("/api/labels", self.answer_labels, methods=["GET"])]

    def answer_labels(self, request: Request) -> Response:
        return json_answer(200, {"labels": self.labels})

    def label_of(self, query: dict[str, str], modality: str | None) -> str | None:
        """The request's ``label`` (None for none or ``any``), checked: a label of the head, a sound modality."""
        label = query.get("label", "")
        if label in ("", "any"):
            return None
        if self.head is None:
            raise Refused(400, "this server has no labels (start it with --head HEAD_DIR)")
        if label not in self.labels:
            shown = label if len(label) <= 60 else label[:60] + "..."
            raise Refused(400, f"unknown label {shown!r}; the labels are {', '.join(self.labels)}")
        if modality is not None and modality not in _SOUND_SOURCES:
            raise Refused(400, "a label filters sounds: modality must be audio or video with it")
        return label

    def search(self, index, vector, n: int, modality: str | None, label: str) -> list:
        """The ``n`` best sound hits for the unit ``vector`` whose head decision is ``label``, best first."""
        import numpy as np

        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        sources = modality or list(_SOUND_SOURCES)
        wanted = max(n, 1)
        while True:
            hits = index.search(vector=query, k=wanted, modality=sources)
            kept = [hit for hit, decision in zip(hits, self._decisions(index, hits, query)) if label in decision]
            if len(kept) >= n or len(hits) < wanted or wanted >= MAX_LABEL_CANDIDATES:
                return kept[:n]
            wanted = min(4 * wanted, MAX_LABEL_CANDIDATES)

    def _decisions(self, index, hits, query) -> list[list[str]]:
        """The head's labels for each hit (``[]`` for a hit that matched by a picture), from its best window."""
        import numpy as np
        import torch

        sounds = [hit for hit in hits if hit.modality == "audio"]
        if not sounds:
            return [[] for _ in hits]
        rows = index.store.rows([hit.id for hit in sounds])
        vectors = rows["vector"].combine_chunks()
        matrix = vectors.values.to_numpy(zero_copy_only=False).reshape(-1, vectors.type.list_size)
        kinds, ids = rows["kind"].to_pylist(), rows["file_id"].to_pylist()
        scores = matrix @ query
        best: dict[int, int] = {}  # file id -> row of its best window (as ranking chose it)
        for i, (fid, kind) in enumerate(zip(ids, kinds)):
            if kind == "window" and (fid not in best or scores[i] > scores[best[fid]]):
                best[fid] = i
        found = [hit.id for hit in sounds if hit.id in best]
        labels: dict[int, list[str]] = {}
        if found:
            chosen = torch.from_numpy(np.ascontiguousarray(matrix[[best[fid] for fid in found]], dtype=np.float32))
            for fid, decision in zip(found, self.head.decide(self.head.probabilities(chosen))):
                labels[fid] = decision.split(";")
        return [labels.get(hit.id, []) if hit.modality == "audio" else [] for hit in hits]
