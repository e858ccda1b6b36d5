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
the original does it on every forward pass, as this module does (gradients flow
to ``m``, ``fb`` and ``fc``). For inference,
:func:`audioclip.model.transforms.freeze_fbsp_kernel` returns a model whose
kernels are materialised once (bit-identical: the same computation, done once).
"""

from __future__ import annotations

import math

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
    phase = 2.0 * math.pi * torch.arange(length, dtype=torch.float64) / length
    window = sum(
        (-1) ** k * a * torch.cos(k * phase) for k, a in enumerate(_BLACKMAN_HARRIS)
    )
    return window.to(torch.float32)


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
    # 1 + ceil((length - frame_length) / hop_length), and at least 1, in integer
    # arithmetic without branches, so that an exported graph (ONNX) frames any
    # length; only non-negative operands are divided (ONNX's Div truncates).
    n_frames = 1 + torch.sym_max(0, length - frame_length + hop_length - 1) // hop_length
    pad = (n_frames - 1) * hop_length + frame_length - length  # never negative
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

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project real frames ``(..., in_features)`` -> ``(real, imag)``, each ``(..., out_features)``."""
        real, imag = self.kernel(frames.shape[-1])
        return F.linear(frames, real), F.linear(frames, imag)

    def norm_loss(self, in_features: int) -> torch.Tensor:
        """Mean squared deviation of each kernel's L2 norm from its ideal value.

        The ideal is 1 for a normalised bank and ``sqrt(in_features)`` otherwise;
        the penalty keeps the learned kernels from drifting in gain.
        """
        real, imag = self.kernel(in_features)
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
