"""How a dataset's audio becomes model input at evaluation time.

The published checkpoints were trained (and the paper's numbers measured) with
the original code's per-dataset loaders, so evaluation applies the same input
conventions by default (``"original"``):

- **ESC-50**: decoded at 44.1 kHz, mono, the file's own amplitude (the original
  multiplied by 32768, which is this package's [-1, 1] scale as is), centre
  crop / pad to 220500 samples (5 s; every ESC-50 clip has exactly that length).
- **UrbanSound8K**: resampled to 44.1 kHz, a mono slice repeated into two
  channels (the original loader ran with ``mono=False``), cut to its first 4 s,
  then min-max rescaled so that its minimum and maximum reach the ends of the
  16-bit range (here: -1 and 32767/32768), and centre padded to 176400 samples.
- Both: padding repeats the first / last sample value (averaged over
  channels), and a centre crop that is quieter than half the clip's standard
  deviation is replaced by the clip's head (or tail), as the original's
  evaluation transforms did. Neither ever happens to an ESC-50 clip.

``"consistent"`` uses this package's default training conventions instead
(mono, the file's own amplitude, zero padding, plain centre crop) with the same
lengths. AudioSet has no published loader in the original code; both presets
use mono, raw amplitude and a 10 s centre crop / zero pad there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from ..data import apply_conventions

__all__ = ["CONVENTION_SETS", "AudioConventions", "conventions_for", "fit_length"]

CONVENTION_SETS = ("original", "consistent")
SAMPLE_RATE = 44100


@dataclass(frozen=True)
class AudioConventions:
    """Decoding and shaping of evaluation audio. ``length`` in samples (``None``: as decoded)."""

    name: str
    dataset: str
    sample_rate: int = SAMPLE_RATE
    channels: str = "mono"  # mono | stereo | keep (see audioclip.data.apply_conventions)
    amplitude: str = "raw"  # raw | minmax
    max_duration: float | None = None  # seconds kept before amplitude scaling
    length: int | None = None
    pad: str = "zeros"  # zeros | edge
    quiet_swap: bool = False
    source: str = ""

    def apply(self, wave: torch.Tensor) -> torch.Tensor:
        """Decoded ``(channels, samples)`` float audio at ``sample_rate`` -> model input."""
        if self.max_duration is not None:
            wave = wave[..., : round(self.max_duration * self.sample_rate)]
        wave = apply_conventions(wave, channels=self.channels, amplitude=self.amplitude)
        if self.length is not None:
            wave = fit_length(wave, self.length, pad=self.pad, quiet_swap=self.quiet_swap)
        return wave.contiguous()

    def identity(self) -> str:
        """A short hash of everything that changes the model input (for embedding caches)."""
        fields = asdict(self)
        fields.pop("source")
        fields.pop("name")
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        parts = [
            f"{self.sample_rate} Hz",
            {"mono": "mono", "stereo": "two channels (mono repeated)", "keep": "channels as decoded"}[self.channels],
            "min-max scaled to the 16-bit range" if self.amplitude == "minmax" else "file amplitude in [-1, 1]",
        ]
        if self.max_duration is not None:
            parts.append(f"first {self.max_duration:g} s")
        if self.length is not None:
            how = "edge-value" if self.pad == "edge" else "zero"
            parts.append(f"centre crop / {how} pad to {self.length} samples ({self.length / self.sample_rate:g} s)")
        if self.quiet_swap:
            parts.append("quiet-crop swap")
        text = f"{self.name} ({', '.join(parts)})"
        return f"{text}; {self.source}" if self.source else text


_ORIGINAL = {
    "esc50": AudioConventions(
        "original", "esc50", channels="mono", amplitude="raw", length=220500, pad="edge", quiet_swap=True,
        source="as the original ESC-50 loader and evaluation transforms, which the published checkpoints saw",
    ),
    "us8k": AudioConventions(
        "original", "us8k", channels="stereo", amplitude="minmax", max_duration=4.0, length=176400, pad="edge",
        quiet_swap=True,
        source="as the original UrbanSound8K loader (mono=False) and evaluation transforms, which the "
        "published checkpoints saw",
    ),
    "audioset": AudioConventions(
        "original", "audioset", channels="mono", amplitude="raw", length=441000, pad="zeros",
        source="the original code publishes no AudioSet loader: 10 s clips, mono, raw amplitude (our choice)",
    ),
    "folder": AudioConventions(
        "original", "folder", channels="mono", amplitude="raw", length=None,
        source="custom data: mono, raw amplitude, whole clips (batched by length)",
    ),
}


def conventions_for(dataset: str, name: str = "original", length: int | None = None,
                    pad: str | None = None) -> AudioConventions:
    """The ``name`` convention set (``"original"`` or ``"consistent"``) for ``dataset``.

    ``length`` (samples) overrides the crop / pad length, ``pad`` (``"zeros"`` or
    ``"edge"``) the padding.
    """
    if name not in CONVENTION_SETS:
        raise ValueError(f"conventions must be one of {', '.join(CONVENTION_SETS)}, got {name!r}")
    base = _ORIGINAL.get(dataset, _ORIGINAL["folder"])
    if dataset not in _ORIGINAL:
        base = replace(base, dataset=dataset)
    if name == "consistent":
        base = replace(
            base, name="consistent", channels="mono", amplitude="raw", max_duration=None, pad="zeros",
            quiet_swap=False, source="this package's default conventions (not those the published weights saw)",
        )
    if length is not None:
        if length < 1:
            raise ValueError(f"audio length must be positive, got {length}")
        base = replace(base, length=int(length))
    if pad is not None:
        if pad not in ("zeros", "edge"):
            raise ValueError(f"pad must be 'zeros' or 'edge', got {pad!r}")
        base = replace(base, pad=pad)
    return base


def fit_length(wave: torch.Tensor, length: int, pad: str = "zeros", quiet_swap: bool = False) -> torch.Tensor:
    """Centre crop or centre pad ``(channels, samples)`` to exactly ``length`` samples.

    ``pad="edge"`` pads with the first / last sample (averaged over channels), as
    the original did. ``quiet_swap`` reproduces the original's crop: a centre
    crop whose standard deviation is below half the clip's is replaced by the
    clip's head, or by its tail when the head is quieter still than half the
    clip's but louder than the centre.
    """
    n = wave.shape[-1]
    if n > length:
        start = int(round(0.5 * (n - length)))
        out = wave[..., start : start + length]
        if quiet_swap:
            threshold = 0.5 * wave.float().std()
            crop_std = out.float().std()
            if crop_std < threshold:
                out = wave[..., :length]
                head_std = out.float().std()
                if threshold > head_std > crop_std:
                    out = wave[..., -length:]
        return out
    if n < length:
        left = int(round(0.5 * (length - n)))
        right = length - n - left
        if pad == "zeros":
            return F.pad(wave, (left, right))
        if pad != "edge":
            raise ValueError(f"pad must be 'zeros' or 'edge', got {pad!r}")
        head = wave[..., :1].mean().expand(*wave.shape[:-1], left)
        tail = wave[..., -1:].mean().expand(*wave.shape[:-1], right)
        return torch.cat([head, wave, tail], dim=-1)
    return wave
