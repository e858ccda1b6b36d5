"""Where live audio comes from: standard input (raw PCM or WAV), anything FFmpeg opens, or a microphone.

A source is an iterator of float32 ``(channels, n)`` blocks at 44.1 kHz in [-1, 1], read
on the capture thread (:class:`~audioclip.live.listener.Listener`). Every source goes
through one :class:`Conditioner`: checks (finite samples, peak), soxr's streaming
resampler to 44.1 kHz ("VHQ", as :mod:`audioclip.media.audio` resamples files, so that a
recording fed through standard input scores as ``detect`` scores the file), down-mix,
clipping.

- :class:`StdinSource` (``-``): a WAV stream (``RIFF``/``RF64`` first; its data is read to
  the end of the pipe whatever length the header claims, since a writer into a pipe cannot
  fill it in) or raw PCM of ``--format s16le|f32le``, ``--rate``, ``--channels``.
- :class:`AVSource`: a file, a URL (RTSP, HTTP, Icecast) through PyAV; ``realtime`` paces a
  file at the speed it would play; a network stream that stalls or breaks is reopened with
  back-off, ``retry`` times.
- :class:`MicSource`: the default (or a named) input device through sounddevice (the
  ``live`` extra, imported when used).
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Iterator

import numpy as np

from ..errors import AudioclipError
from ..media.audio import MAX_PEAK, SAMPLE_RATE

__all__ = ["SourceError", "Conditioner", "StdinSource", "AVSource", "MicSource", "PCM_FORMATS", "open_source",
           "sounddevice_problem"]

PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
_READ_BYTES = 1 << 14  # one read from a pipe: 4096 stereo s16 frames (93 ms at 44.1 kHz) at most
_MAX_CHANNELS = 64
_WAV_HEADER_MAX = 1 << 16  # bytes before the data chunk; a longer header is not a WAV stream


class SourceError(AudioclipError, OSError):
    """A source that cannot be opened or read, or whose samples are not what it claims (one line)."""


def sounddevice_problem() -> str | None:
    """Why the microphone cannot be used (the ``live`` extra missing, or PortAudio), else None."""
    try:
        import sounddevice  # noqa: F401
    except ImportError:
        return 'the microphone needs the sounddevice package: pip install "audioclip[live]"'
    except OSError as err:  # sounddevice is there, the PortAudio library is not
        return f'the microphone needs PortAudio ({err}); install it (e.g. apt install libportaudio2) and pip install "audioclip[live]"'
    return None


class Conditioner:
    """Raw ``(frames, channels)`` float32 blocks at ``rate`` -> checked ``(channels, n)`` blocks at 44.1 kHz."""

    def __init__(self, name: str, rate: int, channels: int, *, mono: bool = False, hint: str = ""):
        import soxr

        self.name, self.rate, self.mono, self.hint, self.channels = name, int(rate), mono, hint, channels
        out_channels = 1 if mono and channels > 1 else channels
        self._stream = (None if self.rate == SAMPLE_RATE else
                        soxr.ResampleStream(self.rate, SAMPLE_RATE, out_channels, dtype="float32", quality="VHQ"))

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if block.size:
            if not np.isfinite(block).all():
                raise SourceError(f"{self.name}: non-finite samples{self.hint}")
            peak = float(np.abs(block).max())
            if peak > MAX_PEAK:
                raise SourceError(f"{self.name}: samples far outside [-1, 1] (peak {peak:.3g}){self.hint}")
        if self.mono and block.shape[1] > 1:
            block = block.mean(axis=1, keepdims=True, dtype=np.float32)
        if self._stream is not None:
            block = self._stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32), last=last)
        out = np.array(block.T, dtype=np.float32, order="C")
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def finish(self) -> np.ndarray | None:
        """The resampler's tail at the end of the stream (None when empty)."""
        if self._stream is None:
            return None
        tail = self(np.zeros((0, self.channels), np.float32), last=True)
        return tail if tail.shape[1] else None


def _read_exact(fd: int, n: int, pending: bytearray) -> bytes | None:
    """``n`` bytes from ``fd`` (blocking), or None at the end of the stream before ``n``."""
    while len(pending) < n:
        chunk = os.read(fd, max(n - len(pending), _READ_BYTES))
        if not chunk:
            return None
        pending += chunk
    out = bytes(pending[:n])
    del pending[:n]
    return out


