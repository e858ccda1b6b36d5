"""``audioclip serve``: a small web page to search an index (standard library HTTP server).

Routes (everything else is 404):

- ``GET /`` and ``GET /static/{app.js,style.css}``: the page, from this package's ``static/``.
- ``GET /api/search?q=TEXT&k=10&modality=audio``: results as JSON.
- ``POST /api/search?kind=audio|image&name=FILE.wav&k=..&modality=..``: the request body is the
  query file itself (at most ``max_upload`` bytes); it is written into a fresh temporary folder,
  embedded and deleted before the answer is sent. The request must carry
  ``X-Audioclip: 1`` (a page on another site cannot send it without a CORS preflight, which is
  never granted).
- ``GET /api/search?...&offset=N``: the next page of results (``more`` in the answer says whether
  there may be one after it).
- ``GET /media/ID``, ``GET /thumb/ID`` and ``GET /wave/ID``: an indexed file (with HTTP range
  requests, so players can seek), a JPEG thumbnail of an indexed picture, and a PNG waveform of an
  indexed recording (the page marks the matching window over it). Pictures are rendered once and
  cached beside the index (``pictures.py``), in a folder bounded in size. ``ID`` is the file's id in
  the index; a path is never taken from a request, so nothing but indexed files can be read.
- ``GET /api/stats``.

When listening on a loopback address, requests must name it (or ``localhost``) in their
``Host`` header, which defeats DNS-rebinding pages.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import mimetypes
import os
import re
import sys
import tempfile
import time
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from ..media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaError
from .api import Index, QueryError
from .pictures import PictureCache, render_thumbnail, render_waveform
from .search import SOURCES
from .store import IndexStoreError

__all__ = ["make_server", "serve"]

STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}
MEDIA_ID = re.compile(r"/(media|thumb|wave)/(-?[0-9]{1,20})")
MAX_K = 100
MAX_OFFSET = 400  # the deepest page: offset + k results are ranked for it
DRAIN_LIMIT = 256_000_000  # an oversized upload up to this is read (and dropped) before the 413 answer
CACHE_BYTES = 64_000_000  # the picture cache beside the index
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


def _static(name: str) -> bytes:
    return (resources.files("audioclip.index") / "static" / name).read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "audioclip"
    sys_version = ""

    # -- plumbing ------------------------------------------------------------------------

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**_SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", {"Cache-Control": "no-store"})

    def _fail(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        allowed = self.server.allowed_hosts
        if allowed is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in allowed

    def _route(self) -> tuple[str, dict[str, list[str]]] | None:
        if not self._host_ok():
            self._fail(403, "unexpected Host header")
            return None
        parts = urlsplit(self.path)
        try:
            return parts.path, parse_qs(parts.query, max_num_fields=20)
        except ValueError:
            self._fail(400, "too many query parameters")
            return None

    # -- GET -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        routed = self._route()
        if routed is None:
            return
        path, query = routed
        if path in ("/", "/index.html"):
            self._send(200, _static("index.html"), STATIC["index.html"], {"Cache-Control": "no-cache"})
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC:
            name = path[len("/static/"):]
            self._send(200, _static(name), STATIC[name], {"Cache-Control": "no-cache"})
        elif path == "/api/search":
            self._search_text(query)
        elif path == "/api/stats":
            self._json(200, {**self.server.index.stats(), "max_upload": self.server.max_upload})
        elif match := MEDIA_ID.fullmatch(path):
            self._media(match.group(1), int(match.group(2)))
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._fail(404, "not found")

    def _params(self, query: dict[str, list[str]]) -> tuple[int, int, str | None]:
        try:
            k = int(query.get("k", ["10"])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            raise QueryError("k and offset must be whole numbers") from None
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}")
        if not 0 <= offset <= MAX_OFFSET:
            raise QueryError(f"offset must be between 0 and {MAX_OFFSET}")
        modality = query.get("modality", [""])[0] or None
        if modality is not None and modality not in SOURCES:
            raise QueryError(f"modality must be one of {', '.join(SOURCES)}")
        return k, offset, modality

    def _search_text(self, query: dict[str, list[str]]) -> None:
        text = query.get("q", [""])[0].strip()
        if not text:
            self._fail(400, "type something to search for")
            return
        self._run_search(query, {"text": text}, {"text": text})

    def _run_search(self, query: dict, search_args: dict, described: dict) -> None:
        index = self.server.index
        started = time.perf_counter()
        try:
            k, offset, modality = self._params(query)
            empty = index.store.count_rows() == 0
            ranked = [] if empty else index.search(**search_args, k=offset + k + 1, modality=modality)
        except QueryError as err:
            self._fail(400, str(err))
            return
        except IndexStoreError as err:
            self._fail(503, str(err))
            return
        results = []
        for rank, hit in enumerate(ranked[offset: offset + k], offset + 1):
            item = {"rank": rank, **hit.to_dict(), "name": os.path.basename(hit.path), "media": f"/media/{hit.id}"}
            item["thumb"] = f"/thumb/{hit.id}" if hit.source == "image" else None
            item["wave"] = f"/wave/{hit.id}" if hit.source != "image" and hit.duration else None
            results.append(item)
        more = len(ranked) > offset + k and offset + k <= MAX_OFFSET
        self._json(200, {"query": described, "results": results, "empty_index": empty, "offset": offset,
                         "more": more, "took_ms": round(1000 * (time.perf_counter() - started), 1)})

    def _media(self, what: str, file_id: int) -> None:
        record = self.server.index.get(file_id)
        if record is None or not os.path.isfile(record.path):
            self._fail(404, "not found")
            return
        if what in ("thumb", "wave"):
            self._picture(what, record)
            return
        suffix = os.path.splitext(record.path)[1].lower()
        content_type = _TYPES.get(suffix) or mimetypes.guess_type(record.path)[0] or "application/octet-stream"
        try:
            f = open(record.path, "rb")
        except OSError:
            self._fail(404, "not found")
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            start, end, status = 0, size - 1, 200
            header = self.headers.get("Range")
            if header:
                span = _parse_range(header, size)
                if span is None:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end, status = span[0], span[1], 206
            length = max(0, end - start + 1)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Cache-Control", "private, max-age=60")
            for name, value in _SECURITY_HEADERS.items():
                self.send_header(name, value)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            f.seek(start)
            remaining = length
            try:
                while remaining > 0:
                    block = f.read(min(1 << 16, remaining))
                    if not block:
                        break
                    self.wfile.write(block)
                    remaining -= len(block)
            except (BrokenPipeError, ConnectionResetError):  # the player moved on
                self.close_connection = True

    def _picture(self, what: str, record) -> None:
        """A thumbnail (pictures) or waveform (sounds), from the cache or rendered and cached now."""
        if (what == "thumb") != (record.source == "image") or (what == "wave" and not record.duration):
            self._fail(404, "no picture for this file")
            return
        suffix = "jpg" if what == "thumb" else "png"
        key = f"{what}-{record.file_id}-{record.size}-{record.mtime_ns}.{suffix}"  # a changed file: a new key
        cache = self.server.pictures
        data = cache.get(key) if cache is not None else None
        if data is None:
            try:
                data = render_thumbnail(record.path) if what == "thumb" else \
                    render_waveform(record.path, record.duration)
            except (MediaError, OSError, ValueError, RuntimeError):
                self._fail(404, f"cannot draw this {'picture' if what == 'thumb' else 'sound'}")
                return
            except Exception:  # noqa: BLE001 (whatever Pillow or FFmpeg raise on a file changed since)
                self._fail(404, "cannot read this file")
                return
            if cache is not None:
                try:
                    cache.put(key, data)
                except OSError:
                    pass  # a read-only index: serve it uncached
        content_type = "image/jpeg" if what == "thumb" else "image/png"
        self._send(200, data, content_type, {"Cache-Control": "private, max-age=300"})

    # -- POST (upload a query) -----------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802
        routed = self._route()
        if routed is None:
            return
        path, query = routed
        if path != "/api/search":
            self.close_connection = True
            self._fail(404, "not found")
            return
        if self.headers.get("X-Audioclip") != "1":
            self.close_connection = True
            self._fail(403, "missing X-Audioclip header")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._fail(411, "Content-Length required")
            return
        limit = self.server.max_upload
        if length > limit or length < 0:
            self.close_connection = True
            if 0 < length <= DRAIN_LIMIT:  # read and drop it, so that the client gets to see the answer
                self._discard(length)
            self._fail(413, f"the file is too large ({length / 1e6:.1f} MB; at most {limit / 1e6:.1f} MB)")
            return
        if length == 0:
            self._fail(400, "the uploaded file is empty")
            return
        kind = query.get("kind", [""])[0]
        if kind not in ("audio", "image"):
            self._fail(400, "kind must be audio or image")
            return
        name = query.get("name", ["upload"])[0]
        suffix = os.path.splitext(name)[1].lower()
        if suffix not in AUDIO_EXTENSIONS | IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
            suffix = ""  # the content is sniffed instead
        with tempfile.TemporaryDirectory(prefix="audioclip-query-") as folder:
            target = os.path.join(folder, "query" + suffix)
            with open(target, "wb") as out:
                remaining = length
                while remaining > 0:
                    block = self.rfile.read(min(1 << 16, remaining))
                    if not block:
                        break
                    out.write(block)
                    remaining -= len(block)
            if remaining:
                self.close_connection = True
                self._fail(400, "the upload was cut short")
                return
            self._run_search(query, {kind: target}, {kind: os.path.basename(name)[:200]})


    def _discard(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            block = self.rfile.read(min(1 << 16, remaining))
            if not block:
                return
            remaining -= len(block)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single ``bytes=`` range, None if unsatisfiable or malformed."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or size == 0 or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, index: Index, max_upload: int, quiet: bool, cache_bytes: int = CACHE_BYTES):
        self.index = index
        self.max_upload = max_upload
        self.quiet = quiet
        folder = getattr(index.store, "cache_dir", None)
        self.pictures = PictureCache(folder / "pictures", cache_bytes) if folder is not None else None
        super().__init__(address, _Handler)
        host = address[0]
        self.allowed_hosts = _loopback_names(host)


    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a browser that stopped loading a sound, or went away
        super().handle_error(request, client_address)


def _loopback_names(host: str) -> set[str] | None:
    """Host names accepted when listening on loopback; None (any) otherwise."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        return None
    return {"localhost", "127.0.0.1", "[::1]", host.lower()}


def make_server(index: Index, host: str = "127.0.0.1", port: int = 8000, max_upload: int = 20_000_000,
                quiet: bool = False) -> _Server:
    """A server for ``index`` (not yet serving; call ``serve_forever``). ``port=0`` picks a free one."""
    return _Server((host, port), index, max_upload, quiet)


def serve(index: Index, host: str = "127.0.0.1", port: int = 8000, max_upload: int = 20_000_000,
          quiet: bool = False) -> int:
    """Serve until interrupted; returns the exit status."""
    stats = index.stats()
    print(f"loading the model ({(index.meta or {}).get('checkpoint')}) ...", file=sys.stderr)
    index.model  # noqa: B018 (load now: the first query is then fast, and a bad checkpoint fails here)
    try:
        server = make_server(index, host, port, max_upload, quiet)
    except OSError as err:
        print(f"audioclip: error: cannot listen on {host}:{port}: {err.strerror or err}", file=sys.stderr)
        return 1
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {index.db} ({stats['files']} files) on http://{shown}:{server.server_address[1]}/ "
          "(Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("audioclip: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
