"""Sound files -> float32 ``(channels, samples)`` in [-1, 1] at 44.1 kHz, what the audio head takes.

Decoding goes through libsndfile (via soundfile) for the formats it knows — WAV and
the other PCM containers, FLAC, Ogg Vorbis/Opus, MP3 — and through FFmpeg (via PyAV)
for everything else: the audio track of MP4/MOV/MKV/WebM, AAC/M4A, and any file
libsndfile rejects. Resampling is soxr's "VHQ" (28-bit precision, above float32's).

Memory is bounded in samples at both ends: a file is read in blocks sized so
that neither the block nor what it resamples to passes ``_BLOCK_SAMPLES``,
whatever its sample rate and channel count (a 10 Hz file grows 4410-fold on
its way to 44.1 kHz), and resampled piece by piece with soxr's streaming
resampler, which gives its one-shot result bit for bit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from .demux import decoded_packets
from .errors import MediaError, check_file
from .limits import MediaLimits
from .sniff import VIDEO_EXTENSIONS, sniff_content

__all__ = ["SAMPLE_RATE", "MAX_PEAK", "load_audio", "stream_audio"]

SAMPLE_RATE = 44100  # Hz, the rate AudioCLIP's audio head was trained at
MAX_PEAK = 2.0  # the model refuses input whose peak exceeds this (int16-scaled floats)

# Containers libsndfile cannot read: skip straight to FFmpeg instead of failing first.
_FFMPEG_ONLY = VIDEO_EXTENSIONS | {".m4a", ".aac", ".wma", ".mka", ".ac3", ".amr", ".weba"}
# Samples (frames x channels) per block as read and as resampled: 4 MiB of float32, 12 s
# of stereo at 44.1 kHz. Reads are sized by it, so that neither a lying header nor a low
# rate that resampling multiplies can make us allocate gigabytes.
_BLOCK_SAMPLES = 1 << 20
# Frames per read at most. Ordinary files (44.1/48/22.05 kHz, mono or stereo) keep this read
# size: libsndfile's MP3 decoding rounds differently (by ~1e-7) at other read sizes.
_MAX_READ_FRAMES = 1 << 18
# Largest upsampling ratio given to one soxr stream. soxr buffers several hundred input
# frames and releases their output at once, so at a ratio of 4410 (10 Hz -> 44.1 kHz) one
# call returns tens of megabytes however little it is fed; a larger ratio goes through a
# chain of streams of at most this ratio each. Ordinary rates (8 kHz and up) take one stream.
_MAX_STAGE_RATIO = 8.0
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count for a stream of unknown length (SF_COUNT_MAX)
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
    past the duration limit (a file that states no length is decoded, and
    refused where it crosses the limit). Memory is the result, twice over
    while its pieces are joined, and one block, whatever the file's rate.
    """
    if sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if max_duration is not None and not max_duration > 0:
        raise ValueError(f"max_duration must be positive seconds, got {max_duration!r}")
    sample_rate = int(sample_rate)
    path = check_file(path)
    limits = limits or MediaLimits()

    pieces = _decode(path, sample_rate, mono, max_duration, limits)
    if not pieces:
        raise MediaError(path, "contains no audio samples (empty, truncated or corrupt)")
    wave = np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
    del pieces
    if max_duration is not None:
        wave = wave[:, : round(max_duration * sample_rate)]
    if wave.shape[1] == 0:
        raise MediaError(path, f"too short to resample to {sample_rate} Hz")
    return torch.from_numpy(np.ascontiguousarray(wave))


def stream_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    mono: bool = False,
    limits: MediaLimits | None = None,
):
    """:func:`load_audio` block by block: float32 ``(channels, n)`` tensors, in order, at ``sample_rate``.

    The concatenated blocks equal :func:`load_audio`'s result bit for bit (both
    decode and resample alike; a file that libsndfile fails on part-way is
    refused here, where ``load_audio`` retries it with FFmpeg), while memory
    holds one block (about 4 MiB of samples at most, whatever the file's rate
    and channels) at a time, so an hour of audio costs what a minute does. Checks
    are made as blocks arrive: a NaN or an overshoot found late raises
    ``MediaError`` after earlier blocks were yielded, and the caller discards
    what it made of them.
    """
    if sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    path = check_file(path)
    limits = limits or MediaLimits()
    produced = 0
    for block in _resampled(path, _blocks(path, sample_rate, limits), sample_rate, mono):
        if block.shape[1]:
            produced += block.shape[1]
            yield torch.from_numpy(block)
    if produced == 0:
        raise MediaError(path, "contains no audio samples (empty, truncated or corrupt)")


