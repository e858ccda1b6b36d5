"""How much work one input may cost: limits read from a file's header before any sample is decoded.

Files fed to the package come from the internet, other people's drives and
uploads. A header can claim 1000 channels, a 169-megapixel picture or a day of
video in a few hundred kilobytes; decoding what it claims would take the
machine down. Every reader checks the header against a :class:`MediaLimits`
first and refuses a file over a limit with one :class:`MediaError` naming the
limit, and stops decoding where a lying header would have it go on.

The defaults are far above what real files of this package's kind hold
(recordings, sound effects, photos, clips); raise them when yours are larger
(``DecodeOptions(limits=MediaLimits(max_duration=...))``, or the command
line's ``--max-duration``, ``--max-channels``, ``--max-sample-rate``,
``--max-pixels``, ``--max-video-frames``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MediaLimits"]


@dataclass(frozen=True)
class MediaLimits:
    """Per-file limits; a file over any of them is refused before it is decoded."""

    max_duration: float = 24 * 3600.0  # s of audio or video (a day)
    max_channels: int = 64  # audio channels (7.1.4 is 12, third-order Ambisonics 16)
    max_sample_rate: int = 768_000  # Hz (DXD and the fastest converters reach 768 kHz)
    max_pixels: int = 128_000_000  # pixels of a picture or of one video frame (above 100 MP cameras)
    max_video_frames: int = 5_000_000  # frames a video may hold (a day at 50 fps is 4.3 M)

    def __post_init__(self) -> None:
        for name in ("max_duration", "max_channels", "max_sample_rate", "max_pixels", "max_video_frames"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"MediaLimits.{name} must be positive, got {value!r}")

    def check_audio(self, channels: int, sample_rate: float, frames: int | None) -> str | None:
        """The reason to refuse audio with this header, or ``None``. ``frames`` may be unknown."""
        if channels > self.max_channels:
            return f"has {channels} audio channels, over the limit of {self.max_channels} (--max-channels)"
        if sample_rate > self.max_sample_rate:
            return (f"has a sample rate of {sample_rate:g} Hz, over the limit of {self.max_sample_rate} Hz "
                    "(--max-sample-rate)")
        if frames is not None and sample_rate > 0 and frames / sample_rate > self.max_duration:
            return self.too_long(frames / sample_rate)
        return None

    def too_long(self, seconds: float, known: bool = True) -> str:
        """Why audio lasting ``seconds`` is refused; ``known=False``: decoding reached that far and went on."""
        if not known:  # the header stated no length, or a wrong one
            return f"lasts longer than the limit of {_duration(self.max_duration)} (--max-duration)"
        return f"lasts {_duration(seconds)}, over the limit of {_duration(self.max_duration)} (--max-duration)"

    def check_pixels(self, width: int, height: int, what: str = "image") -> str | None:
        if width * height > self.max_pixels:
            return (f"{what} of {width} x {height} = {width * height:,} pixels, over the limit of "
                    f"{self.max_pixels:,} (--max-pixels)")
        return None

    def check_video(self, duration: float | None, frames: int | None) -> str | None:
        if duration is not None and duration > self.max_duration:
            return self.too_long(duration)
        if frames is not None and frames > self.max_video_frames:
            return f"has {frames:,} video frames, over the limit of {self.max_video_frames:,} (--max-video-frames)"
        return None


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.4g} h"
    if seconds >= 60:
        return f"{seconds / 60:.4g} min"
    return f"{seconds:.4g} s"
