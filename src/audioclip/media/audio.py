"""Sound files -> float32 ``(channels, samples)`` in [-1, 1] at 44.1 kHz, what the audio head takes.

Decoding goes through libsndfile (via soundfile) for the formats it knows — WAV and
the other PCM containers, FLAC, Ogg Vorbis/Opus, MP3 — and through FFmpeg (via PyAV)
for everything else: the audio track of MP4/MOV/MKV/WebM, AAC/M4A, and any file
libsndfile rejects. Resampling is soxr's "VHQ" (28-bit precision, above float32's).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from .errors import MediaError, check_file
from .limits import MediaLimits
from .sniff import VIDEO_EXTENSIONS, sniff_content

__all__ = ["SAMPLE_RATE", "MAX_PEAK", "load_audio", "stream_audio"]

SAMPLE_RATE = 44100  # Hz, the rate AudioCLIP's audio head was trained at
MAX_PEAK = 2.0  # the model refuses input whose peak exceeds this (int16-scaled floats)

# Containers libsndfile cannot read: skip straight to FFmpeg instead of failing first.
_FFMPEG_ONLY = VIDEO_EXTENSIONS | {".m4a", ".aac", ".wma", ".mka", ".ac3", ".amr", ".weba"}
_BLOCK = 1 << 18  # frames per read, so a lying header cannot make us allocate gigabytes
_MARGIN = 0.1  # s decoded past max_duration, so resampling near the cut sees real signal


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    mono: bool = False,
    max_duration: float | None = None,
    limits: MediaLimits | None = None,
) -> torch.Tensor:
    """Read a sound file (or a video's audio track) as float32 ``(channels, samples)``.

    Every channel is kept unless ``mono=True``, which averages them into one.
    ``max_duration`` (seconds) stops decoding after that much audio; the result then
    has at most ``round(max_duration * sample_rate)`` samples.

    Integer PCM maps to [-1, 1) by dividing by 2^(bits-1). Float files may overshoot:
    a peak up to ``MAX_PEAK`` (2.0) is clipped to [-1, 1], a larger one is refused, as
    it almost always means int-scaled samples stored as float. A truncated file
    returns whatever prefix still decodes. Anything unreadable raises ``MediaError``.

    ``limits`` (default :class:`MediaLimits`) bounds the work: a header over a
    limit (channels, sample rate, duration) is refused before anything is
    decoded, and decoding stops with a refusal where a lying header would run
    past the duration limit.
    """
    if sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if max_duration is not None and not max_duration > 0:
        raise ValueError(f"max_duration must be positive seconds, got {max_duration!r}")
    sample_rate = int(sample_rate)
    path = check_file(path)
    limits = limits or MediaLimits()

    wave, rate = _decode(path, max_duration, limits)  # float32 (frames, channels) at the file's rate
    if wave.shape[0] == 0:
        raise MediaError(path, "contains no audio samples (empty, truncated or corrupt)")
    if not np.isfinite(wave).all():
        raise MediaError(path, "contains NaN or infinite samples")
    peak = float(np.abs(wave).max())
    if peak > MAX_PEAK:
        raise MediaError(path, f"samples far outside [-1, 1] (peak {peak:.5g})")

    if mono and wave.shape[1] > 1:
        wave = wave.mean(axis=1, keepdims=True, dtype=np.float32)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="VHQ")
    if max_duration is not None:
        wave = wave[: round(max_duration * sample_rate)]
    if wave.shape[0] == 0:
        raise MediaError(path, f"too short to resample to {sample_rate} Hz")
    # Overshoot from the file itself (peak <= MAX_PEAK) or from resampling ringing.
    np.clip(wave, -1.0, 1.0, out=wave)
    return torch.from_numpy(np.ascontiguousarray(wave.T))


def stream_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    mono: bool = False,
    limits: MediaLimits | None = None,
):
    """:func:`load_audio` block by block: float32 ``(channels, n)`` tensors, in order, at ``sample_rate``.

    The concatenated blocks equal :func:`load_audio`'s result bit for bit (soxr's
    streaming resampler gives the one-shot result; a file that libsndfile fails
    on part-way is refused here, where ``load_audio`` retries it with FFmpeg),
    while memory holds one block
    (about 6 s) at a time, so an hour of audio costs what a minute does. Checks
    are made as blocks arrive: a NaN or an overshoot found late raises
    ``MediaError`` after earlier blocks were yielded, and the caller discards
    what it made of them.
    """
    if sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    path = check_file(path)
    limits = limits or MediaLimits()
    resampler, produced, channels = None, 0, 1
    for rate, block in _blocks(path, limits):
        if not np.isfinite(block).all():
            raise MediaError(path, "contains NaN or infinite samples")
        peak = float(np.abs(block).max()) if block.size else 0.0
        if peak > MAX_PEAK:
            raise MediaError(path, f"samples far outside [-1, 1] (peak {peak:.5g})")
        if mono and block.shape[1] > 1:
            block = block.mean(axis=1, keepdims=True, dtype=np.float32)
        channels = block.shape[1]
        if rate != sample_rate:
            if resampler is None:
                resampler = soxr.ResampleStream(rate, sample_rate, block.shape[1], dtype="float32", quality="VHQ")
            block = resampler.resample_chunk(np.ascontiguousarray(block))
        if len(block):
            produced += len(block)
            yield _clipped(block)
    if resampler is not None:  # the filter's tail
        tail = resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True)
        if len(tail):
            produced += len(tail)
            yield _clipped(tail)
    if produced == 0:
        raise MediaError(path, "contains no audio samples (empty, truncated or corrupt)")


def _clipped(block: np.ndarray) -> torch.Tensor:
    block = np.array(block, dtype=np.float32, copy=True)
    np.clip(block, -1.0, 1.0, out=block)  # overshoot from the file (peak <= MAX_PEAK) or resampling
    return torch.from_numpy(np.ascontiguousarray(block.T))


def _blocks(path: Path, limits: MediaLimits):
    """``(rate, (frames, channels))`` raw blocks by libsndfile, else (before any block) FFmpeg."""
    if path.suffix.lower() not in _FFMPEG_ONLY:
        blocks = _soundfile_blocks(path, None, limits)
        try:
            first = next(blocks)
        except StopIteration:
            first = None
        except (soundfile.SoundFileError, RuntimeError):
            first = None  # not a format libsndfile knows: FFmpeg may do better
        if first is not None:
            yield first
            try:
                yield from blocks
            except (soundfile.SoundFileError, RuntimeError) as e:
                # load_audio would retry the whole file with FFmpeg; a stream cannot go back
                raise MediaError(path, f"decoding broke off ({type(e).__name__}: {e})") from e
            return
    yield from _ffmpeg_blocks(path, None, limits)


def _decode(path: Path, max_duration: float | None, limits: MediaLimits) -> tuple[np.ndarray, int]:
    """float32 ``(frames, channels)`` and the sample rate, by libsndfile, else FFmpeg."""
    if path.suffix.lower() not in _FFMPEG_ONLY:
        try:
            wave, rate = _read_soundfile(path, max_duration, limits)
        except (soundfile.SoundFileError, RuntimeError):
            pass  # not a format libsndfile knows (or it broke on it): FFmpeg may do better
        else:
            if wave.shape[0] > 0:
                return wave, rate
    return _read_ffmpeg(path, max_duration, limits)


def _frame_limit(max_duration: float | None, rate: int) -> int | None:
    return None if max_duration is None else math.ceil((max_duration + _MARGIN) * rate)


def _read_soundfile(path: Path, max_duration: float | None, limits: MediaLimits) -> tuple[np.ndarray, int]:
    blocks, rate = [], None
    for rate, block in _soundfile_blocks(path, max_duration, limits):
        blocks.append(block)
    if not blocks:
        return np.zeros((0, 1), np.float32), rate or SAMPLE_RATE
    return np.concatenate(blocks), rate


def _soundfile_blocks(path: Path, max_duration: float | None, limits: MediaLimits):
    """``(rate, float32 (frames, channels))`` blocks by libsndfile, the header checked first."""
    with soundfile.SoundFile(path) as f:
        rate, channels = f.samplerate, f.channels
        problem = limits.check_audio(channels, rate, f.frames if f.seekable() else None)
        if problem:
            raise MediaError(path, problem)
        limit = _frame_limit(max_duration, rate)
        bound = math.floor(limits.max_duration * rate)  # a header may lie about the length
        total = 0
        while limit is None or total < limit:
            if total > bound:
                raise MediaError(path, limits.too_long(total / rate))
            want = _BLOCK if limit is None else min(_BLOCK, limit - total)
            # dtype float32 maps integer PCM to [-1, 1) and leaves float samples as stored
            block = f.read(want, dtype="float32", always_2d=True)
            if len(block) == 0:
                break
            total += len(block)
            yield rate, block


def _read_ffmpeg(path: Path, max_duration: float | None, limits: MediaLimits) -> tuple[np.ndarray, int]:
    blocks, rate = [], None
    for rate, block in _ffmpeg_blocks(path, max_duration, limits):
        blocks.append(block)
    if not blocks:  # load_audio reports this; the shape only has to say "no frames"
        return np.zeros((0, 1), np.float32), rate or SAMPLE_RATE
    return np.ascontiguousarray(np.concatenate(blocks)), rate


def _ffmpeg_blocks(path: Path, max_duration: float | None, limits: MediaLimits):
    """``(rate, float32 (frames, channels))`` blocks by FFmpeg (PyAV), the header checked first."""
    import av  # FFmpeg: imported when a file needs it (~0.1 s)

    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise MediaError(path, f"not a readable audio file ({_ffmpeg_reason(e)})") from e
    with container:
        stream = _best_audio_stream(container)
        if stream is None:
            if sniff_content(path) == "image":
                raise MediaError(path, "is an image, not audio")
            if container.streams.audio:  # e.g. garbage that FFmpeg guessed a format for
                raise MediaError(path, "not a readable audio file (no decodable audio stream)")
            if container.streams.video:
                raise MediaError(path, "has no audio stream (video only)")
            if not container.streams:
                raise MediaError(path, "not a readable audio file (FFmpeg finds no streams in it)")
            raise MediaError(path, "has no audio stream")
        problem = limits.check_audio(*_stream_header(container, stream))
        if problem:
            raise MediaError(path, problem)
        # Decode to planar float at the stream's own rate and layout; the resampler is
        # created at the first frame so that a mid-stream format change is converted.
        resampler = None
        chunks, total, limit, rate = [], 0, None, None
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    continue  # a corrupt packet: skip it, as ffmpeg itself does
                for frame in frames:
                    if resampler is None:
                        rate = frame.sample_rate
                        problem = limits.check_audio(len(frame.layout.channels), rate, None)
                        if problem:  # the header said otherwise
                            raise MediaError(path, problem)
                        limit = _frame_limit(max_duration, rate)
                        resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray())
                        total += out.samples
                if sum(c.shape[1] for c in chunks) >= _BLOCK:
                    yield rate, _frames_first(chunks)
                    chunks = []
                if limit is not None and total >= limit:
                    break
                if rate and total > limits.max_duration * rate:
                    raise MediaError(path, limits.too_long(total / rate))
        except av.FFmpegError:
            pass  # the container breaks off (truncated): keep what decoded so far
        if resampler is not None:
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
        if chunks:
            yield rate, _frames_first(chunks)


def _frames_first(chunks: list[np.ndarray]) -> np.ndarray:
    """PyAV's planar ``(channels, n)`` pieces as one float32 ``(frames, channels)`` block."""
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False).T


def _stream_header(container, stream) -> tuple[int, float, int | None]:
    """(channels, sample rate, frames or None) of an audio stream as its header states them."""
    import av

    context = stream.codec_context
    channels = getattr(context, "channels", None) or len(getattr(getattr(context, "layout", None), "channels", ()))
    rate = float(stream.sample_rate or getattr(context, "sample_rate", 0) or 0)
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    frames = None if seconds is None or not rate else int(seconds * rate)
    return int(channels or 0), rate, frames


def _best_audio_stream(container):
    """FFmpeg's pick of the audio streams (None if none has a usable rate and layout)."""
    if not container.streams.audio:
        return None
    try:
        return container.streams.best("audio")
    except AttributeError:  # PyAV before 13
        return container.streams.audio[0]


def _ffmpeg_reason(error: av.FFmpegError) -> str:
    # FFmpeg's message repeats the path; strerror is the reason alone.
    reason = getattr(error, "strerror", None) or str(error)
    return "FFmpeg: " + " ".join(reason.split())