def _resampled(path: Path, blocks, sample_rate: int, mono: bool):
    """Checked, resampled and clipped float32 ``(channels, n)`` blocks from raw ``(rate, (frames, channels))`` ones.

    Each raw block gives one or more pieces of at most about ``_BLOCK_SAMPLES``
    samples, some possibly empty (the resampler's delay), and the last raw block
    is followed by the resampler's tail; no raw block at all gives nothing.
    """
    chain = None
    for rate, block in blocks:
        if not np.isfinite(block).all():
            raise MediaError(path, "contains NaN or infinite samples")
        peak = float(np.abs(block).max()) if block.size else 0.0
        if peak > MAX_PEAK:
            raise MediaError(path, f"samples far outside [-1, 1] (peak {peak:.5g})")
        if mono and block.shape[1] > 1:
            block = block.mean(axis=1, keepdims=True, dtype=np.float32)
        if rate == sample_rate:
            yield _clipped(block)
            continue
        if chain is None:
            chain = _ResampleChain(rate, sample_rate, block.shape[1])
        for piece in chain.resample(block):
            yield _clipped(piece)
    if chain is not None:  # the filter's tail
        for piece in chain.resample(np.zeros((0, chain.channels), np.float32), last=True):
            yield _clipped(piece)


class _ResampleChain:
    """``rate`` -> ``sample_rate`` through soxr streams, in output pieces of about ``_BLOCK_SAMPLES`` at most.

    One stream where the rates are within ``_MAX_STAGE_RATIO`` of each other
    (every ordinary rate: the result is then soxr's one-shot result, bit for
    bit), else a chain: whole-number upsampling steps (so that lengths stay
    exact) and a last stream to ``sample_rate``, none of ratio above
    ``_MAX_STAGE_RATIO``. Each stream is fed slices small enough that what it
    returns stays near the bound.
    """

    def __init__(self, rate: int, sample_rate: int, channels: int):
        self.channels = channels
        ratio = sample_rate / rate
        rates = [rate, sample_rate]
        if ratio > _MAX_STAGE_RATIO:
            stages = math.ceil(math.log(ratio) / math.log(_MAX_STAGE_RATIO))
            step = math.ceil(ratio ** (1 / stages))  # <= _MAX_STAGE_RATIO, and the last ratio is at most this
            rates = [rate * step**i for i in range(stages)] + [sample_rate]
        self.stages = [
            (soxr.ResampleStream(a, b, channels, dtype="float32", quality="VHQ"), _block_frames(a, b, channels))
            for a, b in zip(rates, rates[1:])
        ]

    def resample(self, block: np.ndarray, last: bool = False, stage: int = 0):
        """float32 ``(n, channels)`` pieces at ``sample_rate`` of ``block`` (``last``: and the tail)."""
        stream, step = self.stages[stage]
        for start in range(0, max(len(block), 1), step):
            final = last and start + step >= len(block)
            out = stream.resample_chunk(np.ascontiguousarray(block[start : start + step]), last=final)
            if stage + 1 < len(self.stages):
                if len(out) or final:
                    yield from self.resample(out, final, stage + 1)
            else:
                yield out


def _block_frames(rate: float, sample_rate: float, channels: int) -> int:
    """Frames at ``rate`` such that neither they nor their resampling to ``sample_rate`` pass ``_BLOCK_SAMPLES``."""
    frames = _BLOCK_SAMPLES // max(1, channels)
    if sample_rate > rate:
        frames = int(frames * rate / sample_rate)
    return max(1, min(frames, _MAX_READ_FRAMES))


def _clipped(block: np.ndarray) -> np.ndarray:
    """float32 ``(frames, channels)`` -> a new float32 ``(channels, frames)``, clipped to [-1, 1]."""
    block = np.array(block.T, dtype=np.float32, order="C")
    np.clip(block, -1.0, 1.0, out=block)  # overshoot from the file (peak <= MAX_PEAK) or resampling
    return block


