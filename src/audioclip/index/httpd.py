"""The HTTP/1.1 layer under ``audioclip serve``: uvicorn's h11 protocol with deadlines, and framing checks.

uvicorn (0.55, ``http="h11"``) parses requests with h11 and bounds one wait
only: a kept-alive connection idle between requests (``timeout_keep_alive``,
armed after each answer and cancelled by the next byte). Nothing bounds

- the request head: a client that connects and says nothing, or sends
  ``GET / HT`` and stalls, holds its connection (and a place under
  ``limit_concurrency``) for ever: the "slowloris" attack;
- a request body still arriving after the answer went out (uvicorn reads and
  drops it, for as long as it comes);
- a client that stops reading the answer (the application waits to write).

:class:`GuardedH11Protocol` adds one deadline for each (:class:`ConnectionLimits`).
:class:`FramingGuard` refuses what h11 lets through but RFC 9112 calls
faulty framing (``Transfer-Encoding`` with ``Content-Length``, or in HTTP/1.0).
What h11 itself refuses (conflicting ``Content-Length`` headers, a
``Content-Length`` that is not a number, a transfer coding other than
``chunked``, a head over 16 kB) is answered 4xx with a one-line JSON error.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionLimits", "FramingGuard", "GuardedH11Protocol", "protocol_class"]


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

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if not getattr(self, name) > 0:
                raise ValueError(f"ConnectionLimits.{name} must be positive, got {getattr(self, name)!r}")


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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._drained = 0
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY:
            self._drained += len(data)
            if self._drained > self.limits.drain_bytes:
                self.transport.close()
                return
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        self._cancel_write_deadline()
        super().connection_lost(exc)

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
        body = json_error_bytes(reason)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode()), *self.security_headers]
        try:
            for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # too late for an answer (one was being sent)
            pass
        self.transport.close()


def protocol_class(limits: ConnectionLimits, security_headers: dict[str, str]) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` bound to these limits (uvicorn makes one per connection from a class)."""
    encoded = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in security_headers.items())
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "security_headers": encoded})


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
