"""Video files -> CLIP-normalised frames ``(k, 3, S, S)`` taken at equally spaced times.

The paper describes a video by ten equally distant frames. Here frame ``i`` of ``N``
is the picture on screen at time ``start + (i + 0.5) * duration / N``, i = 0..N-1
(the midpoints of N equal slices of the clip), so a clip of exactly N frames gives
each of its frames once. "central" is ``i = N // 2`` (for N = 10 the sixth frame, at
55 % of the clip; for odd N the one exactly in the middle).
A video's sound is read with :func:`audioclip.media.load_audio`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .demux import decoded_packets
from .errors import MediaError, check_file
from .image import clip_preprocess, input_size
from .limits import MediaLimits

__all__ = ["load_video_frames", "frame_times"]

_WHICH = ("central", "all", "random")
_EPS = 1e-6  # s; a frame starting at a target time (up to float rounding) is the one shown


def load_video_frames(
    path: str | os.PathLike,
    num_frames: int = 10,
    which: str = "central",
    image_size: int | None = None,
    *,
    generator: torch.Generator | int | None = None,
    limits: MediaLimits | None = None,
    model=None,
) -> torch.Tensor:
    """Frames of a video as float32 ``(k, 3, image_size, image_size)``, CLIP-normalised.

    ``image_size`` defaults to ``model``'s (as in :func:`load_image`), else 224.

    ``which="central"`` gives the central one of the ``num_frames`` equally spaced
    frames (k = 1), ``"all"`` all of them in time order (k = num_frames), and
    ``"random"`` one of them picked with ``generator`` (a torch.Generator or an int
    seed; None uses torch's global generator), for training.
    The video is decoded from the start up to the last frame needed, which suits
    clips (seconds to minutes). Anything unreadable raises ``MediaError``;
    so does a video over ``limits`` (duration, frame count, pixels per frame:
    from the header before decoding, and while decoding).
    """
    image_size = input_size(image_size, model)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    num_frames = int(num_frames)
    if which == "central":
        chosen = [num_frames // 2]
    elif which == "all":
        chosen = list(range(num_frames))
    else:
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        chosen = [int(torch.randint(num_frames, (1,), generator=generator))]

    path = check_file(path)
    limits = limits or MediaLimits()
    start, duration = _time_span(path, limits)
    problem = limits.check_video(duration, None)
    if problem:
        raise MediaError(path, problem)
    times = frame_times(start, duration, num_frames)
    pictures = _pictures_at(path, [times[i] for i in chosen], limits)
    return torch.stack([clip_preprocess(picture, image_size) for picture in pictures])


def frame_times(start: float, duration: float, num_frames: int) -> list[float]:
    """Seconds at which the ``num_frames`` equally spaced frames are taken."""
    return [start + (i + 0.5) * duration / num_frames for i in range(num_frames)]


def _open(path: Path):
    import av  # FFmpeg: imported when a video is read

    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        reason = " ".join((getattr(e, "strerror", None) or str(e)).split())
        raise MediaError(path, f"not a readable video (FFmpeg: {reason})") from e
    stream = _video_stream(container)
    if stream is None:
        what = "audio only" if container.streams.audio else "no picture streams"
        container.close()
        raise MediaError(path, f"has no video stream ({what})")
    return container, stream


def _video_stream(container):
    import av  # FFmpeg: imported when a video is read

    # Cover art in music files is a one-picture "video" stream; it is not a video.
    attached_pic = getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0)
    for stream in container.streams.video:
        if not (attached_pic and stream.disposition & attached_pic):
            return stream
    return None


def _check_header(path: Path, container, stream, limits: MediaLimits) -> None:
    import av

    problem = limits.check_pixels(stream.codec_context.width or 0, stream.codec_context.height or 0,
                                  "video frames")
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    problem = problem or limits.check_video(seconds, stream.frames or None)
    if problem:
        raise MediaError(path, problem)


def _time_span(path: Path, limits: MediaLimits) -> tuple[float, float]:
    """(start, duration) of the video stream in seconds.

    From the stream's header, else the container's, else (streamed WebM and the
    like carry neither) by reading every packet's timestamp, which decodes nothing;
    a raw stream without timestamps counts packets at its nominal frame rate.
    """
    import av  # FFmpeg: imported when a video is read

    container, stream = _open(path)
    with container:
        _check_header(path, container, stream, limits)
        if stream.duration and stream.time_base:
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            return start, float(stream.duration * stream.time_base)
        if container.duration:
            start = container.start_time / av.time_base if container.start_time is not None else 0.0
            return start, container.duration / av.time_base
        first, last, count = None, None, 0
        try:
            for packet in container.demux(stream):
                count += packet.size > 0  # the last packet is an empty flush marker
                if count > limits.max_video_frames:
                    raise MediaError(path, limits.check_video(None, count))
                if packet.pts is None:
                    continue
                begin = float(packet.pts * stream.time_base)
                end = float((packet.pts + (packet.duration or 0)) * stream.time_base)
                first = begin if first is None else min(first, begin)
                last = end if last is None else max(last, end)
        except av.FFmpegError:
            pass  # truncated: the packets so far bound the span
        if first is None:
            return 0.0, count / _frame_rate(stream)
    return first, last - first


def _frame_rate(stream) -> float:
    """Frames per second as the header states it (FFmpeg guesses 25 when it cannot tell)."""
    return float(stream.average_rate or stream.guessed_rate or 25)


def _pictures_at(path: Path, times: list[float], limits: MediaLimits):
    """RGB PIL images on screen at each of ``times`` (ascending seconds).

    The picture on screen at t is the last frame starting at or before t (the first
    frame for t before it, the last frame for t after the end); a frame starting
    exactly at t counts, so that ties on frame boundaries go one way.
    """
    import av  # FFmpeg: imported when a video is read

    container, stream = _open(path)
    stream.thread_type = "AUTO"
    pictures: list = []
    previous = None  # [frame, its PIL image once converted]
    decoded = 0
    with container:
        try:
            for frames in decoded_packets(container, stream):
                for frame in frames:
                    if decoded >= limits.max_video_frames:
                        raise MediaError(path, limits.check_video(None, decoded + 1))
                    # raw streams have no timestamps: count frames at the nominal rate
                    t = frame.time if frame.time is not None else decoded / _frame_rate(stream)
                    current, decoded = [frame, None], decoded + 1
                    while len(pictures) < len(times) and t > times[len(pictures)] + _EPS:
                        pictures.append(_picture(previous or current))
                    if len(pictures) == len(times):
                        return pictures
                    previous = current
        except av.FFmpegError:
            pass  # a frame fails to convert: use the frames so far
    if previous is None:
        raise MediaError(path, "no decodable video frames")
    while len(pictures) < len(times):
        pictures.append(_picture(previous))
    return pictures


def _picture(entry: list):
    # Convert a frame once even when several times pick it (clips with few frames).
    if entry[1] is None:
        entry[1] = entry[0].to_image()
    return entry[1]
