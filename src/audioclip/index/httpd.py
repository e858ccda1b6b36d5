"""The HTTP/1.1 layer under ``audioclip serve``: uvicorn (h11) with deadlines, size and framing checks.

uvicorn's public settings give four of the bounds (``SearchServer`` sets them):
``timeout_keep_alive`` (a connection idle between requests),
``limit_concurrency`` (503 past the connection cap),
``h11_max_incomplete_event_size`` (a head still arriving) and
``timeout_graceful_shutdown``. None bounds

- the request head: a client that connects and says nothing, or sends
  ``GET / HT`` and stalls, holds its connection (and a place under
  ``limit_concurrency``) for ever: the "slowloris" attack;
- a request body still arriving after the answer went out (uvicorn reads and
  drops it, for as long as it comes);
- a client that stops reading the answer (the application waits to write);
- the size of a complete request head that arrives in one read (asyncio reads
  up to 256 kB at a time);
- what one client address may take: ``limit_concurrency`` counts all
  connections together, so one client holding them all locks everyone out;

and uvicorn answers whatever h11 refuses with a plain-text 400.

So each connection's protocol (uvicorn's) gets a :class:`ConnectionGuard` in
front of it: :func:`run_guarded` runs uvicorn's ``Server.serve`` in a
:class:`GuardedLoop`, an asyncio event loop that wraps the protocol factory of
every server it creates (public APIs only: asyncio's, h11's, uvicorn's
``Config`` and ``Server``). The guard parses the bytes first with h11 (as
uvicorn does, with the same settings), hands uvicorn one request at a time,
holds the deadlines, the head size and the per-client connection cap
(:class:`ClientCounts`), and answers what h11 refuses with h11's status in
JSON. :class:`AnswerTracker` (ASGI middleware) tells it when the answer begins
and ends. :class:`ClientRateLimit` answers 429 to an address past its
request rate (a token bucket); :class:`FramingGuard` refuses what h11 lets
through but RFC 9112 calls faulty framing (``Transfer-Encoding`` with
``Content-Length``, or in HTTP/1.0). All limits are in :class:`ConnectionLimits`.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11

__all__ = ["AnswerTracker", "ClientCounts", "ClientRateLimit", "ConnectionGuard", "ConnectionLimits", "FramingGuard",
           "GuardedLoop", "client_key", "run_guarded"]

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its log level (quiet or not) applies to these lines
_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head, as h11 finds it (a bare LF ends lines too)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long, and how much, a client may take; every wait on a client is bounded by one of these."""

    head_timeout: float = 10.0  # s to send a whole request line and headers (from connecting, or its first byte)
    keep_alive: float = 5.0  # s a connection may stay idle between requests
    body_idle_timeout: float = 10.0  # s an upload may pause between two pieces of its body
    body_timeout: float = 300.0  # s for a whole upload body (20 MB at ~0.5 Mbit/s)
    write_timeout: float = 60.0  # s a client may leave our answer unread
    drain_timeout: float = 10.0  # s a refused request's body is read (and dropped) after the answer
    drain_bytes: int = 64_000_000  # bytes of it read at most; then the connection is closed
    max_connections: int = 64  # open connections; past it, new requests get 503 at once
    max_head_bytes: int = 16384  # a request line and headers together; past it, 431 and the connection closed
    max_connections_per_client: int = 16  # open connections of one address (an IPv6 /64); more are closed at once
    client_rate: float = 20.0  # requests per second one address may make, on average; past it, 429
    client_burst: int = 100  # requests one address may make at once (a page of results, say) before the rate holds

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if not getattr(self, name) > 0:
                raise ValueError(f"ConnectionLimits.{name} must be positive, got {getattr(self, name)!r}")


