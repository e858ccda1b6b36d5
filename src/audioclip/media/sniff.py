"""Which modality a file holds: by its extension, else by its first bytes."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

__all__ = ["AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "FileModality", "sniff_modality", "sniff_content"]

#: what a media file holds, as far as its name or first bytes tell
FileModality = Literal["audio", "image", "video"]

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .m4a .aac .aif .aiff .aifc .au .snd .caf"
    " .w64 .rf64 .wma .mka .ac3 .amr .mp2 .weba".split()
)
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm"
    " .tga .ico .avif".split()
)
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .3gp .flv .wmv .ogv".split()
)

_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A "}  # ISO-BMFF brands used for audio-only files
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"}


def sniff_modality(path: str | os.PathLike) -> FileModality | None:
    """``"audio"``, ``"image"``, ``"video"`` or None (unknown, or not a readable file).

    The extension decides when it is a known one (so an audio-only ``.mp4`` counts
    as video); otherwise the first bytes are matched against common signatures.
    Nothing is decoded, so a positive answer does not promise the file is intact.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    for modality, extensions in (
        ("audio", AUDIO_EXTENSIONS),
        ("image", IMAGE_EXTENSIONS),
        ("video", VIDEO_EXTENSIONS),
    ):
        if suffix in extensions:
            return modality
    return sniff_content(path)


def sniff_content(path: str | os.PathLike) -> FileModality | None:
    """Like :func:`sniff_modality` but from the first bytes only, whatever the name."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer; only
        # regular files are read
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # missing, a directory, unreadable
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 128)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _modality_of_bytes(head)


def _modality_of_bytes(head: bytes) -> FileModality | None:
    riff_kind = head[8:12] if head[:4] in (b"RIFF", b"RF64", b"BW64") else b""
    if riff_kind == b"WAVE":
        return "audio"
    if riff_kind == b"WEBP":
        return "image"
    if riff_kind == b"AVI ":
        return "video"
    if head[:4] == b"OggS":  # Ogg carries Vorbis/Opus/FLAC, or Theora video
        return "video" if b"\x80theora" in head else "audio"
    if head[:4] in (b"fLaC", b".snd", b"caff") or head[:3] == b"ID3":
        return "audio"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio"
    # MPEG audio / ADTS AAC frame sync: 11 set bits (JPEG's FF D8 does not match)
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "audio"
    if head[4:8] == b"ftyp":  # ISO base media (MP4, MOV, M4A, AVIF, HEIC)
        brand = head[8:12]
        if brand in _AUDIO_BRANDS:
            return "audio"
        return "image" if brand in _IMAGE_BRANDS else "video"
    if head[:4] == b"\x1a\x45\xdf\xa3" or head[:4] == b"\x00\x00\x01\xba":  # Matroska/WebM, MPEG-PS
        return "video"
    image_magic = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
    if head.startswith(image_magic) or (head[:2] == b"BM" and len(head) >= 26):
        return "image"
    return None