def _blocks(path: Path, sample_rate: int, limits: MediaLimits):
    """``(rate, (frames, channels))`` raw blocks by libsndfile, else (before any block) FFmpeg."""
    if path.suffix.lower() not in _FFMPEG_ONLY:
        blocks = _soundfile_blocks(path, sample_rate, None, limits)
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
    yield from _ffmpeg_blocks(path, sample_rate, None, limits)


def _decode(path: Path, sample_rate: int, mono: bool, max_duration: float | None,
            limits: MediaLimits) -> list[np.ndarray]:
    """:func:`_resampled`'s pieces of the file, by libsndfile, else (from the start) FFmpeg."""
    if path.suffix.lower() not in _FFMPEG_ONLY:
        try:
            pieces = list(_resampled(path, _soundfile_blocks(path, sample_rate, max_duration, limits),
                                     sample_rate, mono))
        except (soundfile.SoundFileError, RuntimeError):
            pass  # not a format libsndfile knows (or it broke on it): FFmpeg may do better
        else:
            if pieces:
                return pieces
    return list(_resampled(path, _ffmpeg_blocks(path, sample_rate, max_duration, limits), sample_rate, mono))


def _frame_limit(max_duration: float | None, rate: int) -> int | None:
    return None if max_duration is None else math.ceil((max_duration + _MARGIN) * rate)


def _soundfile_blocks(path: Path, sample_rate: int, max_duration: float | None, limits: MediaLimits):
    """``(rate, float32 (frames, channels))`` blocks by libsndfile, the header checked first."""
    with soundfile.SoundFile(os.fsencode(path)) as f:  # bytes: a name that is not UTF-8 opens too
        rate, channels = f.samplerate, f.channels
        # A FLAC or a stream written before its length was known states no length.
        frames = f.frames if f.seekable() and f.frames != _UNKNOWN_FRAMES else None
        problem = limits.check_audio(channels, rate, frames)
        if problem:
            raise MediaError(path, problem)
        limit = _frame_limit(max_duration, rate)
        bound = math.floor(limits.max_duration * rate)  # a header may lie about the length
        size = _block_frames(rate, sample_rate, channels)
        total = 0
        while limit is None or total < limit:
            want = size if limit is None else min(size, limit - total)
            # dtype float32 maps integer PCM to [-1, 1) and leaves float samples as stored
            block = f.read(want, dtype="float32", always_2d=True)
            if len(block) == 0:
                break
            total += len(block)
            if total > bound:
                raise MediaError(path, limits.too_long(total / rate, known=False))
            yield rate, block


def _ffmpeg_blocks(path: Path, sample_rate: int, max_duration: float | None, limits: MediaLimits):
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
        # Decode to interleaved float at the stream's own rate and layout; the resampler is
        # created at the first frame so that a mid-stream format change is converted.
        # Interleaved, not planar: PyAV counts the planes of a planar frame by reading
        # pointers until a null one, past the end for 8 or more channels (a crash).
        resampler = None
        chunks, pending, total, limit, rate, size = [], 0, 0, None, None, None
        try:
            for frames in decoded_packets(container, stream):
                for frame in frames:
                    if resampler is None:
                        rate = frame.sample_rate
                        problem = limits.check_audio(len(frame.layout.channels), rate, None)
                        if problem:  # the header said otherwise
                            raise MediaError(path, problem)
                        limit = _frame_limit(max_duration, rate)
                        size = _block_frames(rate, sample_rate, len(frame.layout.channels))
                        resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
                    for out in resampler.resample(frame):
                        chunks.append(_frames_first(out))
                        pending += out.samples
                        total += out.samples
                if rate and total > limits.max_duration * rate:
                    raise MediaError(path, limits.too_long(total / rate, known=False))
                if chunks and pending >= size:
                    yield rate, np.concatenate(chunks)
                    chunks, pending = [], 0
                if limit is not None and total >= limit:
                    break
        except av.FFmpegError:
            pass  # the resampler fails on what the container holds: keep what decoded so far
        if resampler is not None:
            chunks.extend(_frames_first(out) for out in resampler.resample(None))
        if chunks:
            yield rate, np.concatenate(chunks)


def _frames_first(frame) -> np.ndarray:
    """An interleaved float PyAV frame as float32 ``(frames, channels)``."""
    return frame.to_ndarray().reshape(frame.samples, -1)


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
