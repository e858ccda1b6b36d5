"""Upload bodies for ``audioclip serve``: checked, received under caps, decoded in a worker, then deleted.

Two routes take a file in the request body: ``POST /api/search`` (a sound or a picture as the query) and
``POST /api/timeline`` (a recording to draw a text's score over). Both go through one :class:`UploadGate`, so
their bounds are one set:

- the request must carry ``X-Audioclip: 1`` (403 without: a page on another site cannot send it without a
  CORS preflight, which is never granted) and a ``Content-Length`` (411) of at most ``max_upload`` bytes
  (413, answered before the body is read) and more than none (400);
- at most ``max_receiving`` bodies are being received at a time, of at most ``max_receiving_bytes`` by their
  ``Content-Length`` together (503 beyond); each piece must come within ``body_idle_timeout`` and the whole
  body within ``body_timeout`` (408);
- only once a body is whole does its upload take one of the ``max_uploads`` decoding slots (503 "busy"
  beyond, checked also before the body is read), so slow senders cannot keep others' uploads out;
- the file is decoded by a worker process (``uploads.py``) within ``decode_timeout`` seconds and the media
  limits lowered for a query;
- the body lives in a private temporary folder (mode 0700), deleted before the answer is sent.

The counters are only changed on the event loop's thread, with no ``await`` between a check and its
increment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ..media.files import DecodeOptions
from .api import Index
from .httpd import ConnectionLimits
from .uploads import DecodedUpload, UploadError, decode_upload, decoded_bound, query_options
from .web import Refused, client_name, store_errors

__all__ = ["UploadGate"]

log = logging.getLogger("audioclip.serve")


class UploadGate:
    """The bounds every uploaded body goes through (see the module docstring); one per server."""

    def __init__(self, index: Index, *, max_upload: int, max_uploads: int, max_query_seconds: float,
                 decode_timeout: float, limits: ConnectionLimits, max_receiving: int,
                 max_receiving_bytes: int | None = None, max_decoded_bytes: int | None = None):
        self.index = index
        self.max_upload, self.max_uploads = max_upload, max_uploads
        self.max_receiving = max_receiving
        self.max_receiving_bytes = max_receiving_bytes or 4 * max_upload
        self.max_decoded_bytes = max_decoded_bytes  # None: decoded_bound of the query options
        self.max_query_seconds, self.decode_timeout = max_query_seconds, decode_timeout
        self.limits = limits
        # uploads decoded or worked on now (at most max_uploads), and bodies being received (at most
        # max_receiving, of max_receiving_bytes in all, by Content-Length)
        self.uploads = 0
        self.receiving = 0
        self.receiving_bytes = 0
        self._options: DecodeOptions | None = None

    def length_of(self, request: Request) -> int:
        """The body's announced length, once the header, the length and the framing are acceptable."""
        if request.headers.get("x-audioclip") != "1":
            raise Refused(403, "missing X-Audioclip header")
        given = request.headers.get("content-length")
        if given is None:  # h11 has checked that one given is a number, and FramingGuard that it is alone
            raise Refused(411, "Content-Length required")
        length = int(given)
        if length > self.max_upload:
            # answered now; the body is read and dropped after the answer (up to drain_bytes, see httpd.py)
            raise Refused(413, f"the file is too large ({length / 1e6:.1f} MB; at most {self.max_upload / 1e6:.1f} "
                           "MB)", close=length > self.limits.drain_bytes)
        if length == 0:
            raise Refused(400, "the uploaded file is empty")
        return length

    @contextlib.asynccontextmanager
    async def received(self, request: Request, name: str, length: int):
        """The body written to a private file (its path yielded) and one decoding slot held, for the block.

        ``name`` is the sender's name for the file (what messages say); its suffix, when it is a media one,
        is kept so that decoders that go by it can. The folder is removed on the way out, however it is left.
        """
        self.check_slot()  # full now: 503 before the body is sent for nothing
        if self.receiving >= self.max_receiving or self.receiving_bytes + length > self.max_receiving_bytes:
            raise Refused(503, "busy: other uploads are arriving; try again in a moment", headers={"Retry-After": "5"})
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
            self.check_slot()
            self.uploads += 1  # no await between the check and this: the loop's thread only
            try:
                yield path
            finally:
                self.uploads -= 1
        except UploadError as err:
            raise Refused(err.status, err.message) from None
        finally:
            if folder is not None:
                await run_in_threadpool(shutil.rmtree, folder, True)

    async def decode(self, path: str, name: str, *, audio: bool = False) -> DecodedUpload:
        """The received file decoded in a worker (``audio``: its whole sound in one array, for a timeline)."""
        options = self._options or await run_in_threadpool(self._upload_options)
        if audio:
            # every channel, as a timeline of an indexed file scores them (detection.query_scores), within the
            # query's channel cap, whether or not the index averages them for its vectors
            options = query_options(dataclasses.replace(options, mono=False), self.max_query_seconds)
        return await run_in_threadpool(decode_upload, path, name, options, self.decode_timeout,
                                       self._decoded_bytes(options), audio)

    def check_slot(self) -> None:
        if self.uploads >= self.max_uploads:
            raise Refused(503, "busy: other uploads are being searched; try again in a moment",
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
                    raise Refused(408, f"{name}: the upload was too slow", close=True) from None
                if message["type"] == "http.disconnect":
                    raise Refused(400, f"{name}: the upload was cut short", close=True)
                body = message.get("body", b"")
                received += len(body)
                if received > length:  # h11 frames the body by Content-Length: cannot happen
                    raise Refused(400, "the body is longer than its Content-Length", close=True)
                out.write(body)
                more = message.get("more_body", False)
        if received != length:
            raise Refused(400, f"{name}: the upload was cut short", close=True)

    def _upload_options(self) -> DecodeOptions:
        """The index's decoding options with the query limits: duration, channels (loads the model if needed)."""
        with store_errors():
            options = self.index.decode_options()
        self._options = query_options(options, self.max_query_seconds)
        return self._options


def upload_name(query) -> str:
    """The sender's name for the uploaded file (``name=``), made safe to show; "the upload" without one."""
    return client_name(query.get("name", "")) or "the upload"


def _private_folder() -> str:
    """A new temporary folder for one upload (mode 0700: the server's user only); 503 if none can be made."""
    try:
        return tempfile.mkdtemp(prefix="audioclip-query-")
    except OSError as err:
        log.error("cannot make a folder for an upload: %s", err)
        raise Refused(503, "the server cannot store an upload now; see the server's log") from None
