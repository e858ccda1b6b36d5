"""Reading real files into exactly what AudioCLIP's encoders take.

- :func:`load_audio`: sound (or a video's sound) -> float32 ``(channels, samples)`` in
  [-1, 1] at 44.1 kHz; :func:`split_windows` cuts it into fixed-length windows.
- :func:`load_image`: picture -> float32 ``(3, 224, 224)``, CLIP-normalised.
- :func:`load_video_frames`: video -> ``(k, 3, 224, 224)`` frames at equally spaced times.
- :func:`sniff_modality`: which of the three a file holds.

Every reader reports a bad file as one :class:`MediaError` (``"{path}: {reason}"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audioclip.util import lazy_exports

# Names are imported from their module on first use: what needs only file names and types
# (sniff, errors, limits, files) does not pay for torch, which the decoders import.
_EXPORTS = {
    **dict.fromkeys(("MAX_PEAK", "SAMPLE_RATE", "load_audio", "stream_audio"), "audio"),
    **dict.fromkeys(("MediaError", "special_file_kind"), "errors"),
    "MediaLimits": "limits",
    **dict.fromkeys(("CLIP_MEAN", "CLIP_STD", "IMAGE_SIZE", "clip_preprocess", "load_image", "to_rgb"), "image"),
    **dict.fromkeys(("AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "sniff_modality"), "sniff"),
    **dict.fromkeys(("frame_times", "load_video_frames"), "video"),
    **dict.fromkeys(("AudioWindow", "split_windows", "stream_windows"), "windows"),
}

if TYPE_CHECKING:
    from .audio import MAX_PEAK, SAMPLE_RATE, load_audio, stream_audio
    from .errors import MediaError, special_file_kind
    from .image import CLIP_MEAN, CLIP_STD, IMAGE_SIZE, clip_preprocess, load_image, to_rgb
    from .limits import MediaLimits
    from .sniff import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, sniff_modality
    from .video import frame_times, load_video_frames
    from .windows import AudioWindow, split_windows, stream_windows


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioWindow",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "MAX_PEAK",
    "MediaError",
    "MediaLimits",
    "SAMPLE_RATE",
    "VIDEO_EXTENSIONS",
    "clip_preprocess",
    "frame_times",
    "load_audio",
    "load_image",
    "load_video_frames",
    "sniff_modality",
    "special_file_kind",
    "split_windows",
    "stream_audio",
    "stream_windows",
    "to_rgb",
]
