"""``GET /api/timeline?id=ID&q=TEXT&threshold=T``: a text query's score over time in one indexed recording.

The answer is the recording's score for the text at each time step (``start``/``end``: the seconds each score
stands for, consecutive; ``score`` in [0, 1]) and the events where it passes ``threshold`` (default
:data:`DEFAULT_THRESHOLD`). The page draws it under a sound hit; a click plays the sound from that moment.

What is scored is only ever an indexed file, opened as ``/media`` opens it (``served_files.open_indexed``: no
link followed, the file as recorded), and read from that descriptor. Bounds: ``q`` as long as a search's at
most, recordings longer than ``max_seconds`` refused (413; the index records each file's duration, and the file
must still be the one recorded), one timeline computed at a time (503 "busy" beyond).

The scores come from a function given to the server (``scores``: ``(model, path, text, threshold) -> dict``,
:func:`audioclip.cli.serve.timeline_scores` for ``audioclip serve``: the ``columns`` method of
``audioclip.detection``, one score per 0.41 s); a server made without one answers 404 here.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import AudioclipError
from .served_files import open_indexed
from .web import MAX_QUERY_CHARS, Refused, int64, json_answer, query_of, store_errors

__all__ = ["DEFAULT_THRESHOLD", "Timeline"]

#: events are where the score (``(1 + cosine) / 2``) passes this: a cosine of 0.2, a fair match for AudioCLIP
DEFAULT_THRESHOLD = 0.6
_NUMBER = re.compile(r"[01](\.[0-9]{1,6})?|\.[0-9]{1,6}")

log = logging.getLogger("audioclip.serve")

#: ``(model, path, text, threshold) -> {"start", "end", "score", "events", "duration"}``
Scores = Callable[..., dict]


class Timeline:
    """The route ``/api/timeline`` over ``index``; ``scores`` None: the route answers 404."""

    def __init__(self, index, scores: Scores | None, max_seconds: float):
        self.index, self.scores, self.max_seconds = index, scores, max_seconds
        self._slot = threading.Lock()  # one timeline at a time: each may take seconds of the CPUs

    def routes(self) -> list[Route]:
        return [Route("/api/timeline", self.answer, methods=["GET"])]

    def answer(self, request: Request) -> Response:
        query = query_of(request)
        file_id = int64(query.get("id", ""))
        text = query.get("q", "").strip()
        if file_id is None:
            raise Refused(400, "id must be a file id from a search answer")
        if not text:
            raise Refused(400, "q: type something to draw the timeline of")
        if len(text) > MAX_QUERY_CHARS:
            raise Refused(400, f"the text is too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
        given = query.get("threshold", "")
        if given and not (_NUMBER.fullmatch(given) and 0.0 <= float(given) <= 1.0):
            raise Refused(400, "threshold must be a number from 0 to 1")
        threshold = float(given) if given else DEFAULT_THRESHOLD
        if self.scores is None:
            raise Refused(404, "this server draws no timelines")
        with store_errors():
            try:
                record = self.index.get(file_id)
            except ValueError:  # LanceDB cannot filter on -2**63
                record = None
        if record is None:
            raise Refused(404, "not found")
        if record.source == "image" or not record.duration:
            raise Refused(404, "this file has no sound")
        if record.duration > self.max_seconds:
            raise Refused(413, f"the recording is too long for a timeline ({record.duration:.0f} s; at most "
                           f"{self.max_seconds:g} s)")
        if not self._slot.acquire(blocking=False):
            raise Refused(503, "busy: another timeline is being drawn; try again in a moment",
                           headers={"Retry-After": "5"})
        try:
            fd = open_indexed(record)
            if fd is None:
                raise Refused(404, "not found")
            try:
                # the decoder takes a path: this one names the descriptor already opened and checked
                source = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else record.path
                with store_errors():
                    model = self.index.model
                try:
                    found = self.scores(model, source, text, threshold)
                except (AudioclipError, OSError, ValueError, RuntimeError) as err:  # MediaError: an AudioclipError
                    log.warning("no timeline for file %d: %s", file_id, err)
                    raise Refused(404, "cannot read this sound") from None
            finally:
                os.close(fd)
        finally:
            self._slot.release()
        return json_answer(200, {"id": file_id, "query": text, "threshold": threshold, **found})
