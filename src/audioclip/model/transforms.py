"""Inference transforms: functions that take a model and return a new one computing the same function.

The modules of this package compute one way (the original's function to float32
rounding, gradients everywhere). Faster, or differently ordered, computations
are built from a model by the functions below, in the manner of timm's
``reparameterize_model``: the input model is left as it was (unless
``inplace=True``), the result is in eval mode for inference, and nothing is
switched on the module or in the process.

======================  ==========================================================================
``audio_mode``          what :func:`apply_audio_mode` returns
======================  ==========================================================================
``"default"``           :func:`freeze_fbsp_kernel`: the fbsp kernels materialised once; same
                        numbers as the module (bit-identical), the command line's default
``"plain"``             :func:`original_order`: the original's order of computation (a trunk
                        pass per audio channel, NCHW weights); the benchmarks' baseline
``"fused"``             :func:`fuse`: BatchNorm folded into the convolutions, float32; within the
                        equivalence tolerances
``"bf16"``              :func:`fuse` with ``dtype=torch.bfloat16``: the trunk under bfloat16
                        autocast; not exact (docs/performance.md)
``"int8"``              :func:`quantize_int8`: the four ResNeXt stages in int8 (CPU), calibrated
                        on waveforms you give; not exact
``"spectrum64"``        :func:`float64_spectrum`: ``"default"`` with the front end's spectrum
                        (filterbank projection, power, decibels) in float64: a clip's vector
                        varies far less between CPUs; close to ``"default"``, not equal
                        (docs/performance.md, "Same file, same vector")
======================  ==========================================================================

Each function accepts an ``AudioCLIP`` (its audio head is transformed; text and
image heads are kept) or a standalone ``ESResNeXtFbsp``. ``"default"`` and
``"plain"`` (and ``"spectrum64"``) keep every state-dict key; the fast heads have their own layout and
are not meant to be saved (save the model you transformed).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .esresnext import ESResNeXtFbsp, set_conv_memory_format
from .fast import FastAudioHead, build_fast_head, check_options
from .fbsp import FbspFilterbank

__all__ = [
    "AUDIO_MODES",
    "FastAudioHead",
    "Float64SpectrumESResNeXtFbsp",
    "Float64SpectrumFilterbank",
    "FrozenFbspFilterbank",
    "OriginalOrderESResNeXtFbsp",
    "apply_audio_mode",
    "float64_spectrum",
    "freeze_fbsp_kernel",
    "fuse",
    "original_order",
    "quantize_int8",
]

#: The values of ``audio_mode`` (the command line's ``--audio-mode``), fastest exact one first.
AUDIO_MODES = ("default", "fused", "bf16", "plain", "int8", "spectrum64")


class FrozenFbspFilterbank(FbspFilterbank):
    """An :class:`FbspFilterbank` whose kernels for frames of ``in_features`` samples are materialised once.

    ``m``, ``fb`` and ``fc`` are kept (same state-dict keys) but no longer
    train: the kernels are a snapshot of them. Frames of another length fall
    back to computing the kernels.
    """

    def __init__(self, bank: FbspFilterbank, in_features: int):
        super().__init__(bank.out_features, normalized=bank.normalized)
        with torch.inference_mode(False), torch.no_grad():
            self.to(device=bank.fc.device, dtype=bank.fc.dtype)
            self.load_state_dict(bank.state_dict())
            self.requires_grad_(False)
            real, imag = super().kernel(in_features)
        self.in_features = in_features
        # Not persistent: derived from m, fb and fc, which are saved.
        self.register_buffer("kernel_real", real, persistent=False)
        self.register_buffer("kernel_imag", imag, persistent=False)

    def kernel(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        if in_features == self.in_features:
            return self.kernel_real, self.kernel_imag
        return super().kernel(in_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, frozen at in_features={self.in_features}"


class Float64SpectrumFilterbank(FrozenFbspFilterbank):
    """A :class:`FrozenFbspFilterbank` projecting in float64: frames ``(..., in_features)`` -> float64 ``(real, imag)``.

    The kernels are the float32 ones the weights were trained with (computed
    once, as in ``"default"``), and so are the frames; only the projection's
    sums run in float64. In float32 a quiet bin's value is a sum of terms
    thousands of times larger than itself, so its rounding, which follows the
    order of summation (threads, batch size, the matrix library's blocking),
    decides its decibels; in float64 that rounding is far below float32's
    resolution of the result.
    """

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real, imag = self.kernel(frames.shape[-1])
        # cast per call, not stored: a model.float() or .to(dtype) cannot undo it
        frames = frames.to(torch.float64)
        return F.linear(frames, real.to(torch.float64)), F.linear(frames, imag.to(torch.float64))


class Float64SpectrumESResNeXtFbsp(ESResNeXtFbsp):
    """:class:`ESResNeXtFbsp` whose power spectrum and decibels are computed in float64 (made by
    :func:`float64_spectrum`); the dB tensor is rounded once to float32 for the trunk."""

    def log_power(self, wave: torch.Tensor) -> torch.Tensor:
        # the filterbank returns float64, so power, floor and log10 run in float64 too
        return super().log_power(wave).to(self.window.dtype)


class OriginalOrderESResNeXtFbsp(ESResNeXtFbsp):
    """:class:`ESResNeXtFbsp` computing in the original's order: one trunk pass per audio channel.

    Made by :func:`original_order`; with NCHW weights and the kernels rebuilt
    every pass, the same float32 operations as the original implementation.
    """

    def pooled_features(self, log_power: torch.Tensor) -> torch.Tensor:
        channels = log_power.shape[1]
        outputs = [self.trunk(log_power[:, c]) for c in range(channels)]
        return torch.stack(outputs, dim=-1).sum(dim=-1)


def _audio_head(model: nn.Module) -> ESResNeXtFbsp:
    head = getattr(model, "audio", model)
    if not isinstance(head, ESResNeXtFbsp):
        raise TypeError(
            f"expected an AudioCLIP or ESResNeXtFbsp whose audio head is untransformed, got {type(head).__name__}"
        )
    return head


def _with_head(model: nn.Module, head: nn.Module) -> nn.Module:
    if isinstance(model, ESResNeXtFbsp):
        return head
    model.audio = head
    return model


def _copy(model: nn.Module, inplace: bool) -> nn.Module:
    return model if inplace else copy.deepcopy(model)


def freeze_fbsp_kernel(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The model with the audio head's fbsp kernels materialised once; eval mode.

    Bit-identical outputs (the same computation, done once instead of every
    pass). The filterbank's parameters stop training; the trunk's do not.
    """
    model = _copy(model, inplace)
    head = _audio_head(model)
    head.fbsp = FrozenFbspFilterbank(head.fbsp, head.config.n_fft)
    return model.eval()


def float64_spectrum(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The model with its audio front end's spectrum computed in float64 (``"spectrum64"``); eval mode.

    As :func:`freeze_fbsp_kernel` (the same float32 kernels, materialised
    once), but the filterbank projection, the power and the decibels run in
    float64 and are rounded to float32 once, before the trunk. The default
    path's quiet bins carry float32 rounding that follows the order of
    summation (the CPU's instruction set, threads, batch size); here that
    rounding is far below float32's resolution, so a clip's vector varies far
    less between machines (about eightfold, measured). Not equal to the default
    path: the quiet bins move (docs/performance.md, "Same file, same vector").
    Costs a float64 matrix product per clip in the front end.
    """
    model = _copy(model, inplace)
    head = _audio_head(model)
    if isinstance(head.fbsp, FrozenFbspFilterbank):
        raise TypeError("float64_spectrum: the filterbank is frozen; transform the untransformed model")
    bank = Float64SpectrumFilterbank(head.fbsp, head.config.n_fft)
    head.__class__ = Float64SpectrumESResNeXtFbsp  # same submodules and tensors; only log_power differs
    head.fbsp = bank
    return model.eval()


def original_order(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The model computing its audio head as the original does; eval mode.

    A trunk pass per audio channel, NCHW convolution weights, the fbsp kernels
    rebuilt every pass. Slow; the baseline of ``benchmarks/bench_inference.py``.
    """
    model = _copy(model, inplace)
    head = _audio_head(model)
    if isinstance(head.fbsp, FrozenFbspFilterbank):
        raise TypeError("original_order: the filterbank is frozen; transform the untransformed model")
    # Same submodules and tensors; only pooled_features differs.
    head.__class__ = OriginalOrderESResNeXtFbsp
    set_conv_memory_format(head, torch.contiguous_format)
    return model.eval()


def fuse(
    model: nn.Module,
    *,
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
    slice_kernel: bool = False,
    fold_batchnorm: bool = True,
    compile_options: dict | None = None,
    inplace: bool = False,
) -> nn.Module:
    """The model with a :class:`~audioclip.model.fast.FastAudioHead`: BatchNorm folded, kernels materialised.

    ``dtype=torch.float32`` is ``"fused"`` (within the equivalence tolerances);
    ``torch.bfloat16`` is ``"bf16"`` (the trunk under bfloat16 autocast, not
    exact). The other options are :func:`~audioclip.model.fast.build_fast_head`'s.
    Inference only (no gradients); a copy of the audio head's weights.
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"fuse: dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    mode = "fused" if dtype == torch.float32 else "bf16"
    options = dict(compile=compile, slice_kernel=slice_kernel, fold_batchnorm=fold_batchnorm,
                   compile_options=compile_options)
    check_options(mode, **options)
    head = _audio_head(model)
    fast = _build_from(head, mode, **options)
    return _with_head(_copy_except_audio(model, inplace), fast).eval()


def quantize_int8(
    model: nn.Module,
    calibration: torch.Tensor | Iterable[torch.Tensor],
    *,
    slice_kernel: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """The model with its audio head's ResNeXt stages in int8 (CPU), calibrated on ``calibration``.

    ``calibration``: waveforms ``(batch, channels, samples)`` in [-1, 1], or an
    iterable of such batches, like the audio to embed (a few dozen 5 s clips).
    Not exact: see docs/performance.md.
    """
    head = _audio_head(model)
    fast = _build_from(head, "int8", calibration=calibration, slice_kernel=slice_kernel)
    return _with_head(_copy_except_audio(model, inplace), fast).eval()


def _build_from(head: ESResNeXtFbsp, mode: str, **options) -> FastAudioHead:
    """``build_fast_head`` from the head's eval-mode function, the head's own mode left as it was."""
    training = head.training
    try:
        return build_fast_head(head.eval(), mode, **options)
    finally:
        head.train(training)


def _copy_except_audio(model: nn.Module, inplace: bool) -> nn.Module:
    """A deep copy of ``model`` that shares nothing with it, without copying the audio head it is about to lose."""
    if inplace or isinstance(model, ESResNeXtFbsp):
        return model
    head = model.audio
    memo = {id(head): None}  # deepcopy maps the head to None; _with_head then sets the new one
    return copy.deepcopy(model, memo)


def apply_audio_mode(model: nn.Module, mode: str = "default", *, inplace: bool = False, **options) -> nn.Module:
    """The transform named by ``mode`` (one of :data:`AUDIO_MODES`) applied to ``model``.

    ``options`` go to the transform (``"int8"`` needs ``calibration=``).
    """
    if mode not in AUDIO_MODES:
        raise ValueError(f"unknown audio mode {mode!r}; choose one of {', '.join(AUDIO_MODES)}")
    if mode in ("default", "plain", "spectrum64") and options:
        raise TypeError(f"audio mode {mode!r} takes no options, got {sorted(options)}")
    if mode == "default":
        return freeze_fbsp_kernel(model, inplace=inplace)
    if mode == "plain":
        return original_order(model, inplace=inplace)
    if mode == "spectrum64":
        return float64_spectrum(model, inplace=inplace)
    if mode == "int8":
        if options.get("calibration") is None:
            raise ValueError("audio mode 'int8' needs calibration= waveforms (batch, channels, samples)")
        return quantize_int8(model, inplace=inplace, **options)
    if "calibration" in options:
        raise TypeError(f"calibration= is only used by audio mode 'int8', not {mode!r}")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    return fuse(model, dtype=dtype, inplace=inplace, **options)

