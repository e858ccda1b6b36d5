"""The trainable time-frequency front end of the audio head (paper section 3.2).

Each audio frame is projected onto a bank of learned complex kernels, the
"frequency B-spline" (fbsp) filters. Kernel ``k`` is

    sqrt(fb_k) * sinc(fb_k * t / m_k) ** m_k * exp(-i * fc_k * t) / sqrt(n)

on a grid ``t`` spanning ``[-pi, pi]``: ``fc`` is the centre frequency, ``fb``
the bandwidth and ``m`` the spline order. With ``m = 0, fb = 1, fc = 0..n/2``
the bank is (almost exactly) a one-sided DFT.

The published weights were trained with the original implementation's float32
arithmetic, and this transform is ill-conditioned in float32: the kernel phase
``fc * t`` reaches ~3200 rad, so a kernel computed any other way (float64 then
cast, fused complex exponentials, ...) moves low-power bins by decibels. The
code below therefore keeps the original's order of float32 operations where
it affects rounding; the reasons are noted at each such place.

Materialising the kernels costs about as much as projecting a dozen frames, and
the original does it on every forward pass. :meth:`FbspFilterbank.cached_kernel`
keeps the materialised kernels between inference passes (bit-identical: the
same computation, done once) and rebuilds them whenever ``m``, ``fb`` or ``fc``
change; in training, or whenever gradients to those parameters are wanted, it
builds them afresh every time, as the original does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Coefficients of the 4-term Blackman-Harris window (Harris, 1978).
_BLACKMAN_HARRIS = (0.35875, 0.48829, 0.14128, 0.01168)

# Added to the grid and to the spline order to keep 0/0 away, as the
# published weights were trained with these offsets.
_EPS = 1e-8


def blackman_harris_window(length: int) -> torch.Tensor:
    """Periodic 4-term Blackman-Harris window, computed in float64, returned as float32.

    Equal to ``scipy.signal.get_window("blackmanharris", length, fftbins=True)``
    cast to float32, which is what the published checkpoints store.
    """
    phase = 2.0 * np.pi * np.arange(length) / length
    window = sum(
        (-1) ** k * a * np.cos(k * phase) for k, a in enumerate(_BLACKMAN_HARRIS)
    )
    return torch.from_numpy(np.asarray(window, dtype=np.float64)).to(torch.float32)


def int16_range_to_unit(wave: torch.Tensor) -> torch.Tensor:
    """Re-apply the original's input mapping to a [-1, 1] waveform.

    The original was fed ``wave * 32768`` and mapped the int16 range
    ``[-32768, 32767]`` linearly onto ``[-1, 1]``. That is not the identity
    (a gain of 65536/65535 and an offset of 1/65535), and the front end is
    sensitive enough for it to matter, so it is reproduced in float32.
    """
    return ((wave * 32768.0 + 32768.0) * 2.0) / 65535.0 - 1.0


def frame_signal(signal: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """Cut ``(..., samples)`` into ``(..., frames, frame_length)`` frames.

    The signal is zero-padded so that the last frame is complete: the padding
    is split with the smaller half at the start (no centring, no reflection),
    matching the framing the published weights were trained with. A signal
    shorter than one frame yields a single zero-padded frame.
    """
    length = signal.shape[-1]
    if length <= frame_length:
        n_frames = 1
    else:
        n_frames = 1 + math.ceil((length - frame_length) / hop_length)
    pad = (n_frames - 1) * hop_length + frame_length - length
    if pad > 0:
        signal = F.pad(signal, (pad // 2, pad - pad // 2))
    return signal.unfold(-1, frame_length, hop_length)


class FbspFilterbank(nn.Module):
    """A bank of ``out_features`` learned complex fbsp kernels.

    Parameters ``m`` (spline order), ``fb`` (bandwidth) and ``fc`` (centre
    frequency, in bins) are 1-d of length ``out_features``. ``bias`` is an empty
    tensor: the audio head uses no bias, but the original's state dicts carry
    the key.
    """

    def __init__(self, out_features: int, normalized: bool = True):
        super().__init__()
        self.out_features = out_features
        self.normalized = normalized
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(0), requires_grad=False)
        # Reuse the materialised kernels between inference passes (see cached_kernel);
        # False rebuilds them on every pass, as the original does.
        self.cache_kernel = True
        self._kernel_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        # The original rescales each parameter's gradient by its max-norm, which
        # keeps the three very differently scaled vectors training at one pace.
        for p in (self.m, self.fb, self.fc):
            p.register_hook(_normalise_by_max)

    def kernel(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Materialise the kernels for frames of ``in_features`` samples.

        Returns ``(real, imag)``, each ``(out_features, in_features)``.
        """
        dtype, device = self.fc.dtype, self.fc.device
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=dtype, device=device) + _EPS
        m = self.m[:, None]
        fb = self.fb[:, None]
        fc = self.fc[:, None]

        # The carrier exp(-i fc t); fc * t is formed once and reused so its
        # float32 rounding is identical for both parts.
        phase = fc * t
        carrier_re, carrier_im = torch.cos(phase), -torch.sin(phase)

        # The spline window sinc(fb t / m) ** m, raised as a complex power:
        # negative sinc values carry phase pi, so |s| ** m * exp(i pi m).
        # |s| ** m is computed as (s^2) ** (m / 2) through the square root and
        # back, the order in which the published weights were trained.
        s = _sinc(fb * t / (m + _EPS))
        magnitude = (s * s).sqrt()
        spline = (magnitude * magnitude) ** (0.5 * m)
        spline_phase = m * torch.atan2(torch.zeros_like(s), s)
        spline_re = spline * torch.cos(spline_phase)
        spline_im = spline * torch.sin(spline_phase)

        gain = fb.sqrt()
        real = gain * (spline_re * carrier_re - spline_im * carrier_im)
        imag = gain * (spline_re * carrier_im + spline_im * carrier_re)
        if self.normalized:
            real = real / in_features**0.5
            imag = imag / in_features**0.5
        return real, imag

    def cached_kernel(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`kernel`, kept between calls when that cannot change any result.

        The kernels are reused only in eval mode, with ``cache_kernel`` set, and
        when no gradient to ``m``, ``fb`` or ``fc`` can be asked for (grad mode
        off, or none of them requiring grad); otherwise this is :meth:`kernel`.
        A cached copy is keyed by the three parameters' version counters
        (bumped by every in-place change: ``load_state_dict``, optimiser steps,
        ``p.copy_(...)`` under ``no_grad``), their storage, device and dtype, and
        ``in_features``. Switching to training and back drops it, and so does a
        ``.to(...)`` that moves or converts the parameters. Writes through ``p.data`` bypass
        version counters: call :meth:`clear_kernel_cache` after those.
        """
        if not self._cache_allowed():
            return self.kernel(in_features)
        key = self._cache_key(in_features)
        if key is None:
            return self.kernel(in_features)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            # Build ordinary tensors even inside torch.inference_mode, so the cache
            # can serve later passes outside it (e.g. under a trainable trunk).
            with torch.inference_mode(False), torch.no_grad():
                real, imag = self.kernel(in_features)
            self._kernel_cache = (key, real, imag)
        return self._kernel_cache[1], self._kernel_cache[2]

    def clear_kernel_cache(self) -> None:
        """Forget the cached kernels; the next pass rebuilds them."""
        self._kernel_cache = None

    def _cache_allowed(self) -> bool:
        if not self.cache_kernel or self.training:
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in (self.m, self.fb, self.fc)):
            return False
        return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())

    def _cache_key(self, in_features: int) -> tuple | None:
        """What the kernels depend on; ``None`` when that cannot be told (inference tensors)."""
        params = (self.m, self.fb, self.fc)
        try:
            versions = tuple(p._version for p in params)
        except RuntimeError:  # inference tensors keep no version counter
            return None
        storage = tuple((p.data_ptr(), p.device, p.dtype, tuple(p.shape)) for p in params)
        return (in_features, self.normalized, versions, storage)

    def train(self, mode: bool = True) -> FbspFilterbank:
        if mode != self.training:  # a switch between training and inference
            self._kernel_cache = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        result = super()._apply(fn, recurse)
        # .to()/.double()/...: drop a cache the move made stale (not one it left valid)
        if self._kernel_cache is not None and self._cache_key(self._kernel_cache[0][0]) != self._kernel_cache[0]:
            self._kernel_cache = None
        return result

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project real frames ``(..., in_features)`` -> ``(real, imag)``, each ``(..., out_features)``."""
        real, imag = self.cached_kernel(frames.shape[-1])
        return F.linear(frames, real), F.linear(frames, imag)

    def norm_loss(self, in_features: int) -> torch.Tensor:
        """Mean squared deviation of each kernel's L2 norm from its ideal value.

        The ideal is 1 for a normalised bank and ``sqrt(in_features)`` otherwise;
        the penalty keeps the learned kernels from drifting in gain.
        """
        real, imag = self.cached_kernel(in_features)
        norms = (real.square() + imag.square()).sum(dim=-1).sqrt()
        target = 1.0 if self.normalized else in_features**0.5
        return F.mse_loss(norms, torch.full_like(norms, target))

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, normalized={self.normalized}"


def _sinc(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised sinc, sin(x) / x, with sinc(0) = 1."""
    return torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)


def _normalise_by_max(grad: torch.Tensor) -> torch.Tensor:
    return grad / (grad.abs().max() + _EPS)
