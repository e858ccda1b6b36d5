"""Opt-in inference heads for the audio head (built by :mod:`audioclip.model.transforms`).

:func:`build_fast_head` turns an :class:`~audioclip.model.esresnext.ESResNeXtFbsp`
into a :class:`FastAudioHead`: an inference-only copy (eval mode, no gradients)
computing the same function with some of its rounding given up for speed:

- ``"fused"``: float32. BatchNorm folded into the preceding convolutions, the
  fbsp kernels materialised once (real and imaginary parts in one matrix, the
  two bins no band uses dropped), channels-last, optionally ``torch.compile``.
  Stays within the equivalence tolerances of ``tests/fixtures/README.md``.
- ``"bf16"``: ``"fused"`` with the trunk under bfloat16 autocast. The fbsp
  projection, the power and the logarithm stay float32: the front end is
  ill-conditioned (see :mod:`audioclip.model.fbsp`). Fast only where the
  hardware has bfloat16 arithmetic (CUDA; CPUs with AVX512-BF16 or AMX);
  elsewhere it is emulated and much slower than float32.
- ``"int8"``: ``"fused"`` with the four ResNeXt stages quantised to int8
  (PyTorch's x86 backend, fbgemm/oneDNN: per-channel weights, per-tensor
  activations calibrated on waveforms you give); the stem, the attention gates,
  the pooling and the projection stay float32. CPU only.

``slice_kernel=True`` (any mode) projects only the 1654 windowed samples of each
frame instead of the 2048 zero-padded ones, 19% fewer front-end FLOPs; the
changed summation order moves dB values by up to ~0.01 dB (within tolerance,
measured in docs/performance.md), so it is off by default.

The copy holds its own weights (about 130 MB for the trunk); it does not follow
later changes to the head's weights: transform the model again after those.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import Bottleneck

from .esresnext import run_in_chunks
from .fbsp import frame_signal, int16_range_to_unit

__all__ = ["FAST_MODES", "FastAudioHead", "build_fast_head", "check_options", "fold_batchnorms"]

FAST_MODES = ("fused", "bf16", "int8")

_LOG_FLOOR = 1e-18  # as in esresnext


def check_options(
    mode: str,
    *,
    compile: bool = False,
    slice_kernel: bool = False,
    fold_batchnorm: bool = True,
    calibration: torch.Tensor | Iterable[torch.Tensor] | None = None,
    compile_options: dict | None = None,
) -> None:
    """Validate :func:`build_fast_head`'s options without building anything."""
    if mode not in FAST_MODES:
        raise ValueError(f"unknown fast mode {mode!r}; choose one of {', '.join(FAST_MODES)}")
    if mode == "int8" and calibration is None:
        raise ValueError("mode 'int8' needs calibration= waveforms (batch, channels, samples)")
    if mode != "int8" and calibration is not None:
        raise TypeError(f"calibration= is only used by mode 'int8', not {mode!r}")
    if mode == "int8" and compile:
        raise ValueError("mode 'int8' runs PyTorch's eager quantised kernels; compile=True is not supported")
    if compile_options is not None and not compile:
        raise TypeError("compile_options= needs compile=True")


