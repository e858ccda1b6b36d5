"""What the search page's routes share: refusals and JSON answers, reading a request's parameters, and the
middleware every answer passes (the Host check, the security headers, error answers).

A handler refuses a request by raising :class:`Refused` from anywhere: the application answers it in JSON
(``{"error": ...}``). Store errors name the index's folder: :class:`store_errors` logs them and answers a
generic 503. Unexpected errors are logged with their traceback and answered 500 without details.
"""

from __future__ import annotations

import logging
import re

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .hosts import request_host_name
from .search import SOURCES
from .base import IndexStoreError

__all__ = ["EXCEPTION_HANDLERS", "MAX_K", "MAX_OFFSET", "MAX_QUERY_CHARS", "SECURITY_HEADERS", "HostGuard", "Refused",
           "SecurityHeaders", "client_name", "int64", "json_answer", "paging", "query_of", "store_errors"]

MAX_K = 100
MAX_OFFSET = 400  # the deepest page: offset + k results are ranked for it
MAX_QUERY_CHARS = 1000  # of a text query (CLIP reads 77 tokens; this is far beyond)
MAX_QUERY_STRING = 8192  # bytes of a request's ?query (h11 takes heads of up to 16 kB)
MAX_FIELDS = 20  # parameters in it
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # media from blob: URLs too: the page plays the recording a user searched with from its own copy
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self' blob:; connect-src 'self'; form-action 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}
_INT64 = re.compile(r"-?[0-9]{1,19}")
_WHOLE = re.compile(r"[0-9]{1,9}")

log = logging.getLogger("audioclip.serve")


class Refused(Exception):
    """An answer other than 200, raised from anywhere in a handler: ``status``, a message for the client."""

    def __init__(self, status: int, message: str, *, close: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or {}


def json_answer(status: int, payload: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(payload, status, headers={"Cache-Control": "no-store", **(headers or {})})


class store_errors:  # noqa: N801 (used as a statement: `with store_errors():`)
    """Answer a store error 503 with a generic message: its text names the index's folder (logged instead)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, IndexStoreError):
            log.error("the index cannot be read: %s", err)
            raise Refused(503, "the index cannot be read now; see the server's log") from None
        return False


# -- reading requests --------------------------------------------------------------------------


def query_of(request: Request) -> dict[str, str]:
    """The request's parameters (the first of each name), bounded in size and number."""
    raw = request.scope.get("query_string", b"")
    if len(raw) > MAX_QUERY_STRING:
        raise Refused(414, "the query string is too long")
    items = request.query_params.multi_items()
    if len(items) > MAX_FIELDS:
        raise Refused(400, "too many query parameters")
    query: dict[str, str] = {}
    for key, value in items:
        query.setdefault(key, value)
    return query


def paging(query: dict[str, str]) -> tuple[int, int, str | None]:
    """``k``, ``offset`` and ``modality``, checked: whole numbers in range, a known modality."""
    k = _whole(query.get("k", "10"), "k", 1, MAX_K)
    offset = _whole(query.get("offset", "0"), "offset", 0, MAX_OFFSET)
    modality = query.get("modality", "") or None
    if modality is not None and modality not in SOURCES:
        raise Refused(400, f"modality must be one of {', '.join(SOURCES)}")
    return k, offset, modality


def _whole(text: str, name: str, low: int, high: int) -> int:
    # a strict pattern: int() would also take " 5", "5_0", "+5" and other scripts' digits
    if not _WHOLE.fullmatch(text) or not low <= int(text) <= high:
        raise Refused(400, f"{name} must be a whole number from {low} to {high}")
    return int(text)


def int64(text: str) -> int | None:
    """A file id: a signed 64-bit integer written plainly, else None."""
    if not _INT64.fullmatch(text):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def client_name(name: str) -> str:
    """An upload's file name as its sender gave it, reduced to a short, printable base name."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200]


# -- what every answer passes: error answers, the Host check, security headers -------------------


async def _refused(request: Request, err: Refused) -> Response:
    headers = {**err.headers, **({"Connection": "close"} if err.close else {})}
    return json_answer(err.status, {"error": err.message}, headers)


async def _http_error(request: Request, err: HTTPException) -> Response:
    message = {404: "not found", 405: "method not allowed"}.get(err.status_code, str(err.detail).lower())
    return json_answer(err.status_code, {"error": message}, dict(err.headers or {}))


async def _internal_error(request: Request, err: Exception) -> Response:
    # uvicorn logs the exception with its traceback (stderr) once this answer is sent
    return json_answer(500, {"error": "internal error; see the server's log"})


#: Starlette's ``exception_handlers``: every error answered in JSON
EXCEPTION_HANDLERS = {Refused: _refused, HTTPException: _http_error, Exception: _internal_error}


class HostGuard:
    """Pure ASGI middleware: 403 for a request whose ``Host`` names no accepted host."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and _host_name(scope) not in self.allowed:
            await JSONResponse({"error": "unexpected Host header"}, 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host_name(scope) -> str:
    return request_host_name(next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1"))


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every answer, errors included."""

    def __init__(self, app):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(k, v) for k, v in self.headers if k not in present]]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
