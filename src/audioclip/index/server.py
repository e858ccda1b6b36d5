"""``audioclip serve``: a small web page to search an index (Starlette, served by uvicorn with h11).

Routes (everything else is 404; every answer but the page's files is JSON):

- ``GET /`` and ``GET /static/{app.js,style.css}``: the page, from this package's ``static/``.
- ``GET /api/search?q=TEXT&k=10&offset=0&modality=audio``: results as JSON. ``q`` is at most
  :data:`~audioclip.index.web.MAX_QUERY_CHARS` characters, ``k`` 1-100, ``offset`` 0-400 (``more`` in the
  answer says whether there may be a page after this one); anything else is a 400.
- ``POST /api/search?kind=audio|image&name=FILE.wav&k=..&offset=..&modality=..``: the request body is
  the query file itself, under the bounds of every upload (``received.py``: the ``X-Audioclip: 1``
  header, ``Content-Length`` at most ``max_upload``, caps on bodies being received and on uploads being
  decoded, a deadline for the body, a private temporary folder deleted before the answer). The file is
  decoded by a worker process within ``decode_timeout`` seconds and the media limits, lowered for a
  query (``uploads.py``: duration, channels, and what the worker may write; 413 "too large once
  decoded" beyond). The windows are embedded here a batch at a time, text searches that are waiting
  going first. Errors name the file by the name the client gave.
- ``GET /media/ID``, ``GET /thumb/ID`` and ``GET /wave/ID``: an indexed file, a thumbnail, a waveform;
  only ever a file the index recorded, and only while it is as recorded (``served_files.py``).
- ``GET /api/labels``: the labels of the head given (``--head``) for search's ``label=`` (``labelled.py``).
- ``GET /api/timeline?id=ID&q=TEXT``: a text's score over time in an indexed recording; ``POST
  /api/timeline?q=TEXT&name=FILE.wav`` the same in an uploaded one (``timeline.py``).
- ``GET /api/stats``. ``HEAD`` is answered wherever ``GET`` is.
- ``GET /api/live``: with ``serve --listen``, a live source's scores and events as server-sent events
  (``live_feed.py``); 404 without.

Every request must name an expected host in its ``Host`` header (403 otherwise; ``hosts.py``), which
defeats DNS-rebinding pages. Connections (``httpd.py``): HTTP/1.1 parsed by h11, framing checked,
deadlines on every wait on a client, heads of at most 16 kB, a connection cap and per-client caps.
Answers carry ``nosniff``, ``no-referrer`` and a strict Content-Security-Policy (``web.py``). Errors
never show a server path: a store error is logged and answered with a generic message, an unexpected
one is logged to stderr and answered 500.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from importlib import resources

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .api import Index, QueryError
from .hosts import allowed_host_names, listen
from .labelled import LabelFilter
from .httpd import AnswerTracker, ClientRateLimit, ConnectionLimits, FramingGuard, run_guarded
from .pictures import PictureCache
from .served_files import IndexedFiles
from .timeline import Timeline
from .received import UploadGate, upload_name
from .uploads import QUERY_BATCH, SearchesFirst, embed_upload, start_worker_pool
from .web import (
    EXCEPTION_HANDLERS,
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    SECURITY_HEADERS,
    HostGuard,
    Refused,
    SecurityHeaders,
    json_answer,
    paging,
    query_of,
    store_errors,
)

__all__ = ["ConnectionLimits", "SearchServer", "allowed_host_names", "make_server", "serve"]

STATIC = {"app.js": "text/javascript; charset=utf-8", "live.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8", "index.html": "text/html; charset=utf-8"}
MAX_UPLOADS = 2  # uploads decoded and embedded at once; more get 503
MAX_RECEIVING = 8  # upload bodies being received at once; more get 503
MAX_QUERY_SECONDS = 600.0  # of an uploaded recording
DECODE_TIMEOUT = 120.0  # s a worker may take to decode an upload
CACHE_BYTES = 64_000_000  # the picture cache beside the index

log = logging.getLogger("audioclip.serve")


def _static(name: str) -> bytes:
    return (resources.files("audioclip.index") / "static" / name).read_bytes()


# -- the site: what each route does (indexed files: served_files.py) ----------------------------


class _Site:
    """The routes' handlers and what they share: the index, the limits, the picture cache, the upload count."""

    def __init__(self, index: Index, *, max_upload: int, max_uploads: int, max_query_seconds: float,
                 decode_timeout: float, limits: ConnectionLimits, upload_batch: int = QUERY_BATCH,
                 cache_bytes: int = CACHE_BYTES, max_receiving: int = MAX_RECEIVING,
                 max_receiving_bytes: int | None = None, max_decoded_bytes: int | None = None,
                 head=None, timeline=None):
        self.index = index
        self.max_upload = max_upload
        self.limits = limits
        # uploaded bodies, for POST /api/search and POST /api/timeline (received.py)
        self.gate = UploadGate(index, max_upload=max_upload, max_uploads=max_uploads,
                               max_query_seconds=max_query_seconds, decode_timeout=decode_timeout, limits=limits,
                               max_receiving=max_receiving, max_receiving_bytes=max_receiving_bytes,
                               max_decoded_bytes=max_decoded_bytes)
        self.upload_batch = upload_batch
        folder = getattr(index.store, "cache_dir", None)
        self.pictures = PictureCache(folder / "pictures", cache_bytes) if folder is not None else None
        self.files = IndexedFiles(index, self.pictures)
        self.labels = LabelFilter(head)  # GET /api/labels, and search's label= (labelled.py)
        # GET and POST /api/timeline (timeline.py)
        self.timeline = Timeline(index, timeline, max_query_seconds, self.gate)
        self.turns = SearchesFirst()  # text searches go before an upload's next batch
        self.live = None  # a LiveFeed (live_feed.py) with ``serve --listen``

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page, methods=["GET"]),
            Route("/index.html", self.page, methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
            Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
            Route("/api/search", self.search_text, methods=["GET"]),
            Route("/api/search", self.search_upload, methods=["POST"]),
            Route("/api/stats", self.stats, methods=["GET"]),
            *self.labels.routes(), *self.timeline.routes(),
            *(self.live.routes() if self.live is not None else []),  # GET /api/live (live_feed.py)
            Route("/{what:str}/{ident:str}", self.files.answer, methods=["GET"]),
        ]

    # -- pages and small answers --

    def page(self, request: Request) -> Response:
        return Response(_static("index.html"), media_type=STATIC["index.html"], headers={"Cache-Control": "no-cache"})

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise Refused(404, "not found")
        return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    def stats(self, request: Request) -> Response:
        with store_errors():
            return json_answer(200, {**self.index.stats(), "max_upload": self.max_upload,
                                     "live": self.live is not None})  # whether /api/live has a feed

    # -- searching --

    def search_text(self, request: Request) -> Response:
        started = time.perf_counter()
        query = query_of(request)
        text = query.get("q", "").strip()
        if not text:
            raise Refused(400, "type something to search for")
        if len(text) > MAX_QUERY_CHARS:
            raise Refused(400, f"the text is too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
        k, offset, modality = paging(query)
        label = self.labels.label_of(query, modality)
        return self._answer(lambda n: self._search(self._embed_text(text), n, modality, label),
                            k, offset, {"text": text, **({"label": label} if label else {})}, started)

    def _search(self, vector, n: int, modality: str | None, label: str | None):
        """The ``n`` best hits for ``vector``; with ``label``, only sounds the head gives that label."""
        if label is None:
            return self.index.search(vector=vector, k=n, modality=modality)
        return self.labels.search(self.index, vector, n, modality, label)

    def _embed_text(self, text: str):
        """``Index.embed_query(text)``, ahead of an upload's next batch (:class:`SearchesFirst`)."""
        with self.turns.searching():
            return self.index.embed_query(text)

    def _answer(self, search, k: int, offset: int, described: dict, started: float) -> Response:
        """Rank ``offset + k + 1`` results with ``search(n)`` and answer the page of ``k`` from ``offset``."""
        with store_errors():
            try:
                empty = self.index.store.count_rows() == 0
                ranked = [] if empty else search(offset + k + 1)
            except QueryError as err:
                raise Refused(400, str(err)) from None
        results = []
        for rank, hit in enumerate(ranked[offset: offset + k], offset + 1):
            item = {"rank": rank, **hit.to_dict(), "name": os.path.basename(hit.path), "media": f"/media/{hit.id}"}
            item["thumb"] = f"/thumb/{hit.id}" if hit.source == "image" else None
            item["wave"] = f"/wave/{hit.id}" if hit.source != "image" and hit.duration else None
            item["timeline"] = f"/api/timeline?id={hit.id}" if hit.source != "image" and hit.duration else None
            results.append(item)
        more = len(ranked) > offset + k and offset + k <= MAX_OFFSET
        return json_answer(200, {"query": described, "results": results, "empty_index": empty, "offset": offset,
                           "more": more, "took_ms": round(1000 * (time.perf_counter() - started), 1)})

    async def search_upload(self, request: Request) -> Response:
        started = time.perf_counter()
        length = self.gate.length_of(request)
        query = query_of(request)
        kind = query.get("kind", "")
        if kind not in ("audio", "image"):
            raise Refused(400, "kind must be audio or image")
        k, offset, modality = paging(query)
        label = self.labels.label_of(query, modality)
        name = upload_name(query)
        async with self.gate.received(request, name, length) as path:
            decoded = await self.gate.decode(path, name)
            with store_errors():
                vector = await run_in_threadpool(embed_upload, self.index, decoded, kind, name,
                                                 self.upload_batch, self.turns)
            del decoded  # its memory maps, before the folder goes
            return await run_in_threadpool(self._answer, lambda n: self._search(vector, n, modality, label),
                                           k, offset, {kind: name, **({"label": label} if label else {})},
                                           started)

    # the gate's counters, read by tests and benchmarks
    uploads = property(lambda self: self.gate.uploads)
    receiving = property(lambda self: self.gate.receiving)
    receiving_bytes = property(lambda self: self.gate.receiving_bytes)


# -- the application and the server -------------------------------------------------------------


def build_app(site: _Site, allowed_hosts: frozenset[str]):
    """The ASGI application: Starlette's routes inside the Host check, the framing check, the per-client request
    rate, the headers and the tracking of answers for the connection's guard (``httpd.py``)."""
    app = Starlette(routes=site.routes(), exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False  # "/api/stats/" is not found, not redirected
    limits = site.limits
    return AnswerTracker(SecurityHeaders(ClientRateLimit(FramingGuard(HostGuard(app, allowed_hosts)),
                                                         limits.client_rate, limits.client_burst)))


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
            app, http="h11", ws="none", lifespan="off", loop="asyncio",
            log_config=None, log_level="error" if quiet else "info", access_log=not quiet,
            timeout_keep_alive=limits.keep_alive, limit_concurrency=limits.max_connections,
            h11_max_incomplete_event_size=limits.max_head_bytes, timeout_graceful_shutdown=5, server_header=False,
            # the client is the socket's peer: uvicorn would otherwise take X-Forwarded-For from any process on
            # this machine (its default trusts 127.0.0.1), giving the per-client limits a new address per request
            proxy_headers=False)
        self._uvicorn = uvicorn.Server(config)
        self.limits = limits
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
            # each connection guarded (httpd.py): deadlines, head size, per-client cap, JSON framing errors
            run_guarded(lambda: self._uvicorn.serve(sockets=[self.socket]), self.limits, SECURITY_HEADERS)
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
                max_decoded_bytes: int | None = None, sock: socket.socket | None = None, head=None,
                timeline=None, live=None) -> SearchServer:
    """A server for ``index``, bound but not yet serving (``serve_forever`` or ``start``). ``port=0`` picks a free one.

    ``sock``: a socket already listening (:func:`~audioclip.index.hosts.listen`) to serve on instead of binding
    ``host`` and ``port``; ``host`` still names the address for the Host check.

    ``max_uploads`` uploads are decoded and embedded at a time; ``max_receiving`` bodies are received at a time,
    of at most ``max_receiving_bytes`` in all (default: 4 x ``max_upload``); an upload decodes to at most
    ``max_decoded_bytes`` (default: :func:`~audioclip.index.uploads.decoded_bound`). ``head``: a fitted head
    (:mod:`audioclip.heads`) for the page's label filter (``labelled.py``); ``timeline``: the function that scores
    a recording over time for ``/api/timeline`` (``timeline.py``), of recordings of at most ``max_query_seconds``.
    ``live``: a :class:`~audioclip.index.live_feed.LiveFeed` streamed at ``GET /api/live`` (404 without).
    Raises ``OSError`` when the
    address cannot be used, ``ValueError`` for a bad ``allowed_hosts`` name.
    """
    limits = limits or ConnectionLimits()
    allowed = allowed_host_names(host, allowed_hosts)
    site = _Site(index, max_upload=max_upload, max_uploads=max_uploads, max_query_seconds=max_query_seconds,
                 decode_timeout=decode_timeout, limits=limits, upload_batch=upload_batch,
                 max_receiving=max_receiving, max_receiving_bytes=max_receiving_bytes,
                 max_decoded_bytes=max_decoded_bytes, head=head, timeline=timeline)
    site.live = live
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
        if options.get("live") is not None:
            options["live"].close()  # its streams end now, not at the graceful shutdown's deadline
        server.shutdown()