class StdinSource:
    """Raw PCM or a WAV stream on a file descriptor (standard input by default); see the module docstring."""

    def __init__(self, fmt: str = "s16le", rate: int = SAMPLE_RATE, channels: int = 1, *, mono: bool = False,
                 fd: int | None = None, name: str = "standard input"):
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.name, self.mono = name, mono
        self.fmt, self.rate, self.channels = fmt, int(rate), int(channels)
        self._pending = bytearray()
        self.wav = False
        self.regular_file = _is_regular(self.fd)

    def _header(self) -> None:
        """Read a WAV header if the stream starts with one; else the stream is raw PCM as given."""
        head = _read_exact(self.fd, 4, self._pending)
        if head is None:
            raise SourceError(f"{self.name}: no audio (the stream ended before 4 bytes)")
        if head not in (b"RIFF", b"RF64"):
            self._pending[:0] = head
            return
        self.wav = True
        rest = _read_exact(self.fd, 8, self._pending)
        if rest is None or rest[4:8] != b"WAVE":
            raise SourceError(f"{self.name}: starts with RIFF but is not a WAV stream")
        seen, fmt = 12, None
        while True:
            chunk = _read_exact(self.fd, 8, self._pending)
            if chunk is None:
                raise SourceError(f"{self.name}: the WAV stream ended before its data")
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                break
            if size > _WAV_HEADER_MAX or seen + size > _WAV_HEADER_MAX:
                raise SourceError(f"{self.name}: WAV header chunk {cid!r} of {size} bytes is too long")
            body = _read_exact(self.fd, size + (size & 1), self._pending)
            if body is None:
                raise SourceError(f"{self.name}: the WAV stream ended in its header")
            seen += 8 + size
            if cid == b"fmt ":
                fmt = body
        if fmt is None or len(fmt) < 16:
            raise SourceError(f"{self.name}: WAV stream without a format chunk")
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
            tag = struct.unpack("<H", fmt[24:26])[0]
        kinds = {(1, 16): "s16le", (3, 32): "f32le"}
        if (tag, bits) not in kinds:
            raise SourceError(f"{self.name}: WAV of format {tag} with {bits}-bit samples; send 16-bit PCM or "
                              "32-bit float (ffmpeg ... -c:a pcm_s16le -f wav -)")
        self.fmt, self.channels, self.rate = kinds[tag, bits], channels, rate

    def __iter__(self) -> Iterator[np.ndarray]:
        self._header()
        if not 1 <= self.channels <= _MAX_CHANNELS or not 1 <= self.rate <= 768_000:
            raise SourceError(f"{self.name}: {self.channels} channels at {self.rate} Hz is not a sound stream")
        dtype = PCM_FORMATS[self.fmt]
        frame_bytes = dtype.itemsize * self.channels
        other = "s16le" if self.fmt == "f32le" else "f32le"
        hint = "" if self.wav else f" (is it {other}? give --format {other})"
        condition = Conditioner(self.name, self.rate, self.channels, mono=self.mono, hint=hint)
        scale = 1 / 32768 if self.fmt == "s16le" else 1.0
        while True:
            chunk = os.read(self.fd, _READ_BYTES * self.channels)
            if not chunk:
                break
            self._pending += chunk
            usable = len(self._pending) - len(self._pending) % frame_bytes
            if not usable:
                continue
            raw = np.frombuffer(bytes(self._pending[:usable]), dtype=dtype).reshape(-1, self.channels)
            del self._pending[:usable]
            yield condition(raw.astype(np.float32) * np.float32(scale) if scale != 1.0 else raw.astype(np.float32))
        tail = condition.finish()
        if tail is not None:
            yield tail