class _Trunk(nn.Module):
    """The ResNeXt trunk with its attention gates: ``(n, bands, bins, frames)`` -> ``(n, 2048)``."""

    def __init__(self, head: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "avgpool"):
            setattr(self, name, getattr(head, name))
        for i in range(1, 5):
            setattr(self, f"layer{i}", getattr(head, f"layer{i}"))
        for i in range(1, 6):
            setattr(self, f"att{i}", getattr(head, f"att{i}"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.att1(x, self.layer1(x))
        x = self.att2(x, self.layer2(x))
        x = self.att3(x, self.layer3(x))
        x = self.att4(x, self.layer4(x))
        return self.att5(x, self.avgpool(x)).flatten(1)


def fold_batchnorms(trunk: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm of the trunk into the convolution before it, in place.

    ``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` becomes one
    convolution with scaled weights and a bias; the BatchNorm becomes an
    identity. Same function, different float32 rounding.
    """

    def fuse(parent: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if isinstance(bn, nn.BatchNorm2d):
            fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
            fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
            setattr(parent, conv_name, fused)
            setattr(parent, bn_name, nn.Identity())

    with torch.no_grad():
        fuse(trunk, "conv1", "bn1")
        for module in list(trunk.modules()):
            if isinstance(module, Bottleneck):
                for i in (1, 2, 3):
                    fuse(module, f"conv{i}", f"bn{i}")
                if isinstance(module.downsample, nn.Sequential):
                    fuse(module.downsample, "0", "1")
            elif hasattr(module, "conv_point") and hasattr(module, "bn"):  # an attention gate
                fuse(module, "conv_point", "bn")
    return trunk


class FastAudioHead(nn.Module):
    """Inference-only audio head: waveform ``(batch, channels, samples)`` -> ``(batch, num_classes)``.

    Built by :func:`build_fast_head`; see the module docstring for the modes.
    """

    def __init__(
        self,
        config,
        kernel: torch.Tensor,
        window: torch.Tensor,
        trunk: nn.Module,
        fc: nn.Linear,
        *,
        mode: str,
        sliced: bool,
        autocast_dtype: torch.dtype | None = None,
        chunk_frames: int | None = 512,
        norm_loss: torch.Tensor | None = None,
    ):
        super().__init__()
        self.config = config
        self.chunk_frames = chunk_frames  # see esresnext.run_in_chunks
        self.mode = mode
        self.sliced = sliced
        self.autocast_dtype = autocast_dtype
        self.register_buffer("kernel", kernel)  # (2 * kept bins, frame length): real rows, then imaginary
        self.register_buffer("window", window)
        # The filterbank's regulariser at build time (AudioCLIP.forward adds it to the loss).
        self.register_buffer("norm_loss", torch.zeros(()) if norm_loss is None else norm_loss.detach().clone())
        self.trunk = trunk
        self.fc = fc
        self.requires_grad_(False)
        self.eval()

    def log_power(self, wave: torch.Tensor) -> torch.Tensor:
        """As :meth:`ESResNeXtFbsp.log_power`: ``(batch, channels, samples)`` -> ``(batch, channels, bands, bins, frames)``."""
        cfg = self.config
        batch, channels, _ = wave.shape
        with torch.autocast(wave.device.type, enabled=False):  # float32 whatever the caller's autocast
            wave = int16_range_to_unit(wave.to(self.window.dtype))
            frames = frame_signal(wave, cfg.win_length, cfg.hop_length) * self.window
            if not self.sliced:
                left = (cfg.n_fft - cfg.win_length) // 2
                frames = F.pad(frames, (left, cfg.n_fft - cfg.win_length - left))
            spectrum = F.linear(frames, self.kernel)  # (batch, channels, frames, 2 * kept)
            kept = self.kernel.shape[0] // 2
            real, imag = spectrum[..., :kept], spectrum[..., kept:]
            power = (real * real + imag * imag).transpose(-1, -2)
            power = power.reshape(batch, channels, cfg.num_bands, kept // cfg.num_bands, power.shape[-1])
            power = torch.where(power > 0.0, power, torch.full_like(power, _LOG_FLOOR))
            return 10.0 * torch.log10(power)

    def pooled_features(self, log_power: torch.Tensor) -> torch.Tensor:
        batch, channels = log_power.shape[:2]
        x = log_power.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                features = run_in_chunks(self.trunk, x, self.chunk_frames)
        else:
            features = run_in_chunks(self.trunk, x, self.chunk_frames)
        return features.float().view(batch, channels, -1).sum(dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, channels, samples)`` in [-1, 1] at 44.1 kHz -> ``(batch, num_classes)``."""
        with _quantized_engine(self.mode == "int8"):
            return self.fc(self.pooled_features(self.log_power(wave)))

    def fbsp_norm_loss(self) -> torch.Tensor:
        """The source head's filterbank regulariser, as it was when this head was built."""
        return self.norm_loss

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sliced={self.sliced}"


def build_fast_head(
    head: nn.Module,
    mode: str = "fused",
    *,
    compile: bool = False,
    slice_kernel: bool = False,
    fold_batchnorm: bool = True,
    calibration: torch.Tensor | Iterable[torch.Tensor] | None = None,
    compile_options: dict | None = None,
) -> FastAudioHead:
    """An inference-only copy of ``head`` (an ``ESResNeXtFbsp``) computing in ``mode``.

    ``mode``: ``"fused"`` (float32), ``"bf16"`` (bfloat16 trunk) or ``"int8"``
    (int8 ResNeXt stages, CPU). ``compile=True`` wraps the trunk in
    ``torch.compile`` (``"fused"``/``"bf16"``; on CPU with weight freezing, which
    also pre-packs the convolutions; ``compile_options`` overrides the Inductor
    options); the first pass for each new input shape then compiles, which
    takes a minute or more on a small CPU. ``slice_kernel=True`` projects only
    the windowed part of each frame (see the module docstring).
    ``fold_batchnorm=False`` keeps the BatchNorms (for checking the fold).
    ``calibration`` (``"int8"``, required): waveforms ``(batch, channels,
    samples)`` in [-1, 1], or an iterable of such batches, representative of the
    audio to embed; a few dozen 5 s clips are enough.
    """
    check_options(
        mode,
        compile=compile,
        slice_kernel=slice_kernel,
        fold_batchnorm=fold_batchnorm,
        calibration=calibration,
        compile_options=compile_options,
    )
    cfg = head.config
    device = head.fbsp.fc.device
    if mode == "int8" and device.type != "cpu":
        raise ValueError(f"mode 'int8' runs on the CPU only; the model is on {device}")

    with torch.inference_mode(False), torch.no_grad():
        real, imag = head.fbsp.kernel(cfg.n_fft)
        kept = (cfg.num_bins // cfg.num_bands) * cfg.num_bands  # bins that make up the bands
        kernel = torch.cat([real[:kept], imag[:kept]])
        if slice_kernel:
            left = (cfg.n_fft - cfg.win_length) // 2
            kernel = kernel[:, left : left + cfg.win_length]
        kernel = kernel.contiguous()
        window = head.window.detach().clone()

        trunk = copy.deepcopy(_Trunk(head)).eval()
        trunk.requires_grad_(False)
        trunk.to(memory_format=torch.channels_last)
        if fold_batchnorm:
            fold_batchnorms(trunk)
        fc = copy.deepcopy(head.fc).eval().requires_grad_(False)
        norm_loss = head.fbsp_norm_loss()

    autocast_dtype = torch.bfloat16 if mode == "bf16" else None
    fast = FastAudioHead(
        cfg,
        kernel,
        window,
        trunk,
        fc,
        mode=mode,
        sliced=slice_kernel,
        autocast_dtype=autocast_dtype,
        chunk_frames=head.trunk_chunk_frames,
        norm_loss=norm_loss,
    )
    if mode == "int8":
        fast.trunk = _quantize_trunk(fast, calibration)
    if compile:
        options = compile_options
        if options is None:
            options = {"freezing": True} if device.type == "cpu" else {}
        fast.trunk = torch.compile(fast.trunk, options=options or None)
    return fast


def _quantize_trunk(fast: FastAudioHead, calibration) -> nn.Module:
    """Post-training static int8 quantisation of the four ResNeXt stages (FX graph mode, x86 backend)."""
    from torch.ao.quantization import QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    qconfig = get_default_qconfig_mapping("x86").global_qconfig
    mapping = QConfigMapping()
    for i in range(1, 5):
        mapping = mapping.set_module_name(f"layer{i}", qconfig)

    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches or any(b.dim() != 3 or b.shape[0] == 0 for b in batches):
        raise ValueError("calibration: expected waveforms (batch, channels, samples), or an iterable of them")
    device = fast.window.device
    with warnings.catch_warnings(), torch.no_grad(), _quantized_engine(True):
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        example = fast.log_power(batches[0][:1].to(device)).flatten(0, 1)
        prepared = prepare_fx(fast.trunk, mapping, (example,))
        for batch in batches:
            for start in range(0, batch.shape[0], 4):
                log_power = fast.log_power(batch[start : start + 4].to(device, torch.float32))
                prepared(log_power.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        quantized = convert_fx(prepared)
    return quantized


@contextlib.contextmanager
def _quantized_engine(wanted: bool):
    """PyTorch's x86 quantised backend for the duration, the process's setting restored after.

    The engine is a process-wide switch; it is only touched where int8 kernels
    run, so other users of quantised PyTorch in the process are unaffected.
    """
    engines = torch.backends.quantized
    if not wanted or engines.engine == "x86" or "x86" not in engines.supported_engines:
        yield
        return
    previous = engines.engine
    engines.engine = "x86"
    try:
        yield
    finally:
        engines.engine = previous
