"""What the search page shows of a live source: messages from a listener, sent to each page as server-sent events.

::

    listener thread --publish(kind, obj)--> LiveFeed --(event loop)--> one bounded queue per page --> GET /api/live

:meth:`LiveFeed.publish` is called from any thread (the listener's): it encodes the message
there and hands it to the server's event loop with ``call_soon_threadsafe``, so it never
waits for a client. Each page has its own queue of at most ``queue_size`` messages; when a
page reads too slowly (a slow network, a background tab) its oldest messages are dropped
and counted, and the page is told how many (``event: dropped``) before its next message.
The listener and the other pages never wait for it. At most ``max_clients`` pages stream
at once (503 beyond). A page that connects late first gets the last ``backlog`` messages,
so that it shows the recent past at once (those that fit its queue).

The stream (``text/event-stream``) carries ``event: hello`` (what is listened to: the
source's name, labels, window and hop) first, then ``frame``, ``event``, ``status`` and
``dropped`` messages, each with one line of JSON data, and a comment line every
``ping_s`` seconds, so that a connection that went away is noticed. This module knows
nothing of the listener: the command line connects the two.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import deque

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .web import Refused

__all__ = ["LiveFeed"]

KINDS = ("frame", "event", "status")


class _Client:
    """One page's stream: its queue, the messages dropped from it, the last message it was given."""

    def __init__(self, size: int):
        self.queue: asyncio.Queue = asyncio.Queue(size)
        self.dropped = 0  # messages dropped because the page read too slowly
        self.told = 0  # of those, how many the page has been told about
        self.seen = 0  # the sequence number of the last message queued (the backlog's included)

    def offer(self, seq: int, message: bytes | None) -> None:
        """Queue ``message``, dropping the oldest one when the queue is full (called on the loop's thread)."""
        if seq <= self.seen:  # already given with the backlog
            return
        self.seen = seq
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(message)


class LiveFeed:
    """Messages of a live source for the search page's ``GET /api/live`` (see the module's description).

    ``info``: a JSON object sent first to every page (``hello``): what is being listened to.
    """

    def __init__(self, info: dict | None = None, *, max_clients: int = 8, queue_size: int = 512,
                 backlog: int = 500, ping_s: float = 15.0):
        self.info = dict(info or {})
        self.max_clients, self.queue_size, self.ping_s = max_clients, queue_size, ping_s
        self._lock = threading.Lock()  # guards the backlog, the sequence numbers and the loop
        self._backlog: deque[tuple[int, bytes]] = deque(maxlen=backlog)
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, once a page has connected
        self._clients: set[_Client] = set()  # changed on the loop's thread only
        self.published = 0
        self.closed = False

    # -- the listener's side (any thread) --

    def publish(self, kind: str, obj: dict) -> None:
        """Send ``obj`` as an ``event: kind`` message to every page; never waits for a page."""
        if kind not in KINDS:
            raise ValueError(f"unknown live message kind {kind!r} (one of {', '.join(KINDS)})")
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self.closed:
                return
            seq = next(self._seq)
            message = f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()
            self._backlog.append((seq, message))
            self.published += 1
            loop = self._loop
        if loop is not None:
            self._call(loop, self._deliver, seq, message)

    def close(self) -> None:
        """End every page's stream (the server is stopping); later messages are dropped."""
        with self._lock:
            self.closed = True
            loop = self._loop
        if loop is not None:
            self._call(loop, self._deliver, 1 << 62, None)

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, *args) -> None:
        try:
            loop.call_soon_threadsafe(*args)
        except RuntimeError:  # the loop is closed: the server has stopped, nobody is listening
            pass

    # -- the server's side (the event loop's thread) --

    def _deliver(self, seq: int, message: bytes | None) -> None:
        for client in self._clients:
            client.offer(seq, message)

    def routes(self) -> list[Route]:
        return [Route("/api/live", self.stream, methods=["GET"])]

    async def stream(self, request: Request) -> Response:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request is not None and request.method == "HEAD":  # the head only: a stream would never end
            return Response(headers=headers, media_type="text/event-stream")
        if self.closed:
            raise Refused(503, "the server is stopping")
        if len(self._clients) >= self.max_clients:
            raise Refused(503, f"too many live pages open (at most {self.max_clients}); close one and reload",
                          headers={"Retry-After": "10"})
        client = _Client(self.queue_size)
        with self._lock:
            self._loop = asyncio.get_running_loop()
            for seq, message in list(self._backlog)[-self.queue_size:]:  # what fits: none counted as dropped
                client.offer(seq, message)
        self._clients.add(client)
        return StreamingResponse(self._messages(client), media_type="text/event-stream", headers=headers)

    async def _messages(self, client: _Client):
        hello = json.dumps(self.info, ensure_ascii=False, separators=(",", ":"))
        try:
            yield f"retry: 3000\nevent: hello\ndata: {hello}\n\n".encode()
            while True:
                try:
                    message = await asyncio.wait_for(client.queue.get(), self.ping_s)
                except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on, two before
                    yield b": ping\n\n"
                    continue
                if message is None:  # close()
                    return
                if client.dropped > client.told:
                    client.told = client.dropped
                    yield f"event: dropped\ndata: {json.dumps({'dropped': client.dropped})}\n\n".encode()
                yield message
        finally:
            self._clients.discard(client)

    @property
    def clients(self) -> int:
        """Pages streaming now."""
        return len(self._clients)
