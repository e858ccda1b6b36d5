"""``/api/timeline``: a text query's score over time in a recording, indexed or uploaded.

- ``GET /api/timeline?id=ID&q=TEXT&threshold=T``: in an indexed recording. What is scored is only ever an
  indexed file, opened as ``/media`` opens it (``served_files.open_indexed``: no link followed, the file as
  recorded), and read from that descriptor; recordings longer than ``max_seconds`` are refused (413; the
  index records each file's duration, and the file must still be the one recorded).
- ``POST /api/timeline?q=TEXT&name=FILE.wav&threshold=T``: in the recording sent as the body, under the
  bounds of every upload (``received.py``: header, size, receiving and decoding caps, deadlines) and decoded
  by a worker process like a query upload (``uploads.py``), at most ``max_seconds`` of it; nothing of it is
  kept. The page sends the file the user picked, to draw a timeline of it.

The answer is the recording's score for the text at each time step (``start``/``end``: the seconds each score
stands for, consecutive; ``score`` in [0, 1]) and the events where it passes ``threshold`` (default
:data:`DEFAULT_THRESHOLD`). The page draws it; a click plays the sound from that moment. Bounds: ``q`` as long
as a search's at most, one timeline computed at a time (503 "busy" beyond).

The scores come from a function given to the server (``scores``: ``(model, path, text, threshold, audio=None)
-> dict``, :func:`audioclip.cli.serve.timeline_scores` for ``audioclip serve``: the ``columns`` method of
``audioclip.detection``, one score per 0.41 s); a server made without one answers 404 here.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import AudioclipError
from .received import UploadGate, upload_name
from .served_files import open_indexed
from .web import MAX_QUERY_CHARS, Refused, int64, json_answer, query_of, store_errors

__all__ = ["DEFAULT_THRESHOLD", "Timeline"]

#: events are where the score (``(1 + cosine) / 2``) passes this: a cosine of 0.2, a fair match for AudioCLIP
DEFAULT_THRESHOLD = 0.6
_NUMBER = re.compile(r"[01](\.[0-9]{1,6})?|\.[0-9]{1,6}")

log = logging.getLogger("audioclip.serve")

#: ``(model, path, text, threshold, audio=None) -> {"start", "end", "score", "events", "duration"}``
Scores = Callable[..., dict]


class Timeline:
    """The routes ``/api/timeline`` over ``index``, uploads through ``gate``; ``scores`` None: they answer 404."""

    def __init__(self, index, scores: Scores | None, max_seconds: float, gate: UploadGate):
        self.index, self.scores, self.max_seconds, self.gate = index, scores, max_seconds, gate
        self._slot = threading.Lock()  # one timeline at a time: each may take seconds of the CPUs

    def routes(self) -> list[Route]:
        return [Route("/api/timeline", self.answer, methods=["GET"]),
                Route("/api/timeline", self.answer_upload, methods=["POST"])]

    def _asked(self, query) -> tuple[str, float]:
        """The text and the threshold asked for; 400 for bad ones, 404 when this server draws no timelines."""
        text = query.get("q", "").strip()
        if not text:
            raise Refused(400, "q: type something to draw the timeline of")
        if len(text) > MAX_QUERY_CHARS:
            raise Refused(400, f"the text is too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
        given = query.get("threshold", "")
        if given and not (_NUMBER.fullmatch(given) and 0.0 <= float(given) <= 1.0):
            raise Refused(400, "threshold must be a number from 0 to 1")
        if self.scores is None:
            raise Refused(404, "this server draws no timelines")
        return text, float(given) if given else DEFAULT_THRESHOLD

    async def answer_upload(self, request: Request) -> Response:
        length = self.gate.length_of(request)
        query = query_of(request)
        text, threshold = self._asked(query)
        name = upload_name(query)
        self._check_slot()  # busy now: 503 before the body is sent and decoded for nothing
        async with self.gate.received(request, name, length) as path:
            decoded = await self.gate.decode(path, name, audio=True)
            try:
                found = await run_in_threadpool(self._scored, name, text, threshold, decoded.audio)
            finally:
                del decoded  # its memory map, before the folder goes
        return json_answer(200, {"name": name, "query": text, "threshold": threshold, **found})

    def _check_slot(self) -> None:
        if self._slot.locked():
            raise _busy()

    def _scored(self, name: str, text: str, threshold: float, audio) -> dict:
        """The timeline of the decoded upload ``audio``, one timeline at a time."""
        if not self._slot.acquire(blocking=False):
            raise _busy()
        try:
            with store_errors():
                model = self.index.model
            try:
                return self.scores(model, name, text, threshold, audio=audio)
            except (AudioclipError, OSError, ValueError, RuntimeError) as err:
                log.warning("no timeline for the upload %s: %s", name, err)
                raise Refused(400, f"{name}: cannot draw a timeline of this sound") from None
        finally:
            self._slot.release()

    def answer(self, request: Request) -> Response:
        query = query_of(request)
        file_id = int64(query.get("id", ""))
        if file_id is None:
            raise Refused(400, "id must be a file id from a search answer")
        text, threshold = self._asked(query)
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
            raise _busy()
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


def _busy() -> Refused:
    return Refused(503, "busy: another timeline is being drawn; try again in a moment", headers={"Retry-After": "5"})
