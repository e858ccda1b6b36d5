"""``GET /media/ID``, ``/thumb/ID`` and ``/wave/ID`` of the search page: an indexed file, a thumbnail of an indexed
picture, a waveform of an indexed recording.

What is served is only ever an indexed file. ``ID`` is a signed 64-bit id from the index (anything else is 404); a
path is never taken from a request. The file is opened one path component at a time without following a symbolic
link in any of them, must be a regular file, and must still be the file the index recorded (size and modification
time; device and inode where the index has them): a file replaced since, or a link or linked folder swapped in, is
404. The bytes sent come from that open descriptor (with HTTP range requests, so that players can seek). Folders on
the way are opened with ``O_PATH`` on Linux, so a folder the server may search but not list (mode 0711) is no
obstacle. Pictures are rendered once and cached beside the index (``pictures.py``), in a folder bounded in size.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import stat

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..media import MediaError
from .pictures import PictureCache, render_thumbnail, render_waveform
from .web import Refused, int64, store_errors

__all__ = ["FOLDER_FLAGS", "IndexedFiles", "OpenFileResponse", "open_indexed", "parse_range"]

CHUNK = 1 << 16  # bytes per read of a served file
# how the folders on an indexed file's path are opened (see open_indexed): O_PATH (Linux) needs no read permission
FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_TYPES = {".flac": "audio/flac", ".opus": "audio/ogg", ".oga": "audio/ogg", ".ogg": "audio/ogg", ".m4a": "audio/mp4",
          ".wav": "audio/wav", ".mp3": "audio/mpeg", ".aac": "audio/aac", ".weba": "audio/webm",
          ".mkv": "video/x-matroska", ".webm": "video/webm", ".mp4": "video/mp4", ".mov": "video/quicktime",
          ".webp": "image/webp", ".avif": "image/avif"}

log = logging.getLogger("audioclip.serve")


class IndexedFiles:
    """The route ``/{what}/{ident}``: files of ``index``, and pictures of them (cached in ``pictures`` if given)."""

    def __init__(self, index, pictures: PictureCache | None):
        self.index, self.pictures = index, pictures

    def answer(self, request: Request) -> Response:
        what, ident = request.path_params["what"], request.path_params["ident"]
        file_id = int64(ident)
        if what not in ("media", "thumb", "wave") or file_id is None:
            raise Refused(404, "not found")
        with store_errors():
            try:
                record = self.index.get(file_id)
            except ValueError as err:  # LanceDB cannot filter on -2**63 (it reads the literal as a float)
                log.warning("file id %d cannot be looked up: %s", file_id, err)
                record = None
        if record is None:
            raise Refused(404, "not found")
        if what != "media" and ((what == "thumb") != (record.source == "image") or
                                (what == "wave" and not record.duration)):
            raise Refused(404, "no picture for this file")
        fd = open_indexed(record)
        if fd is None:
            raise Refused(404, "not found")
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
                span = parse_range(header, size)
                if span is None:
                    raise Refused(416, "range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
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
        return OpenFileResponse(fd, start, max(0, end - start + 1), status, headers, content_type)

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
                raise Refused(404, f"cannot draw this {'picture' if what == 'thumb' else 'sound'}") from None
            except Exception:  # noqa: BLE001 (whatever Pillow or FFmpeg raise on a file changed since)
                raise Refused(404, "cannot read this file") from None
            if cache is not None:
                try:
                    cache.put(key, data)
                except OSError:
                    pass  # a read-only index: serve it uncached
        content_type = "image/jpeg" if what == "thumb" else "image/png"
        return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=300"})


def parse_range(header: str, size: int) -> tuple[int, int] | None:
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


def open_indexed(record) -> int | None:
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


class OpenFileResponse(StreamingResponse):
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
