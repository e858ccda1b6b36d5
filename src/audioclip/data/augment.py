"""The paper's audio augmentations (section 4.2), seeded per sample.

Training applies, in this order:

1. time inversion: reverse the clip along time with probability ``p`` (0.5);
2. time scaling: resample by a factor ``max_scale ** u``, ``u ~ U(-1, 1)`` (so
   between 1/1.5 and 1.5, log-uniformly), which stretches or squeezes duration
   and pitch together (an antialiased linear interpolation);
3. crop or pad to ``length`` samples (the longest clip of the dataset before
   augmentation) at a uniformly random offset;
4. additive white Gaussian noise with probability ``p`` (0.25), at an SNR drawn
   uniformly from [10, 120] dB against the clip's own mean power.

Evaluation only centre-crops or centre-pads to ``length``.

Every draw comes from a ``torch.Generator`` that the caller passes in;
:func:`sample_generator` derives one from (seed, epoch, sample), so an epoch's
augmentations do not depend on the number of workers, processes or on
resuming. Differences from the original code, by default: the inversion flips
time (the original flipped the channel axis of a single clip, a no-op on mono
audio), padding is with zeros, the SNR range is exactly [10, 120] dB, and a
crop is never swapped for the clip's head or tail when it is quiet
(``quiet_swap=True`` restores that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AudioAugment",
    "CropPad",
    "GaussianNoise",
    "TimeFlip",
    "TimeScale",
    "sample_generator",
]


def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator seeded from ``(seed, *keys)`` through NumPy's SeedSequence (well mixed)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in keys]])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


@dataclass
class TimeFlip:
    """Reverse along time (the last axis) with probability ``p``."""

    p: float = 0.5

    def __call__(self, wave: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return wave.flip(-1) if _uniform(g) < self.p else wave


@dataclass
class TimeScale:
    """Resample by ``max_scale ** u``, ``u ~ U(-1, 1)``: duration and pitch change together."""

    max_scale: float = 1.5

    def factor(self, g: torch.Generator) -> float:
        return self.max_scale ** (2.0 * _uniform(g) - 1.0)

    def __call__(self, wave: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        factor = self.factor(g)
        return resample_by(wave, factor)


def resample_by(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """``(channels, samples)`` -> ``(channels, round(samples * factor))`` by antialiased linear interpolation."""
    length = max(1, round(wave.shape[-1] * factor))
    if length == wave.shape[-1]:
        return wave
    x = wave.reshape(1, -1, 1, wave.shape[-1]).float()
    y = F.interpolate(x, size=(1, length), mode="bilinear", align_corners=False, antialias=True)
    return y.reshape(*wave.shape[:-1], length).to(wave.dtype)


@dataclass
class CropPad:
    """Crop or pad to exactly ``length`` samples: at a random offset in training, centred otherwise.

    ``pad="zeros"`` pads with silence, ``"edge"`` with the first / last sample
    (the original's choice). ``quiet_swap=True`` reproduces the original's
    crop, which replaced a crop quieter than half the clip's standard deviation
    by the clip's head (or tail).
    """

    length: int
    train: bool = True
    pad: str = "zeros"
    quiet_swap: bool = False

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"crop length must be positive, got {self.length}")
        if self.pad not in ("zeros", "edge"):
            raise ValueError(f"pad must be 'zeros' or 'edge', got {self.pad!r}")

    def offset(self, slack: int, g: torch.Generator | None) -> int:
        if self.train and g is not None:
            return int(torch.randint(slack + 1, (), generator=g))
        return int(round(0.5 * slack))

    def __call__(self, wave: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n = wave.shape[-1]
        if n > self.length:
            start = self.offset(n - self.length, g)
            out = wave[..., start : start + self.length]
            if self.quiet_swap and self.train:
                out = _quiet_swap(wave, out, self.length)
            return out
        if n < self.length:
            left = self.offset(self.length - n, g)
            right = self.length - n - left
            if self.pad == "zeros":
                return F.pad(wave, (left, right))
            head = wave[..., :1].mean().expand(*wave.shape[:-1], left)
            tail = wave[..., -1:].mean().expand(*wave.shape[:-1], right)
            return torch.cat([head, wave, tail], dim=-1)
        return wave


def _quiet_swap(wave: torch.Tensor, crop: torch.Tensor, length: int) -> torch.Tensor:
    threshold = 0.5 * wave.float().std()
    crop_std = crop.float().std()
    if crop_std >= threshold:
        return crop
    head = wave[..., :length]
    head_std = head.float().std()
    if threshold > head_std > crop_std:
        return wave[..., -length:]
    return head


@dataclass
class GaussianNoise:
    """With probability ``p``, add white Gaussian noise at an SNR ~ U[snr_min, snr_max] dB.

    The SNR is against the clip's mean power over all channels; a silent clip
    is left as is.
    """

    p: float = 0.25
    snr_min: float = 10.0
    snr_max: float = 120.0

    def __call__(self, wave: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        apply = _uniform(g) < self.p
        snr = self.snr_min + (self.snr_max - self.snr_min) * _uniform(g)
        if not apply:
            return wave
        power = float(wave.double().square().mean())
        if power <= 0.0:
            return wave
        std = math.sqrt(power / 10.0 ** (snr / 10.0))
        noise = torch.randn(wave.shape, generator=g, dtype=torch.float32)
        return wave + (std * noise).to(wave.dtype)


class AudioAugment:
    """The training or evaluation chain for clips cropped or padded to ``length`` samples.

    ``config`` keys (all optional; ``None`` or ``p: 0`` turns a step off)::

        time_flip: {p: 0.5}
        time_scale: {max_scale: 1.5}
        crop: {pad: zeros, quiet_swap: false}
        noise: {p: 0.25, snr_min: 10, snr_max: 120}
    """

    def __init__(self, length: int, train: bool, config: dict | None = None):
        config = config or {}
        self.train = train
        crop = dict(config.get("crop") or {})
        self.crop = CropPad(length, train=train, **crop)
        self.steps: list = []
        if train:
            flip = config.get("time_flip", {"p": 0.5})
            if flip and flip.get("p", 0.5) > 0:
                self.steps.append(TimeFlip(**flip))
            scale = config.get("time_scale", {"max_scale": 1.5})
            if scale and scale.get("max_scale", 1.5) > 1.0:
                self.steps.append(TimeScale(**scale))
        self.noise = None
        if train:
            noise = config.get("noise", {"p": 0.25})
            if noise and noise.get("p", 0.25) > 0:
                self.noise = GaussianNoise(**noise)

    def __call__(self, wave: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if self.train and g is None:
            raise ValueError("training augmentation needs a generator (see sample_generator)")
        for step in self.steps:
            wave = step(wave, g)
        wave = self.crop(wave, g)
        if self.noise is not None:
            wave = self.noise(wave, g)
        return wave.contiguous()

    def __repr__(self) -> str:
        parts = [repr(s) for s in self.steps] + [repr(self.crop)] + ([repr(self.noise)] if self.noise else [])
        return f"AudioAugment({', '.join(parts)})"
