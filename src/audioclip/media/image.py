"""Picture files -> float32 ``(3, S, S)``, CLIP-normalised, what the image head takes."""

from __future__ import annotations

import functools
import os
import re
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MediaError, check_file, one_line
from .limits import MediaLimits

__all__ = ["IMAGE_SIZE", "CLIP_MEAN", "CLIP_STD", "load_image", "to_rgb", "clip_preprocess"]

IMAGE_SIZE = 224  # px, CLIP RN50's input
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's per-channel RGB statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def load_image(path: str | os.PathLike, image_size: int | None = None, limits: MediaLimits | None = None, *,
               model=None) -> torch.Tensor:
    """Read a picture as float32 ``(3, image_size, image_size)``, CLIP-normalised.

    ``image_size``: the side in pixels; by default the ``image_size`` of
    ``model`` (the model the picture is for: ``AudioCLIP-tiny`` takes 64),
    else 224 (the paper's model).

    Any file Pillow reads (the first frame of an animation), in any mode, turned
    upright by its EXIF orientation and made RGB by :func:`to_rgb`, then
    preprocessed exactly as OpenAI CLIP does (:func:`clip_preprocess`).
    Anything unreadable raises ``MediaError``, and so does a picture whose
    header claims more pixels than ``limits.max_pixels`` (checked before its
    pixels are decoded).
    """
    image_size = input_size(image_size, model)
    path = check_file(path)
    limits = limits or MediaLimits()
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own bound; the limit below decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            problem = limits.check_pixels(*img.size)
            if problem:
                raise MediaError(path, problem)
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as e:
        raise MediaError(path, "not an image (or a format Pillow cannot read)") from e
    except Image.DecompressionBombError as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(pixels.group(1)):,} pixels)" if pixels else ""
        raise MediaError(path, f"image too large{size}, refused as a possible decompression bomb") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # what Pillow raises for broken data
        raise MediaError(path, f"truncated or corrupt image ({one_line(e)})") from e
    return clip_preprocess(rgb, image_size)


def input_size(image_size: int | None, model=None) -> int:
    """The picture size asked for: ``image_size`` if given (it must agree with ``model``'s), else the model's
    ``image_size`` (an AudioCLIP, or anything with that attribute), else :data:`IMAGE_SIZE`."""
    own = getattr(model, "image_size", None) if model is not None else None
    if model is not None and own is None:
        raise TypeError(f"model= has no image_size: expected an AudioCLIP, got {type(model).__name__}")
    if image_size is not None and own is not None and int(image_size) != int(own):
        raise ValueError(f"image_size={image_size} but the model takes {own}-pixel pictures")
    return int(image_size if image_size is not None else own if own is not None else IMAGE_SIZE)


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB version of ``img`` of any Pillow mode.

    Transparency is composited onto white. 16-bit and 32-bit grey are scaled to 8 bits
    by their range: ``I;16`` by 0..65535, ``I`` likewise when its values fit (16-bit
    data held as 32-bit), ``F`` as 0..1 when they fit; otherwise by the image's own
    min..max. CMYK and the rest use Pillow's conversion.
    """
    if img.mode in _HIGH_DEPTH_MODES:
        img = _to_8bit_grey(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        lo, hi = 0.0, 65535.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    scaled = np.zeros_like(values) if hi <= lo else (np.nan_to_num(values, nan=lo) - lo) / (hi - lo)
    return Image.fromarray(np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8), "L")


def clip_preprocess(img: Image.Image, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """OpenAI CLIP's eval preprocessing of an RGB image -> float32 ``(3, S, S)``.

    Shorter side resized to ``image_size`` (bicubic, antialiased), centre crop,
    scaled to [0, 1], normalised by ``CLIP_MEAN``/``CLIP_STD``: open_clip's transform.
    """
    return _transform(int(image_size))(img)


@functools.lru_cache(maxsize=8)
def _transform(image_size: int):
    from open_clip.transform import image_transform  # heavy import, only when needed

    return image_transform(
        image_size,
        is_train=False,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        resize_mode="shortest",
        interpolation="bicubic",
    )