def _is_regular(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


class AVSource:
    """Audio of anything FFmpeg opens (PyAV): a file (``realtime``: paced as it plays) or a network stream."""

    def __init__(self, url: str, *, mono: bool = False, realtime: bool = False, retry: int = 0,
                 timeout_s: float = 10.0, sleep=time.sleep):
        from ..util import is_uri

        self.url, self.mono, self.realtime, self.retry = url, mono, realtime, retry
        self.timeout_s, self.sleep = timeout_s, sleep
        self.network = is_uri(url) and not url.startswith("file:")
        self.regular_file = not self.network and os.path.isfile(url)

    def probe(self) -> None:
        """Open the source once and close it (a local file: before the model loads); raises SourceError."""
        self._open().close()

    def _open(self):
        import av

        try:
            container = av.open(self.url, timeout=(self.timeout_s, self.timeout_s))
        except (av.FFmpegError, OSError) as err:
            raise SourceError(f"{self.url}: cannot be opened ({_reason(err)})") from None
        if not container.streams.audio:
            container.close()
            raise SourceError(f"{self.url}: has no audio stream")
        return container

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        attempt = 0
        while True:
            try:
                yield from self._play()
                return  # the stream ended
            except SourceError:
                if not self.network or attempt >= self.retry:
                    raise
            except av.FFmpegError as err:
                if not self.network or attempt >= self.retry:
                    raise SourceError(f"{self.url}: {_reason(err)}") from None
            attempt += 1
            wait = min(60.0, 2.0 ** (attempt - 1))
            print(f"audioclip listen: {self.url}: stream lost; retry {attempt}/{self.retry} in {wait:g} s",
                  file=sys.stderr, flush=True)
            self.sleep(wait)

    def _play(self) -> Iterator[np.ndarray]:
        import av

        container = self._open()
        with container:
            stream = container.streams.audio[0]
            resampler, condition = None, None
            started, played = time.monotonic(), 0
            for frame in container.decode(stream):
                if resampler is None:
                    channels = len(frame.layout.channels)
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
                    condition = Conditioner(self.url, frame.sample_rate, channels, mono=self.mono)
                for out in resampler.resample(frame):
                    raw = out.to_ndarray().reshape(out.samples, -1)
                    if self.realtime:  # the block is due when the audio before it has played
                        played += out.samples / out.sample_rate
                        ahead = started + played - time.monotonic()
                        if ahead > 0:
                            self.sleep(ahead)
                    yield condition(raw)
            if condition is None:
                raise SourceError(f"{self.url}: no audio could be decoded")
            tail = condition.finish()
            if tail is not None:
                yield tail


def _reason(err: BaseException) -> str:
    return " ".join(str(getattr(err, "strerror", None) or err).split()) or type(err).__name__


class MicSource:
    """The default input device (or ``device``, a name or index) through sounddevice, at 44.1 kHz.

    PortAudio calls back on its own thread with each block; blocks are handed over through a
    bounded queue (a full queue drops the block and counts it in ``overflows``).
    """

    def __init__(self, device: str | int | None = None, *, channels: int = 1, mono: bool = False,
                 block_s: float = 0.1):
        self.device, self.channels, self.mono, self.block_s = device, channels, mono, block_s
        self.regular_file = False
        self.overflows = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        import queue

        import sounddevice as sd

        blocks: queue.Queue = queue.Queue(maxsize=64)

        def callback(indata, frames, time_info, status):
            try:
                blocks.put_nowait(indata.copy())
            except queue.Full:
                self.overflows += 1

        condition = Conditioner("microphone", SAMPLE_RATE, self.channels, mono=self.mono)
        try:
            stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=self.channels, dtype="float32",
                                    device=self.device, blocksize=int(self.block_s * SAMPLE_RATE),
                                    callback=callback)
        except Exception as err:  # PortAudioError or ValueError (no such device): one line
            raise SourceError(f"microphone {self.device if self.device is not None else '(default)'}: "
                              f"{_reason(err)}") from None
        with stream:
            while True:
                try:
                    raw = blocks.get(timeout=5.0)
                except queue.Empty:
                    if not stream.active:
                        raise SourceError("microphone: the input device stopped (unplugged?)") from None
                    raise SourceError("microphone: no audio for 5 s (the device disappeared?)") from None
                yield condition(raw)


def open_source(name: str, *, fmt: str = "s16le", rate: int = SAMPLE_RATE, channels: int = 1, mono: bool = False,
                realtime: bool = False, retry: int = 0, device_name: str | None = None):
    """The source ``name`` names: ``mic``, ``-`` (standard input) or anything FFmpeg opens."""
    if name == "mic":
        return MicSource(device_name, channels=channels, mono=mono)
    if name == "-":
        return StdinSource(fmt, rate, channels, mono=mono)
    return AVSource(name, mono=mono, realtime=realtime, retry=retry)
