"""Reading a stream's packets with PyAV the way ``ffmpeg`` itself does: past corrupt packets, up to a cut."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["decoded_packets"]


def decoded_packets(container, stream) -> Iterator[list]:
    """The decoded frames of each packet of ``stream`` in ``container``, one list per packet.

    A packet that fails to decode is skipped (its list is left out), as ffmpeg
    skips it; a container that breaks off (a truncated file) ends the
    iteration, so the caller keeps the frames decoded so far.
    """
    import av  # FFmpeg: imported when a file needs it (~0.1 s)

    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue  # a corrupt packet
            yield frames
    except av.FFmpegError:
        return  # the container breaks off