def client_key(host: str | None) -> str:
    """The address the per-client limits count under: an IPv4 address as is, an IPv6 one by its /64 network.

    A single IPv6 host is usually handed a whole /64, so counting its
    addresses one by one would give it billions of allowances. An
    IPv4-mapped IPv6 address counts as the IPv4 one. Anything else (a Unix
    socket's '' or None) is one key.
    """
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return str(host or "")
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class ClientCounts:
    """Open connections per client address (:func:`client_key`), for the per-client connection cap.

    Used from the event loop's thread only. An address leaves the table with
    its last connection, so the table holds at most one entry per open
    connection.
    """

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def admit(self, key: str, cap: int) -> bool:
        """Count one more connection of ``key`` and return True, unless it already holds ``cap``."""
        held = self.open.get(key, 0)
        if held >= cap:
            return False
        self.open[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self.open.get(key, 0) - 1
        if held > 0:
            self.open[key] = held
        else:
            self.open.pop(key, None)


def json_error_bytes(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


# The guard of the connection a request came on: set while the guard hands uvicorn bytes, so that the task uvicorn
# creates for a request (asyncio copies the context into it) finds its guard (AnswerTracker).
_GUARD: contextvars.ContextVar[ConnectionGuard | None] = contextvars.ContextVar("audioclip_guard", default=None)


class ConnectionGuard(asyncio.Protocol):
    """One connection's checks and deadlines, in front of ``inner`` (uvicorn's protocol for it).

    Bytes go through ``parser`` (h11, as a server) before ``inner`` gets them:

    - a head over ``max_head_bytes`` is answered 431 before h11 parses it, and
      what h11 refuses is answered with h11's status in JSON; the connection is
      then closed and ``inner`` never sees those bytes;
    - ``inner`` gets one request at a time: the bytes of a request pipelined
      behind it are held (``held``) until its answer is complete, then checked
      like any head.

    One timer runs while the client owes us something:

    - ``head``: a request head is owed (a new connection, or the next request
      has begun to arrive; between requests uvicorn's keep-alive timer runs).
      The deadline runs from that moment and is not extended by more bytes, so
      sending a byte a second does not help.
    - ``drain``: our answer is complete but their body is still coming: at most
      ``drain_bytes`` within ``drain_timeout``, so that a client refused early
      (413, 503) still gets to read the answer.

    A second timer runs while writing is paused because the client does not
    read: past ``write_timeout`` the connection is aborted (``close`` would
    wait for the unread bytes to go).
    """

    def __init__(self, inner: asyncio.Protocol, limits: ConnectionLimits, clients: ClientCounts,
                 security_headers: tuple[tuple[str, str], ...] = ()):
        self.inner, self.limits, self.clients, self.security_headers = inner, limits, clients, security_headers
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.transport: asyncio.Transport | None = None
        self.attached = False  # inner has the connection (connection_made, and no connection_lost yet)
        self.client: str | None = None  # counted in clients under this key while open
        self.held = b""  # bytes of requests after the current one, not yet handed to inner
        self.answering = self.answered = False  # the current request's answer has begun / is complete
        self.inner_keeps_alive = False  # uvicorn's keep-alive timer runs: set after an answer, stopped by a byte
        self.reading_paused = False
        self.drained = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None
        self._write_deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        cap = self.limits.max_connections_per_client
        if cap < self.limits.max_connections:  # at or over the global cap, uvicorn's 503 comes first
            peer = transport.get_extra_info("peername")
            key = client_key(peer[0] if isinstance(peer, tuple) and peer else None)
            if not self.clients.admit(key, cap):
                # Closed before a byte is read, and before uvicorn counts it among its connections (where it would
                # take a place under the global cap until closed): the address already holds its share. Answering
                # would mean reading a request head first, i.e. holding what the cap refuses.
                log.debug("closing a connection: %s already holds %d", peer, cap)
                transport.close()
                return
            self.client = key
        self.attached = True
        self.inner.connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        if not self.attached or self.transport.is_closing():
            return
        theirs = self.parser.their_state
        if theirs is h11.IDLE and self._head_too_large(self.parser.trailing_data[0] + data):
            self._refuse(431, f"request head too large (over {self.limits.max_head_bytes} bytes)")
            return
        if self.answered and theirs is h11.SEND_BODY:
            self.drained += len(data)
            if self.drained > self.limits.drain_bytes:
                self._close()
                return
        self._pump(data)
        if self.attached and len(self.held) > self.limits.max_head_bytes and not self.reading_paused:
            self.transport.pause_reading()  # a pipelined request waits for the answer in progress: so does reading
            self.reading_paused = True

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.attached else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        self._cancel_write_deadline()
        if self.client is not None:
            self.clients.release(self.client)
            self.client = None
        if self.attached:
            self.attached = False
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.attached:
            self.inner.pause_writing()
        if self._write_deadline is None:
            self._write_deadline = asyncio.get_running_loop().call_later(self.limits.write_timeout,
                                                                         self.transport.abort)

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        if self.attached:
            self.inner.resume_writing()

    # -- told by AnswerTracker --

    def answer_started(self) -> None:
        self.answering = True

    def answer_done(self) -> None:
        """The application's answer is written: uvicorn has started its keep-alive timer; go on to the next request."""
        if not self.attached or self.transport.is_closing():
            return
        self.answered = self.inner_keeps_alive = True
        try:
            # stands for the answer sent (nothing is written): any status but a switch of protocol, which a 2xx to a
            # CONNECT or a 101 would be (the application never switches)
            self.parser.send(h11.Response(status_code=404, headers=[("content-length", "0")]))
            self.parser.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._close()
            return
        self._next_cycle()
        if self.attached and self.reading_paused and len(self.held) <= self.limits.max_head_bytes:
            self.reading_paused = False
            self.transport.resume_reading()
        self._watch()

    # -- the parts --

    def _pump(self, data: bytes) -> None:
        """Parse ``data`` (after what is held); hand ``inner`` the bytes of the current request, hold the rest."""
        if data:
            self.parser.receive_data(data)
        pending = self.held + data
        try:
            event = self.parser.next_event()
            while event is not h11.NEED_DATA and event is not h11.PAUSED:
                if isinstance(event, h11.Request):
                    self._set_deadline(None)  # the head is in
                event = self.parser.next_event()
        except h11.RemoteProtocolError as err:
            status = err.error_status_hint if 400 <= err.error_status_hint < 600 else 400
            self._refuse(status, f"malformed request: {err}"[:200])
            return
        # PAUSED: the current request is complete and what follows it waits for its answer (h11 keeps it unparsed)
        self.held = self.parser.trailing_data[0] if event is h11.PAUSED else b""
        if len(pending) > len(self.held):
            self.inner_keeps_alive = False  # uvicorn stops its keep-alive timer on any byte
            token = _GUARD.set(self)
            try:
                self.inner.data_received(pending[: len(pending) - len(self.held)])
            finally:
                _GUARD.reset(token)
        self._next_cycle()
        self._watch()

    def _next_cycle(self) -> None:
        """Once the request and its answer are both complete, start on the next one (held back, if any)."""
        if not self.attached or self.parser.our_state is not h11.DONE or self.parser.their_state is not h11.DONE:
            return
        self.parser.start_next_cycle()
        self.answering = self.answered = False
        self.drained = 0
        if self._head_too_large(self.held):
            self._refuse(431, f"request head too large (over {self.limits.max_head_bytes} bytes)")
        elif self.held:
            self._pump(b"")

    def _head_too_large(self, pending: bytes) -> bool:
        """Whether ``pending`` (the bytes of a head so far) is, or must become, a head over ``max_head_bytes``."""
        limit = self.limits.max_head_bytes
        return len(pending) > limit and _BLANK_LINE.search(pending, 0, limit) is None

    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` with a one-line JSON error (unless an answer has begun), and close the connection."""
        log.warning("Invalid HTTP request received: %s", reason)
        if not self.answering:
            body = json_error_bytes(reason)
            head = [f"HTTP/1.1 {status} {_phrase(status)}", "content-type: application/json",
                    "connection: close", f"content-length: {len(body)}",
                    *(f"{name}: {value}" for name, value in self.security_headers)]
            self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self._close()

    def _close(self) -> None:
        """Close the connection, and tell ``inner`` now: a request it is handling is marked disconnected, so that
        the application's ``receive`` returns at once and its answer is dropped."""
        self.transport.close()
        self._set_deadline(None)
        if self.attached:
            self.attached = False
            self.inner.connection_lost(None)

    def _watch(self) -> None:
        """Arm, keep or cancel the deadline that fits the connection's state now."""
        if not self.attached or self.transport.is_closing():
            self._set_deadline(None)
        elif self.parser.their_state is h11.IDLE and not self.inner_keeps_alive:
            self._set_deadline("head")
        elif self.answered and self.parser.their_state is h11.SEND_BODY:
            self._set_deadline("drain")
        else:
            self._set_deadline(None)

    def _set_deadline(self, kind: str | None) -> None:
        if kind == self._deadline_kind:
            return  # already running: a deadline is never pushed back
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_kind = None, kind
        if kind is not None:
            seconds = self.limits.head_timeout if kind == "head" else self.limits.drain_timeout
            self._deadline = asyncio.get_running_loop().call_later(seconds, self._expired, kind)

    def _expired(self, kind: str) -> None:
        if self._deadline_kind == kind and self.attached and not self.transport.is_closing():
            log.debug("closing a connection: its %s took too long", "request head" if kind == "head" else
                      "unwanted body")
            self._close()

    def _cancel_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None


def _phrase(status: int) -> str:
    return HTTPStatus(status).phrase if any(status == known for known in HTTPStatus) else ""


class AnswerTracker:
    """Pure ASGI middleware (the outermost): tells the request's :class:`ConnectionGuard` when its answer begins
    and when it is complete. Without a guard (the application called some other way) it changes nothing."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        guard = _GUARD.get()
        if guard is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tracked(message) -> None:
            if message["type"] == "http.response.start":
                guard.answer_started()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                guard.answer_done()

        await self.app(scope, receive, tracked)


class GuardedLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose servers put ``guard(protocol)`` in front of each connection's protocol."""

    def __init__(self, guard: Callable[[asyncio.Protocol], asyncio.Protocol]):
        super().__init__()
        self.guard = guard

    async def create_server(self, protocol_factory, *args, **kwargs):
        return await super().create_server(lambda: self.guard(protocol_factory()), *args, **kwargs)


def run_guarded(main: Callable[[], object], limits: ConnectionLimits, security_headers: dict[str, str]) -> None:
    """Run the coroutine ``main()`` (``uvicorn.Server(...).serve``) to its end in a :class:`GuardedLoop` whose
    connections are guarded by ``limits``; ``security_headers`` go on the guard's own error answers."""
    clients = ClientCounts()
    headers = tuple((name.lower(), value) for name, value in security_headers.items())

    def new_loop() -> GuardedLoop:
        return GuardedLoop(lambda inner: ConnectionGuard(inner, limits, clients, headers))

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(main())
        return
    loop = new_loop()  # Python 3.10: asyncio.Runner's work, in short
    try:
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


class ClientRateLimit:
    """Pure ASGI middleware: 429 for a client address (:func:`client_key`) past its request rate.

    One token bucket per address: ``client_burst`` requests at once, refilled
    at ``client_rate`` a second. The address is the socket's peer (uvicorn runs
    with ``proxy_headers=False``: a ``X-Forwarded-For`` header changes nothing).
    When the table reaches ``max_table`` addresses, those whose bucket has
    filled up again are forgotten, and if busy ones still fill three quarters
    of it, the longest idle of them: the table stays bounded, whatever the
    number of addresses.
    """

    def __init__(self, app, rate: float, burst: int, max_table: int = 4096):
        self.app, self.rate, self.burst, self.max_table = app, rate, burst, max_table
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str, now: float | None = None) -> float:
        """Take one request's token for ``key``: 0 if it had one, else the seconds until it has."""
        now = time.monotonic() if now is None else now
        tokens, then = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        if key not in self.buckets and len(self.buckets) >= self.max_table:
            busy = {k: (t, w) for k, (t, w) in self.buckets.items() if t + (now - w) * self.rate < self.burst}
            keep = self.max_table * 3 // 4  # room for new addresses, so that this runs once per max_table / 4
            if len(busy) > keep:  # busy addresses fill the table: forget the longest idle (they get a new burst)
                busy = dict(sorted(busy.items(), key=lambda item: item[1][1])[len(busy) - keep:])
            self.buckets = busy
        self.buckets[key] = (tokens - 1, now)
        return 0.0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            wait = self.take(client_key((scope.get("client") or ("",))[0]))
            if wait:
                body = json_error_bytes("too many requests from your address; try again in a moment")
                await send({"type": "http.response.start", "status": 429, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(max(1, math.ceil(wait))).encode()), (b"cache-control", b"no-store")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class FramingGuard:
    """Pure ASGI middleware: refuse requests whose body framing is ambiguous (RFC 9112, section 6.1).

    h11 lets ``Transfer-Encoding: chunked`` win over a ``Content-Length`` sent
    with it. A proxy in front that believed the ``Content-Length`` would see
    a different end of the body, and the rest as a second request: request
    smuggling. RFC 9112 allows a server to refuse such a request; so we do,
    with 400 and ``Connection: close``, so that nothing after it on the
    connection is read as a request. ``Transfer-Encoding`` in an HTTP/1.0
    request is faulty framing too.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            names = {name for name, _ in scope["headers"]}
            if b"transfer-encoding" in names and (b"content-length" in names or scope["http_version"] == "1.0"):
                body = json_error_bytes("ambiguous request framing (Transfer-Encoding with Content-Length, "
                                        "or in HTTP/1.0)")
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
