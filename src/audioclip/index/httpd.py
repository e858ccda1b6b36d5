"""The HTTP/1.1 layer under ``audioclip serve``: uvicorn's h11 protocol with deadlines, and framing checks.

uvicorn (0.55, ``http="h11"``) parses requests with h11 and bounds one wait
only: a kept-alive connection idle between requests (``timeout_keep_alive``,
armed after each answer and cancelled by the next byte). Nothing bounds

- the request head: a client that connects and says nothing, or sends
  ``GET / HT`` and stalls, holds its connection (and a place under
  ``limit_concurrency``) for ever: the "slowloris" attack;
- a request body still arriving after the answer went out (uvicorn reads and
  drops it, for as long as it comes);
- a client that stops reading the answer (the application waits to write);
- the size of a request head: h11 refuses an *incomplete* head past its
  ``max_incomplete_event_size``, but parses a complete one of any size that
  arrives in one read (asyncio reads up to 256 kB at a time);
- what one client address may take: uvicorn's ``limit_concurrency`` counts all
  connections together, so one client holding them all locks everyone out.

:class:`GuardedH11Protocol` adds one deadline for each wait, refuses a head
over ``max_head_bytes`` (431) before h11 parses it, and refuses a connection
from an address that already holds ``max_connections_per_client`` (closed at
once: :class:`ClientCounts`); :class:`ClientRateLimit` answers 429 to an
address past its request rate (a token bucket). All limits are in
:class:`ConnectionLimits`.
:class:`FramingGuard` refuses what h11 lets through but RFC 9112 calls
faulty framing (``Transfer-Encoding`` with ``Content-Length``, or in HTTP/1.0).
What h11 itself refuses (conflicting ``Content-Length`` headers, a
``Content-Length`` that is not a number, a transfer coding other than
``chunked``, a bad chunk size) is answered 4xx with a one-line JSON error,
and logged in one line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import sys
import time
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ClientCounts", "ClientRateLimit", "ConnectionLimits", "FramingGuard", "GuardedH11Protocol", "client_key",
           "protocol_class"]

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


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with deadlines on everything the client does (see the module's docstring).

    One timer per connection runs while the client owes us something:

    - ``head``: their side is between requests (h11 ``IDLE``) and the
      keep-alive timer is not running, i.e. the connection is new or the next
      request has begun to arrive. The deadline runs from that moment and is
      not extended by more bytes, so sending a byte a second does not help.
    - ``drain``: our answer is complete but their body is still coming
      (``DONE``/``SEND_BODY``): at most ``drain_bytes`` within ``drain_timeout``,
      so that a client refused early (413, 503) still gets to read the answer.

    A second timer runs while writing is paused because the client does not
    read: past ``write_timeout`` the connection is aborted (``close`` would
    wait for the unread bytes to go).
    """

    limits = ConnectionLimits()
    security_headers: tuple[tuple[bytes, bytes], ...] = ()
    clients = ClientCounts()  # protocol_class gives each server its own

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._drained = 0
        self._client_key: str | None = None  # counted under this key while open (None: not counted)
        self._refused = False
        cap = self.limits.max_connections_per_client
        if cap < self.limits.max_connections:  # at or over the global cap, uvicorn's 503 comes first
            peer = transport.get_extra_info("peername")
            key = client_key(peer[0] if isinstance(peer, tuple) and peer else None)
            if not self.clients.admit(key, cap):
                # Closed before a byte is read, and before uvicorn counts it among its connections (where it
                # would take a place under the global cap until closed): the address already holds its share.
                # Answering would mean reading a request head first, i.e. holding what the cap refuses.
                self._refused = True
                self.logger.debug("closing a connection: %s already holds %d", peer, cap)
                transport.close()
                return
            self._client_key = key
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        # A head is checked for size before h11 sees it (h11 would parse a complete head of any size). A refused
        # body being drained goes to h11 in pieces of at most max_head_bytes, so that a request pipelined behind
        # it, which h11 parses as soon as the body ends, is bounded the same way.
        while data and not self.transport.is_closing():
            ours, theirs = self.conn.our_state, self.conn.their_state
            piece = data
            if theirs is h11.IDLE:
                if self._head_too_large(self.conn.trailing_data[0] + data):
                    self._refuse_head()
                    return
            elif ours is h11.DONE and theirs is h11.SEND_BODY:
                piece = data[: self.limits.max_head_bytes]
                self._drained += len(piece)
                if self._drained > self.limits.drain_bytes:
                    self.transport.close()
                    return
            data = data[len(piece):]
            super().data_received(piece)
        self._watch()

    def on_response_complete(self) -> None:
        # uvicorn starts the next request cycle here and parses a request pipelined behind this one: check its head
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE and not self.transport.is_closing() \
                and self._head_too_large(self.conn.trailing_data[0]):
            self.conn.start_next_cycle()
            self._refuse_head()
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        self._cancel_write_deadline()
        if self._refused:  # never handed to uvicorn
            return
        if self._client_key is not None:
            self.clients.release(self._client_key)
            self._client_key = None
        super().connection_lost(exc)

    def _head_too_large(self, pending: bytes) -> bool:
        """Whether ``pending`` (the bytes of a head so far) is, or must become, a head over ``max_head_bytes``."""
        limit = self.limits.max_head_bytes
        return len(pending) > limit and _BLANK_LINE.search(pending, 0, limit) is None

    def _refuse_head(self) -> None:
        self.logger.warning("Invalid HTTP request received: request head over %d bytes", self.limits.max_head_bytes)
        self.send_error(431, f"request head too large (over {self.limits.max_head_bytes} bytes)")

    def _watch(self) -> None:
        """Arm, keep or cancel the deadline that fits the connection's state now."""
        if self.transport.is_closing():
            self._set_deadline(None)
            return
        ours, theirs = self.conn.our_state, self.conn.their_state
        if theirs is h11.IDLE and self.timeout_keep_alive_task is None:
            self._set_deadline("head")
        elif ours is h11.DONE and theirs is h11.SEND_BODY:
            self._set_deadline("drain")
        else:
            self._set_deadline(None)
            self._drained = 0

    def _set_deadline(self, kind: str | None) -> None:
        if kind == self._deadline_kind:
            return  # already running: a deadline is never pushed back
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_kind = None, kind
        if kind is not None:
            seconds = self.limits.head_timeout if kind == "head" else self.limits.drain_timeout
            self._deadline = self.loop.call_later(seconds, self._expired, kind)

    def _expired(self, kind: str) -> None:
        if self._deadline_kind == kind and not self.transport.is_closing():
            self.logger.debug("closing a connection: its %s took too long", "request head" if kind == "head"
                              else "unwanted body")
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.limits.write_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        super().resume_writing()

    def _cancel_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers every request h11 refuses with a plain-text 400; say what h11 found, in JSON.

        uvicorn calls this from inside its ``except h11.RemoteProtocolError``
        (and passes only a fixed sentence), hence ``sys.exc_info``.
        """
        err = sys.exc_info()[1]
        status, reason = 400, "malformed request"
        if isinstance(err, h11.RemoteProtocolError):
            status = err.error_status_hint if 400 <= err.error_status_hint < 600 else 400
            reason = f"malformed request: {err}"[:200]
        self.send_error(status, reason)

    def send_error(self, status: int, reason: str) -> None:
        """Answer ``status`` with a one-line JSON error (unless an answer is under way) and close the connection.

        A request the application is handling (the error is in its body, a bad
        chunk size say) is marked disconnected, as uvicorn marks it when the
        client goes: the application's ``receive`` then returns at once and its
        answer is dropped, instead of failing on a closed h11 connection with a
        traceback in the log.
        """
        body = json_error_bytes(reason)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode()), *self.security_headers]
        try:
            for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # too late for an answer (one was being sent)
            pass
        self.transport.close()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()


def protocol_class(limits: ConnectionLimits, security_headers: dict[str, str]) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` bound to these limits (uvicorn makes one per connection from a class)."""
    encoded = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in security_headers.items())
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "security_headers": encoded,
                                                              "clients": ClientCounts()})


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
