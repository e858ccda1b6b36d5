"""``audioclip serve``: a small web page to search an index (Starlette, served by uvicorn with h11).

Routes (everything else is 404; every answer but the page's files is JSON):

- ``GET /`` and ``GET /static/{app.js,style.css}``: the page, from this package's ``static/``.
- ``GET /api/search?q=TEXT&k=10&offset=0&modality=audio``: results as JSON. ``q`` is at most
  :data:`MAX_QUERY_CHARS` characters, ``k`` 1-:data:`MAX_K`, ``offset`` 0-:data:`MAX_OFFSET` (``more``
  in the answer says whether there may be a page after this one); anything else is a 400.
- ``POST /api/search?kind=audio|image&name=FILE.wav&k=..&offset=..&modality=..``: the request body is
  the query file itself, with a ``Content-Length`` (411 without) of at most ``max_upload`` bytes (413).
  The request must carry ``X-Audioclip: 1`` (403 without): a page on another site cannot send it
  without a CORS preflight, which is never granted. The body goes into a private temporary folder;
  at most ``max_receiving`` bodies (8) are being received at a time, of at most
  ``max_receiving_bytes`` (4 x ``max_upload``) by their ``Content-Length`` together (503 beyond).
  Only once a body is whole does its upload take one of the ``max_uploads`` (2) decoding slots (503
  "busy" beyond, checked also before the body is read), so slow senders cannot keep others' uploads
  out. The file is decoded by a worker process within ``decode_timeout`` seconds and the media limits,
  lowered for a query: at most ``max_query_seconds`` of sound and 8 channels (any number when the index
  is mono: they are averaged into one), and at most ``max_decoded_bytes`` written by the worker (by
  default what ``max_query_seconds`` of stereo windows take, ~215 MB for 600 s; a small file of many
  channels at a low rate would otherwise decode to gigabytes): a file whose header states more is
  refused before decoding, one that turns out to decode to more is stopped, and the answer is 413
  "too large once decoded"; the worker's memory is capped as well (``uploads.WORKER_MEMORY``). The windows are embedded here a batch at a time
  (``uploads.py``), text searches that are waiting going first; the folder is deleted before the
  answer is sent. Errors name the file by the name the client gave.
- ``GET /media/ID``, ``GET /thumb/ID`` and ``GET /wave/ID``: an indexed file (with HTTP range
  requests, so players can seek), a JPEG thumbnail of an indexed picture, and a PNG waveform of an
  indexed recording (the page marks the matching window over it). Pictures are rendered once and
  cached beside the index (``pictures.py``), in a folder bounded in size.
- ``GET /api/stats``. ``HEAD`` is answered wherever ``GET`` is.

What is served is only ever an indexed file. ``ID`` is a signed 64-bit id from the index (anything
else is 404); a path is never taken from a request. The file is opened one path component at a time
without following a symbolic link in any of them, must be a regular file, and must still be the file
the index recorded (size and modification time; device and inode where the index has them): a file
replaced since, or a link or linked folder swapped in, is 404. The bytes sent come from that open
descriptor. Folders on the way are opened with ``O_PATH`` on Linux, so a folder the server may
search but not list (mode 0711) is no obstacle.

Every request must name an expected host in its ``Host`` header (403 otherwise), which defeats
DNS-rebinding pages: ``localhost``, ``127.0.0.1``, ``[::1]``, the address listened on (unless it is
a wildcard such as ``0.0.0.0``) and the names given as ``allowed_hosts`` (``--allowed-host``). Ports
are not compared: ``mypc.lan:8000`` is taken as ``mypc.lan`` (``hosts.py``; names lower-cased, IPv6
addresses in brackets; anything else is a ``ValueError``, a usage error on the command line).

Connections (``httpd.py``): HTTP/1.1 parsed by h11; ``Transfer-Encoding`` with ``Content-Length`` is
refused (400, connection closed: no request smuggling); a request head must arrive within
``head_timeout`` and be at most ``max_head_bytes`` (431), an idle connection is closed after
``keep_alive``, an upload body must keep coming (``body_idle_timeout``, ``body_timeout``); past
``max_connections`` requests get 503 at once (from uvicorn itself: plain text, without the security
headers, and the connection closed after it). Below that cap, one client address (an IPv6 /64) may
hold ``max_connections_per_client`` connections (more are closed at once) and make ``client_rate``
requests a second after a burst of ``client_burst`` (429 beyond), so that one client cannot take
the whole server.
Answers carry ``nosniff``, ``no-referrer`` and a strict Content-Security-Policy. Errors never show a
server path: a store error is logged and answered with a generic message, an unexpected one is
logged to stderr and answered 500.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import mimetypes
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from importlib import resources

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaError
from ..media.files import DecodeOptions
from .api import Index, QueryError
from .hosts import host_name, listen, request_host_name
from .httpd import ClientRateLimit, ConnectionLimits, FramingGuard, protocol_class
from .pictures import PictureCache, render_thumbnail, render_waveform
from .search import SOURCES
from .base import IndexStoreError
from .uploads import (
    QUERY_BATCH,
    SearchesFirst,
    UploadError,
    decode_upload,
    decoded_bound,
    embed_upload,
    query_options,
    start_worker_pool,
)

__all__ = ["ConnectionLimits", "SearchServer", "allowed_host_names", "make_server", "serve"]

STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}
MAX_K = 100
MAX_OFFSET = 400  # the deepest page: offset + k results are ranked for it
MAX_QUERY_CHARS = 1000  # of a text query (CLIP reads 77 tokens; this is far beyond)
MAX_QUERY_STRING = 8192  # bytes of a request's ?query (h11 takes heads of up to 16 kB)
MAX_FIELDS = 20  # parameters in it
MAX_UPLOADS = 2  # uploads decoded and embedded at once; more get 503
MAX_RECEIVING = 8  # upload bodies being received at once; more get 503
MAX_QUERY_SECONDS = 600.0  # of an uploaded recording
DECODE_TIMEOUT = 120.0  # s a worker may take to decode an upload
CACHE_BYTES = 64_000_000  # the picture cache beside the index
CHUNK = 1 << 16  # bytes per read of a served file
# how the folders on an indexed file's path are opened (see _open_indexed): O_PATH (Linux) needs no read permission
FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_INT64 = re.compile(r"-?[0-9]{1,19}")
_WHOLE = re.compile(r"[0-9]{1,9}")
_TYPES = {".flac": "audio/flac", ".opus": "audio/ogg", ".oga": "audio/ogg", ".ogg": "audio/ogg", ".m4a": "audio/mp4",
          ".wav": "audio/wav", ".mp3": "audio/mpeg", ".aac": "audio/aac", ".weba": "audio/webm",
          ".mkv": "video/x-matroska", ".webm": "video/webm", ".mp4": "video/mp4", ".mov": "video/quicktime",
          ".webp": "image/webp", ".avif": "image/avif"}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
                               "base-uri 'none'",
}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})

log = logging.getLogger("audioclip.serve")


class _Refused(Exception):
    """An answer other than 200, raised from anywhere in a handler: ``status``, a message for the client."""

    def __init__(self, status: int, message: str, *, close: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or {}


def _json(status: int, payload: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(payload, status, headers={"Cache-Control": "no-store", **(headers or {})})


def _static(name: str) -> bytes:
    return (resources.files("audioclip.index") / "static" / name).read_bytes()


# -- the site: what each route does ------------------------------------------------------------


class _Site:
    """The routes' handlers and what they share: the index, the limits, the picture cache, the upload count."""

    def __init__(self, index: Index, *, max_upload: int, max_uploads: int, max_query_seconds: float,
                 decode_timeout: float, limits: ConnectionLimits, upload_batch: int = QUERY_BATCH,
                 cache_bytes: int = CACHE_BYTES, max_receiving: int = MAX_RECEIVING,
                 max_receiving_bytes: int | None = None, max_decoded_bytes: int | None = None):
        self.index = index
        self.max_upload, self.max_uploads = max_upload, max_uploads
        self.max_receiving = max_receiving
        self.max_receiving_bytes = max_receiving_bytes or 4 * max_upload
        self.max_decoded_bytes = max_decoded_bytes  # None: decoded_bound of the query options
        self.max_query_seconds, self.decode_timeout = max_query_seconds, decode_timeout
        self.limits = limits
        self.upload_batch = upload_batch
        folder = getattr(index.store, "cache_dir", None)
        self.pictures = PictureCache(folder / "pictures", cache_bytes) if folder is not None else None
        # Only changed on the event loop's thread: uploads decoded or embedded now (at most max_uploads), and
        # bodies being received (at most max_receiving, of max_receiving_bytes in all, by Content-Length).
        self.uploads = 0
        self.receiving = 0
        self.receiving_bytes = 0
        self.turns = SearchesFirst()  # text searches go before an upload's next batch
        self._options: DecodeOptions | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page, methods=["GET"]),
            Route("/index.html", self.page, methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
            Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
            Route("/api/search", self.search_text, methods=["GET"]),
            Route("/api/search", self.search_upload, methods=["POST"]),
            Route("/api/stats", self.stats, methods=["GET"]),
            Route("/{what:str}/{ident:str}", self.media, methods=["GET"]),
        ]

    # -- pages and small answers --

    def page(self, request: Request) -> Response:
        return Response(_static("index.html"), media_type=STATIC["index.html"], headers={"Cache-Control": "no-cache"})

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise _Refused(404, "not found")
        return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    def stats(self, request: Request) -> Response:
        with _store_errors():
            return _json(200, {**self.index.stats(), "max_upload": self.max_upload})

    # -- searching --

    def search_text(self, request: Request) -> Response:
        started = time.perf_counter()
        query = _query(request)
        text = query.get("q", "").strip()
        if not text:
            raise _Refused(400, "type something to search for")
        if len(text) > MAX_QUERY_CHARS:
            raise _Refused(400, f"the text is too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
        k, offset, modality = _params(query)
        return self._answer(lambda n: self.index.search(vector=self._embed_text(text), k=n, modality=modality),
                            k, offset, {"text": text}, started)

    def _embed_text(self, text: str):
        """``Index.embed_query(text)``, ahead of an upload's next batch (:class:`SearchesFirst`)."""
        with self.turns.searching():
            return self.index.embed_query(text)

    def _answer(self, search, k: int, offset: int, described: dict, started: float) -> Response:
        """Rank ``offset + k + 1`` results with ``search(n)`` and answer the page of ``k`` from ``offset``."""
        with _store_errors():
            try:
                empty = self.index.store.count_rows() == 0
                ranked = [] if empty else search(offset + k + 1)
            except QueryError as err:
                raise _Refused(400, str(err)) from None
        results = []
        for rank, hit in enumerate(ranked[offset: offset + k], offset + 1):
            item = {"rank": rank, **hit.to_dict(), "name": os.path.basename(hit.path), "media": f"/media/{hit.id}"}
            item["thumb"] = f"/thumb/{hit.id}" if hit.source == "image" else None
            item["wave"] = f"/wave/{hit.id}" if hit.source != "image" and hit.duration else None
            results.append(item)
        more = len(ranked) > offset + k and offset + k <= MAX_OFFSET
        return _json(200, {"query": described, "results": results, "empty_index": empty, "offset": offset,
                           "more": more, "took_ms": round(1000 * (time.perf_counter() - started), 1)})

    async def search_upload(self, request: Request) -> Response:
        started = time.perf_counter()
        if request.headers.get("x-audioclip") != "1":
            raise _Refused(403, "missing X-Audioclip header")
        given = request.headers.get("content-length")
        if given is None:  # h11 has checked that one given is a number, and FramingGuard that it is alone
            raise _Refused(411, "Content-Length required")
        length = int(given)
        if length > self.max_upload:
            # answered now; the body is read and dropped after the answer (up to drain_bytes, see httpd.py)
            raise _Refused(413, f"the file is too large ({length / 1e6:.1f} MB; at most {self.max_upload / 1e6:.1f} "
                           "MB)", close=length > self.limits.drain_bytes)
        if length == 0:
            raise _Refused(400, "the uploaded file is empty")
        query = _query(request)
        kind = query.get("kind", "")
        if kind not in ("audio", "image"):
            raise _Refused(400, "kind must be audio or image")
        k, offset, modality = _params(query)
        name = _client_name(query.get("name", "")) or "the upload"
        self._check_decode_slot()  # full now: 503 before the body is sent for nothing
        if self.receiving >= self.max_receiving or self.receiving_bytes + length > self.max_receiving_bytes:
            raise _Refused(503, "busy: other uploads are arriving; try again in a moment", headers={"Retry-After": "5"})
        # The body is received under the receiving caps only: a slow sender holds no decoding slot.
        folder = None
        self.receiving += 1
        self.receiving_bytes += length
        try:
            try:
                folder = await run_in_threadpool(_private_folder)
                suffix = os.path.splitext(name)[1].lower()
                if suffix not in AUDIO_EXTENSIONS | IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
                    suffix = ""  # the content is sniffed instead
                path = os.path.join(folder, "query" + suffix)
                await self._receive(request, path, length, name)
            finally:
                self.receiving -= 1
                self.receiving_bytes -= length
            self._check_decode_slot()
            self.uploads += 1  # no await between the check and this: the loop's thread only
            try:
                options = self._options or await run_in_threadpool(self._upload_options)
                decoded = await run_in_threadpool(decode_upload, path, name, options, self.decode_timeout,
                                                  self._decoded_bytes(options))
                with _store_errors():
                    vector = await run_in_threadpool(embed_upload, self.index, decoded, kind, name,
                                                     self.upload_batch, self.turns)
                del decoded  # its memory maps, before the folder goes
                return await run_in_threadpool(self._answer, lambda n: self.index.search(vector=vector, k=n,
                                                                                          modality=modality),
                                               k, offset, {kind: name}, started)
            finally:
                self.uploads -= 1
        except UploadError as err:
            raise _Refused(err.status, err.message) from None
        finally:
            if folder is not None:
                await run_in_threadpool(shutil.rmtree, folder, True)

    def _check_decode_slot(self) -> None:
        if self.uploads >= self.max_uploads:
            raise _Refused(503, "busy: other uploads are being searched; try again in a moment",
                           headers={"Retry-After": "5"})

    def _decoded_bytes(self, options: DecodeOptions) -> int:
        return self.max_decoded_bytes if self.max_decoded_bytes is not None else decoded_bound(options)

    async def _receive(self, request: Request, path: str, length: int, name: str) -> None:
        """Write the request body to ``path``: each piece within ``body_idle_timeout``, all within ``body_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        received = 0
        # Pieces are at most uvicorn's 64 kB high-water mark: written here, on the loop, without a thread hop.
        with open(path, "wb") as out:
            more = True
            while more:
                wait = min(self.limits.body_idle_timeout, deadline - loop.time())
                try:
                    message = await asyncio.wait_for(request.receive(), max(0.0, wait))
                except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on, two before
                    raise _Refused(408, f"{name}: the upload was too slow", close=True) from None
                if message["type"] == "http.disconnect":
                    raise _Refused(400, f"{name}: the upload was cut short", close=True)
                body = message.get("body", b"")
                received += len(body)
                if received > length:  # h11 frames the body by Content-Length: cannot happen
                    raise _Refused(400, "the body is longer than its Content-Length", close=True)
                out.write(body)
                more = message.get("more_body", False)
        if received != length:
            raise _Refused(400, f"{name}: the upload was cut short", close=True)

    def _upload_options(self) -> DecodeOptions:
        """The index's decoding options with the query limits: duration, channels (loads the model if needed)."""
        with _store_errors():
            options = self.index.decode_options()
        self._options = query_options(options, self.max_query_seconds)
        return self._options

    # -- indexed files --

    def media(self, request: Request) -> Response:
        what, ident = request.path_params["what"], request.path_params["ident"]
        file_id = _int64(ident)
        if what not in ("media", "thumb", "wave") or file_id is None:
            raise _Refused(404, "not found")
        with _store_errors():
            try:
                record = self.index.get(file_id)
            except ValueError as err:  # LanceDB cannot filter on -2**63 (it reads the literal as a float)
                log.warning("file id %d cannot be looked up: %s", file_id, err)
                record = None
        if record is None:
            raise _Refused(404, "not found")
        if what != "media" and ((what == "thumb") != (record.source == "image") or
                                (what == "wave" and not record.duration)):
            raise _Refused(404, "no picture for this file")
        fd = _open_indexed(record)
        if fd is None:
            raise _Refused(404, "not found")
        if what != "media":
            try:
                return self._picture(what, record, fd)
            finally:
                os.close(fd)
        try:
            size = os.fstat(fd).st_size
            start, end, status = 0, size - 1, 200
            header = request.headers.get("range")
            if header:
                span = _parse_range(header, size)
                if span is None:
                    raise _Refused(416, "range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
                start, end, status = span[0], span[1], 206
        except BaseException:
            os.close(fd)
            raise
        suffix = os.path.splitext(record.path)[1].lower()
        headers = {"Content-Length": str(max(0, end - start + 1)), "Accept-Ranges": "bytes",
                   "Cache-Control": "private, max-age=60"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        content_type = _TYPES.get(suffix) or mimetypes.guess_type(record.path)[0] or "application/octet-stream"
        return _OpenFileResponse(fd, start, max(0, end - start + 1), status, headers, content_type)

    def _picture(self, what: str, record, fd: int) -> Response:
        """A thumbnail (pictures) or waveform (sounds) of the open file ``fd``, from the cache or drawn now."""
        suffix = "jpg" if what == "thumb" else "png"
        key = f"{what}-{record.file_id}-{record.size}-{record.mtime_ns}.{suffix}"  # a changed file: a new key
        cache = self.pictures
        data = cache.get(key) if cache is not None else None
        if data is None:
            # the renderers take a path: this one names the descriptor already opened and checked
            source = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else record.path
            try:
                data = render_thumbnail(source) if what == "thumb" else render_waveform(source, record.duration)
            except (MediaError, OSError, ValueError, RuntimeError):
                raise _Refused(404, f"cannot draw this {'picture' if what == 'thumb' else 'sound'}") from None
            except Exception:  # noqa: BLE001 (whatever Pillow or FFmpeg raise on a file changed since)
                raise _Refused(404, "cannot read this file") from None
            if cache is not None:
                try:
                    cache.put(key, data)
                except OSError:
                    pass  # a read-only index: serve it uncached
        content_type = "image/jpeg" if what == "thumb" else "image/png"
        return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=300"})


def _private_folder() -> str:
    """A new temporary folder for one upload (mode 0700: the server's user only); 503 if none can be made."""
    try:
        return tempfile.mkdtemp(prefix="audioclip-query-")
    except OSError as err:
        log.error("cannot make a folder for an upload: %s", err)
        raise _Refused(503, "the server cannot store an upload now; see the server's log") from None


class _store_errors:  # noqa: N801 (used as a statement: `with _store_errors():`)
    """Answer a store error 503 with a generic message: its text names the index's folder (logged instead)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, IndexStoreError):
            log.error("the index cannot be read: %s", err)
            raise _Refused(503, "the index cannot be read now; see the server's log") from None
        return False


# -- reading requests --------------------------------------------------------------------------


def _query(request: Request) -> dict[str, str]:
    """The request's parameters (the first of each name), bounded in size and number."""
    raw = request.scope.get("query_string", b"")
    if len(raw) > MAX_QUERY_STRING:
        raise _Refused(414, "the query string is too long")
    items = request.query_params.multi_items()
    if len(items) > MAX_FIELDS:
        raise _Refused(400, "too many query parameters")
    query: dict[str, str] = {}
    for key, value in items:
        query.setdefault(key, value)
    return query


def _params(query: dict[str, str]) -> tuple[int, int, str | None]:
    """``k``, ``offset`` and ``modality``, checked: whole numbers in range, a known modality."""
    k = _whole(query.get("k", "10"), "k", 1, MAX_K)
    offset = _whole(query.get("offset", "0"), "offset", 0, MAX_OFFSET)
    modality = query.get("modality", "") or None
    if modality is not None and modality not in SOURCES:
        raise _Refused(400, f"modality must be one of {', '.join(SOURCES)}")
    return k, offset, modality


def _whole(text: str, name: str, low: int, high: int) -> int:
    # a strict pattern: int() would also take " 5", "5_0", "+5" and other scripts' digits
    if not _WHOLE.fullmatch(text) or not low <= int(text) <= high:
        raise _Refused(400, f"{name} must be a whole number from {low} to {high}")
    return int(text)


def _int64(text: str) -> int | None:
    """A file id: a signed 64-bit integer written plainly, else None."""
    if not _INT64.fullmatch(text):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def _client_name(name: str) -> str:
    """The upload's file name as its sender gave it, reduced to a short, printable base name."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200]


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single ``bytes=`` range, None if unsatisfiable or malformed."""
    match = re.fullmatch(r"\s*bytes=(\d{0,19})-(\d{0,19})\s*", header, re.ASCII)
    if not match or size == 0 or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


# -- indexed files: opened safely, sent from the descriptor --------------------------------------


def _open_indexed(record) -> int | None:
    """A read-only descriptor of the file ``record`` describes, or None if that is not what is there now.

    The path is walked from ``/`` one component at a time, each opened
    relative to its parent with ``O_NOFOLLOW``: a symbolic link anywhere on
    the way (a file or a folder swapped for a link to elsewhere) fails the
    open, rather than being checked first and followed later. The file must
    be a regular one (``O_NONBLOCK``: a FIFO put in its place does not block
    the open) of the recorded size and modification time, and device and
    inode when the record has them.

    The folders are opened with ``O_PATH`` where there is one (Linux): a
    handle to walk from, which needs search (``x``) permission on the way
    but not read permission on the folder itself, as an ordinary open of
    the path would; a folder of mode 0711 is no obstacle.
    """
    parts = record.path.split("/")
    if len(parts) < 2 or parts[0] != "" or any(p in ("", ".", "..") for p in parts[1:]):
        return None  # not absolute, or not a plain path: the index never records one
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
    try:
        folder = os.open("/", FOLDER_FLAGS)
    except OSError:
        return None
    fd = None
    try:
        for part in parts[1:-1]:
            child = os.open(part, FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = child
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        info = os.fstat(fd)
    except OSError:  # missing, a link (ELOOP / ENOTDIR), unreadable
        if fd is not None:
            os.close(fd)
        return None
    finally:
        os.close(folder)
    dev, inode = getattr(record, "dev", None), getattr(record, "inode", None)
    same = (stat.S_ISREG(info.st_mode) and info.st_size == record.size and info.st_mtime_ns == record.mtime_ns
            and (dev is None or info.st_dev == dev) and (inode is None or info.st_ino == inode))
    if not same:
        os.close(fd)
        return None
    return fd


class _OpenFileResponse(StreamingResponse):
    """``length`` bytes from ``start`` of an open file, read from its descriptor (closed when done)."""

    def __init__(self, fd: int, start: int, length: int, status: int, headers: dict, media_type: str):
        self.fd, self.start, self.length = fd, start, length
        super().__init__(self._blocks(), status_code=status, headers=headers, media_type=media_type)

    async def _blocks(self):
        position, remaining = self.start, self.length
        while remaining > 0:
            block = await run_in_threadpool(os.pread, self.fd, min(CHUNK, remaining), position)
            if not block:  # the file shrank while being sent: uvicorn closes the connection
                return
            position += len(block)
            remaining -= len(block)
            yield block

    async def __call__(self, scope, receive, send) -> None:
        try:
            if scope["method"] == "HEAD":
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": b""})
            else:
                await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            os.close(self.fd)


# -- the application: routes, error answers, Host check, security headers --------------------------


async def _refused(request: Request, err: _Refused) -> Response:
    headers = {**err.headers, **({"Connection": "close"} if err.close else {})}
    return _json(err.status, {"error": err.message}, headers)


async def _http_error(request: Request, err: HTTPException) -> Response:
    message = {404: "not found", 405: "method not allowed"}.get(err.status_code, str(err.detail).lower())
    return _json(err.status_code, {"error": message}, dict(err.headers or {}))


async def _internal_error(request: Request, err: Exception) -> Response:
    # uvicorn logs the exception with its traceback (stderr) once this answer is sent
    return _json(500, {"error": "internal error; see the server's log"})


class _HostGuard:
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


class _SecurityHeaders:
    """Pure ASGI middleware: the security headers on every answer, errors included."""

    def __init__(self, app):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]

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


def allowed_host_names(host: str, extra=()) -> frozenset[str]:
    """Names accepted in the ``Host`` header: loopback ones, ``host`` unless a wildcard, and ``extra``.

    Each is taken by :func:`~audioclip.index.hosts.host_name` (lower-case, any ``:port`` dropped, IPv6 in
    brackets); a value of ``extra`` that is no host name or address raises ``ValueError``; a ``host`` that is
    none (it is checked when bound) adds nothing.
    """
    names = set(_LOOPBACK_NAMES)
    for i, given in enumerate([host, *extra]):
        try:
            name = host_name(given)
        except ValueError:
            if i == 0:
                continue
            raise
        try:
            unspecified = ipaddress.ip_address(name.strip("[]")).is_unspecified
        except ValueError:
            unspecified = False
        if not unspecified:
            names.add(name)
    return frozenset(names)


def build_app(site: _Site, allowed_hosts: frozenset[str]):
    """The ASGI application: Starlette's routes inside the Host check, the framing check, the per-client request
    rate and the headers."""
    app = Starlette(routes=site.routes(), exception_handlers={
        _Refused: _refused, HTTPException: _http_error, Exception: _internal_error})
    app.router.redirect_slashes = False  # "/api/stats/" is not found, not redirected
    limits = site.limits
    return _SecurityHeaders(ClientRateLimit(FramingGuard(_HostGuard(app, allowed_hosts)), limits.client_rate,
                                            limits.client_burst))


# -- the server -------------------------------------------------------------------------------


class SearchServer:
    """The search page on a socket bound at creation (``port`` 0: a free one; see ``server_address``).

    ``serve_forever`` runs uvicorn in the calling thread until ``shutdown``
    (from another); ``start`` runs it in a thread of its own.
    """

    def __init__(self, site: _Site, app, sock: socket.socket, limits: ConnectionLimits, quiet: bool):
        self.site = site
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        config = uvicorn.Config(
            app, http=protocol_class(limits, _SECURITY_HEADERS), ws="none", lifespan="off", loop="asyncio",
            log_config=None, log_level="error" if quiet else "info", access_log=not quiet,
            timeout_keep_alive=limits.keep_alive, limit_concurrency=limits.max_connections,
            h11_max_incomplete_event_size=limits.max_head_bytes, timeout_graceful_shutdown=5, server_header=False,
            # the client is the socket's peer: uvicorn would otherwise take X-Forwarded-For from any process on
            # this machine (its default trusts 127.0.0.1), giving the per-client limits a new address per request
            proxy_headers=False)
        self._uvicorn = uvicorn.Server(config)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if not quiet:
            access = logging.getLogger("uvicorn.access")
            if not access.handlers:  # one line per request on stderr, as `host - "GET / HTTP/1.1" 200`
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter("%(message)s"))
                access.addHandler(handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def started(self) -> bool:
        """Whether uvicorn is serving (False before ``start``, or when its thread died starting)."""
        return bool(self._uvicorn.started) and self._thread is not None and self._thread.is_alive()

    @property
    def pictures(self) -> PictureCache | None:
        return self.site.pictures

    def serve_forever(self, poll_interval: float | None = None) -> None:  # noqa: ARG002 (socketserver's name)
        self._done.clear()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._done.set()

    def _serve_in_thread(self) -> None:
        try:
            self.serve_forever()
        except SystemExit:  # uvicorn gives up so (after logging why), e.g. when it cannot start: see started
            pass

    def start(self) -> SearchServer:
        self._thread = threading.Thread(target=self._serve_in_thread, name="audioclip-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def shutdown(self, timeout: float = 30) -> None:
        """Stop serving and wait (at most ``timeout`` s) for ``serve_forever`` to return."""
        self._uvicorn.should_exit = True
        if self._uvicorn.started or (self._thread is not None and self._thread.is_alive()):
            self._done.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()

    stop = shutdown


def make_server(index: Index, host: str = "127.0.0.1", port: int = 8000, max_upload: int = 20_000_000,
                quiet: bool = False, *, allowed_hosts=(), max_uploads: int = MAX_UPLOADS,
                max_query_seconds: float = MAX_QUERY_SECONDS, decode_timeout: float = DECODE_TIMEOUT,
                limits: ConnectionLimits | None = None, upload_batch: int = QUERY_BATCH,
                max_receiving: int = MAX_RECEIVING, max_receiving_bytes: int | None = None,
                max_decoded_bytes: int | None = None, sock: socket.socket | None = None) -> SearchServer:
    """A server for ``index``, bound but not yet serving (``serve_forever`` or ``start``). ``port=0`` picks a free one.

    ``sock``: a socket already listening (:func:`~audioclip.index.hosts.listen`) to serve on instead of binding
    ``host`` and ``port``; ``host`` still names the address for the Host check.

    ``max_uploads`` uploads are decoded and embedded at a time; ``max_receiving`` bodies are received at a time,
    of at most ``max_receiving_bytes`` in all (default: 4 x ``max_upload``); an upload decodes to at most
    ``max_decoded_bytes`` (default: :func:`~audioclip.index.uploads.decoded_bound`). Raises ``OSError`` when the
    address cannot be used, ``ValueError`` for a bad ``allowed_hosts`` name.
    """
    limits = limits or ConnectionLimits()
    allowed = allowed_host_names(host, allowed_hosts)
    site = _Site(index, max_upload=max_upload, max_uploads=max_uploads, max_query_seconds=max_query_seconds,
                 decode_timeout=decode_timeout, limits=limits, upload_batch=upload_batch,
                 max_receiving=max_receiving, max_receiving_bytes=max_receiving_bytes,
                 max_decoded_bytes=max_decoded_bytes)
    app = build_app(site, allowed)
    server = SearchServer(site, app, sock if sock is not None else listen(host, port), limits, quiet)
    threading.Thread(target=start_worker_pool, daemon=True).start()  # so that the first upload need not wait
    return server


def serve(index: Index, host: str = "127.0.0.1", port: int = 8000, max_upload: int = 20_000_000,
          quiet: bool = False, **options) -> int:
    """Serve until interrupted; returns the exit status. ``options``: those of :func:`make_server`.

    The socket is bound (unless ``options`` gives one as ``sock``) before the model loads, so that a busy port or
    an address of another machine fails at once (status 1).
    """
    if options.get("sock") is None:
        try:
            options["sock"] = listen(host, port)
        except OSError as err:  # socket.gaierror included
            print(f"audioclip: error: cannot listen on {host}:{port}: {err.strerror or err}", file=sys.stderr)
            return 1
    try:
        stats = index.stats()
        print(f"loading the model ({(index.meta or {}).get('checkpoint')}) ...", file=sys.stderr)
        index.model  # noqa: B018 (load now: the first query is then fast, and a bad checkpoint fails here)
        server = make_server(index, host, port, max_upload, quiet, **options)
    except BaseException:
        options["sock"].close()
        raise
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {index.db} ({stats['files']} files) on http://{shown}:{server.port}/ "
          "(Ctrl-C to stop)", file=sys.stderr)
    names = sorted(allowed_host_names(host, options.get("allowed_hosts", ())))
    print(f"requests must name one of these hosts: {', '.join(names)} (--allowed-host adds one)", file=sys.stderr)
    server.start()
    if not server.started:  # uvicorn's thread died (or hung) at start-up: it has logged why
        server.shutdown(5)
        server.server_close()
        print(f"audioclip: error: the server did not start on {host}:{server.port} (see the messages above)",
              file=sys.stderr)
        return 1
    try:
        while server._thread.is_alive():
            server._thread.join(0.5)
    except KeyboardInterrupt:
        print("audioclip: stopped", file=sys.stderr)
    finally:
        server.shutdown()
        server.server_close()
    return 0
