"""Pictures for the search page: waveforms of sounds and thumbnails of images, rendered once and cached.

A waveform is drawn on the server (Pillow), not in the browser: one small PNG
per recording (a few kB) that any page or client can show with an ``<img>``,
cached beside the index so a recording is decoded once, not on every search.
The matching window is marked by the page over the picture, so one picture
serves every query. The cache (``PictureCache``) is a folder bounded in bytes:
past its cap the least recently used pictures are deleted.

Work per picture is bounded: a sound is decoded as a stream, block by block
(libsndfile, else FFmpeg), never held whole, and only up to ``MAX_SECONDS``;
renders run one at a time (``RENDER_SLOTS``).
"""

from __future__ import annotations

import io
import math
import os
import threading
from pathlib import Path

import numpy as np

from ..io import FileReadError, atomic_write, read_bytes_bounded
from ..media import MediaError

__all__ = ["PictureCache", "render_thumbnail", "render_waveform"]

WAVE_WIDTH, WAVE_HEIGHT = 320, 56
WAVE_COLOUR = (31, 138, 112, 255)  # the page's audio green
MAX_SECONDS = 6 * 3600.0  # longer recordings get no waveform (the page shows its icon)
THUMB_SIZE = 320
RENDER_SLOTS = threading.BoundedSemaphore(1)


class PictureCache:
    """A folder of rendered pictures, at most ``max_bytes`` in all (least recently used ones go first)."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = 64_000_000):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None

    def _entries(self):
        try:
            return [(e.path, e.stat()) for e in os.scandir(self.folder) if e.is_file() and not e.name.startswith(".")]
        except FileNotFoundError:
            return []

    def get(self, key: str) -> bytes | None:
        path = self.folder / key
        try:  # bounded and regular files only: a FIFO planted in the cache must not hang the page
            data = read_bytes_bounded(path, self.max_bytes, what="cached picture")
        except FileReadError:
            return None
        try:
            os.utime(path)  # recently used
        except OSError:
            pass
        return data

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self._total is None:
                self._total = sum(st.st_size for _, st in self._entries())
            with atomic_write(self.folder / key, "wb") as f:
                f.write(data)
            self._total += len(data)
            if self._total > self.max_bytes:
                entries = sorted(self._entries(), key=lambda e: e[1].st_mtime_ns)
                self._total = sum(st.st_size for _, st in entries)
                for path, st in entries:
                    if self._total <= self.max_bytes * 0.8:
                        break
                    try:
                        os.unlink(path)
                        self._total -= st.st_size
                    except OSError:
                        pass

    def size(self) -> int:
        return sum(st.st_size for _, st in self._entries())


def render_waveform(path: str, duration: float | None, width: int = WAVE_WIDTH, height: int = WAVE_HEIGHT) -> bytes:
    """A PNG of the sound's peak level across the whole recording. Raises ``MediaError`` if unreadable."""
    from PIL import Image, ImageDraw

    with RENDER_SLOTS:
        peaks = _peaks(path, duration, width)
    top = float(peaks.max()) if peaks.size else 0.0
    scaled = peaks / top if top > 0 else peaks
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    middle = (height - 1) / 2
    for x, level in enumerate(scaled):
        half = max(0.5, float(level) * (height - 2) / 2)
        draw.line([(x, middle - half), (x, middle + half)], fill=WAVE_COLOUR)
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def render_thumbnail(path: str, size: int = THUMB_SIZE) -> bytes:
    """A JPEG thumbnail of a picture (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with RENDER_SLOTS, Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def _peaks(path: str, duration: float | None, width: int) -> np.ndarray:
    """Peak |sample| in each of ``width`` equal slices of the recording, decoded as a stream."""
    import soundfile

    try:
        info = soundfile.info(os.fsencode(path))
    except (soundfile.SoundFileError, RuntimeError):
        info = None
    if info is not None and info.frames > 0 and info.samplerate > 0:
        if info.frames / info.samplerate > MAX_SECONDS:
            raise MediaError(path, "too long for a waveform")
        per = max(1, math.ceil(info.frames / width))
        peaks = np.zeros(width, np.float32)
        for column, block in enumerate(soundfile.blocks(path, blocksize=per, dtype="float32", always_2d=True)):
            if column < width and block.size:
                peaks[column] = float(np.abs(block).max())
        return peaks
    return _peaks_ffmpeg(path, duration, width)


def _peaks_ffmpeg(path: str, duration: float | None, width: int) -> np.ndarray:
    import av

    if not duration or duration <= 0:
        raise MediaError(path, "unknown duration")
    if duration > MAX_SECONDS:
        raise MediaError(path, "too long for a waveform")
    peaks = np.zeros(width, np.float32)
    try:
        with av.open(path) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise MediaError(path, "has no sound")
            for frame in container.decode(stream):
                t = frame.time or 0.0
                if t > MAX_SECONDS:
                    break
                samples = np.abs(frame.to_ndarray().astype(np.float32, copy=False))
                if np.issubdtype(frame.to_ndarray().dtype, np.integer):
                    samples /= float(np.iinfo(frame.to_ndarray().dtype).max)
                column = min(width - 1, int(t / duration * width))
                peaks[column] = max(peaks[column], float(samples.max()) if samples.size else 0.0)
    except av.FFmpegError as err:
        raise MediaError(path, f"cannot decode its sound ({err})") from None
    return peaks
