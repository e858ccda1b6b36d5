"""Writing small media files for tests/test_media.py: sines, encoded audio, solid-colour videos."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest


def sine(freq: float, rate: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """float32 ``(frames, channels)``; channel c has frequency ``freq * (c + 1)``."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], 1).astype(
        np.float32
    )


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    """Hz of the largest FFT bin of a 1-D signal (Hann-windowed)."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * rate / len(wave))


def require_encoder(name: str) -> None:
    """Skip the calling test when this FFmpeg build cannot encode with ``name``."""
    try:
        av.codec.Codec(name, "w")
    except Exception:  # UnknownCodecError, or any other sign the encoder is absent
        pytest.skip(f"FFmpeg in this PyAV build has no {name!r} encoder")


_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def _add_audio(container, codec: str, rate: int, channels: int):
    return container.add_stream(codec, rate=rate, layout=_LAYOUTS[channels])


def _encode_audio(container, stream, wave: np.ndarray, rate: int) -> None:
    """Encode float32 ``(frames, channels)`` in chunks the encoder accepts."""
    channels = wave.shape[1]
    size = stream.codec_context.frame_size or 1024
    for start in range(0, len(wave), size):
        chunk = np.ascontiguousarray(wave[start : start + size].T)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=_LAYOUTS[channels])
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_audio_ffmpeg(path: Path, wave: np.ndarray, rate: int, codec: str, format: str | None = None) -> Path:
    """Encode float32 ``(frames, channels)`` with FFmpeg's ``codec`` into ``path``."""
    require_encoder(codec)
    with av.open(str(path), "w", format=format) as container:
        stream = _add_audio(container, codec, rate, wave.shape[1])
        _encode_audio(container, stream, wave, rate)
    return path


def grey_levels(count: int) -> list[int]:
    """Distinct grey values, far enough apart to survive lossy video coding."""
    step = min(12, 224 // max(count - 1, 1))
    return [16 + step * i for i in range(count)]


def write_video(
    path: Path,
    levels: list[int],
    fps: int = 10,
    codec: str = "mpeg4",
    audio_codec: str | None = "aac",
    audio_rate: int = 44100,
    audio_channels: int = 2,
    size: tuple[int, int] = (64, 48),
) -> Path:
    """A video of solid grey frames (one per level) and, optionally, a 440 Hz sound as long."""
    require_encoder(codec)
    if audio_codec:
        require_encoder(audio_codec)
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = _add_audio(container, audio_codec, audio_rate, audio_channels) if audio_codec else None
        for level in levels:
            picture = np.full((height, width, 3), level, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            wave = sine(440, audio_rate, len(levels) / fps, audio_channels)
            _encode_audio(container, audio, wave, audio_rate)
    return path
