"""ESResNeXt-fbsp: the audio head of AudioCLIP (Guzhov et al., 2021, section 3.2).

A waveform becomes a log-power spectrogram through the learned fbsp
filterbank; the spectrum is cut into three consecutive frequency bands that
play the role of an image's RGB channels, and a ResNeXt-50 (32x4d) with five
attention gates turns that "image" into a vector. Multi-channel audio runs
each channel through the trunk and sums the pooled vectors before the final
linear layer.

State-dict keys are those of the original implementation (``conv1``,
``layer1`` ... ``layer4``, ``att1`` ... ``att5``, ``fc``, ``fbsp.*``,
``window``), so its checkpoints load unchanged; the trunk is torchvision's
ResNet, whose key names the original also used.

How the forward pass is computed is selectable (:meth:`ESResNeXtFbsp.set_compute_mode`):

- ``"default"``: the same function as the original to its float32 rounding
  (within the equivalence tolerances of ``tests/fixtures/README.md``): the fbsp
  kernels are materialised once and reused in inference, the audio channels go
  through the trunk as one batch, convolutions run channels-last.
- ``"plain"``: exactly as the original computes it, the baseline of the
  benchmarks: kernels rebuilt on every pass, one trunk pass per audio channel,
  NCHW float32.
- ``"fused"``, ``"bf16"``, ``"int8"``: opt-in inference transforms (BatchNorm
  folded into the convolutions, optionally ``torch.compile``; bfloat16 autocast
  of the trunk; int8 trunk), see :mod:`audioclip.model.fast`. They apply only in
  eval mode with gradients off; training and gradient passes use ``"default"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from .fbsp import FbspFilterbank, blackman_harris_window, frame_signal, int16_range_to_unit

# Replaces exact zeros of the power spectrum before the logarithm.
_LOG_FLOOR = 1e-18

#: The selectable ways of computing the forward pass (see ESResNeXtFbsp.set_compute_mode).
COMPUTE_MODES = ("default", "plain", "fused", "bf16", "int8")


@dataclass(frozen=True)
class AudioHeadConfig:
    """Hyper-parameters of the audio head; the defaults are the paper's."""

    n_fft: int = 2048
    hop_length: int = 561
    win_length: int = 1654
    normalized: bool = True
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    groups: int = 32
    width_per_group: int = 4
    num_bands: int = 3
    sample_rate: int = 44100

    @property
    def num_bins(self) -> int:
        """Bins of the one-sided filterbank (n_fft / 2 + 1)."""
        return self.n_fft // 2 + 1


class AttentionGate(nn.Module):
    """Sigmoid gate computed from a stage's input, multiplied onto its output.

    The input is max-pooled to the output's spatial size, then passed through
    a depthwise and a pointwise convolution and BatchNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int]):
        super().__init__()
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        self.conv_depth = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, groups=in_channels)
        self.conv_point = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, stage_input: torch.Tensor, stage_output: torch.Tensor) -> torch.Tensor:
        gate = F.adaptive_max_pool2d(stage_input, stage_output.shape[-2:])
        gate = self.bn(self.conv_point(self.conv_depth(gate)))
        return stage_output * torch.sigmoid(gate)


def run_in_chunks(trunk, x: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
    """``trunk(x)`` over ``(n, bands, bins, frames)``, on the CPU in chunks of about ``chunk_frames`` frames.

    On a CPU the trunk runs faster on a clip or two at a time, whose
    activations stay in cache, than on a large batch (1.2-1.6x on a 2-core
    EPYC, 1.07x default / 1.19x fused mode at batch 8 on a 2-core AMX Xeon);
    each item's result is the same up to float32 rounding (the
    convolutions may pick other algorithms for another batch size). GPUs get
    the whole batch; ``chunk_frames=None`` always does.
    """
    if chunk_frames is None or x.device.type != "cpu" or x.shape[0] <= 1:
        return trunk(x)
    per_chunk = max(1, chunk_frames // x.shape[-1])
    if per_chunk >= x.shape[0]:
        return trunk(x)
    return torch.cat([trunk(part) for part in x.split(per_chunk)])


class ESResNeXtFbsp(ResNet):
    """Waveform ``(batch, channels, samples)`` -> ``(batch, num_classes)``.

    Used twice: as the audio head of AudioCLIP (``num_classes`` = embedding
    size, 1024) and as the standalone AudioSet classifier (527 classes) that
    the published ``ESRNXFBSP.pt`` holds.

    Input samples are in [-1, 1] at 44.1 kHz.
    """

    #: In inference on a CPU, the trunk runs on chunks of about this many frames
    #: (one 5 s clip); ``None``: the whole batch at once. See :func:`run_in_chunks`.
    trunk_chunk_frames: int | None = 512

    def __init__(self, num_classes: int = 527, config: AudioHeadConfig | None = None):
        config = config or AudioHeadConfig()
        super().__init__(
            Bottleneck,
            list(config.layers),
            num_classes=num_classes,
            groups=config.groups,
            width_per_group=config.width_per_group,
        )
        self.config = config

        # Kernel shapes alternate between the frequency and the time axis.
        widths = [64] + [64 * 2**i * Bottleneck.expansion for i in range(4)]
        kernels = [(3, 1), (1, 5), (3, 1), (1, 5)]
        for i, kernel in enumerate(kernels, start=1):
            self.add_module(f"att{i}", AttentionGate(widths[i - 1], widths[i], kernel))
        self.att5 = AttentionGate(widths[4], widths[4], (3, 5))
        for gate in (self.att1, self.att2, self.att3, self.att4, self.att5):
            nn.init.kaiming_normal_(gate.conv_depth.weight, mode="fan_out", nonlinearity="relu")
            nn.init.kaiming_normal_(gate.conv_point.weight, mode="fan_out", nonlinearity="relu")

        self.fbsp = FbspFilterbank(config.num_bins, normalized=config.normalized)
        self.register_buffer("window", blackman_harris_window(config.win_length))
        self.compute_mode = "default"
        self._fast_options: dict = {}
        self._drop_fast_head()
        self._set_conv_memory_format(torch.channels_last)

    # -- how the forward pass is computed ----------------------------------

    def set_compute_mode(self, mode: str = "default", **options) -> ESResNeXtFbsp:
        """Choose how the forward pass is computed; returns ``self``.

        - ``"default"``: the original's function to float32 rounding, faster:
          fbsp kernels cached in inference (rebuilt when ``m``/``fb``/``fc``
          change, never cached when gradients to them are wanted), audio
          channels batched through the trunk, channels-last convolutions.
        - ``"plain"``: the computation exactly as the original does it (kernels
          rebuilt every pass, a trunk pass per audio channel, NCHW). Slow; the
          benchmarks' baseline.
        - ``"fused"``, ``"bf16"``, ``"int8"``: inference-only transforms built
          by :func:`audioclip.model.fast.build_fast_head` from the current
          weights (and rebuilt when they change), used in eval mode with
          gradients off; otherwise the ``"default"`` computation runs.
          ``options`` are that function's: ``compile=``, ``slice_kernel=``,
          ``calibration=`` (``"int8"``: waveforms to calibrate on, required),
          ``fold_batchnorm=``. ``"fused"`` stays within the equivalence
          tolerances; ``"bf16"`` and ``"int8"`` do not (see docs/performance.md).

        Parameter shapes and state-dict keys never change: the conv weights are
        only re-laid-out (channels-last except in ``"plain"``).
        """
        if mode not in COMPUTE_MODES:
            raise ValueError(f"set_compute_mode: unknown mode {mode!r}; choose one of {', '.join(COMPUTE_MODES)}")
        if mode in ("default", "plain") and options:
            raise TypeError(f"set_compute_mode: mode {mode!r} takes no options, got {sorted(options)}")
        if mode == "int8" and options.get("calibration") is None:
            raise ValueError("set_compute_mode('int8') needs calibration= waveforms (batch, channels, samples)")
        if mode in ("fused", "bf16", "int8"):
            from .fast import check_options

            check_options(mode, **options)
        self.compute_mode = mode
        self._fast_options = dict(options)
        self._drop_fast_head()
        self.fbsp.cache_kernel = mode != "plain"
        self.fbsp.clear_kernel_cache()
        self._set_conv_memory_format(torch.contiguous_format if mode == "plain" else torch.channels_last)
        return self

    def _set_conv_memory_format(self, memory_format: torch.memory_format) -> None:
        # Re-lays-out the 4-d conv weights in place (values, shapes and keys unchanged).
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    weight = module.weight
                    if not weight.is_contiguous(memory_format=memory_format):
                        weight.data = weight.data.contiguous(memory_format=memory_format)

    def _drop_fast_head(self) -> None:
        # Kept outside the module tree so it never shows up in state_dict() or parameters().
        object.__setattr__(self, "_fast_head", None)
        object.__setattr__(self, "_fast_signature", None)

    def _weights_signature(self) -> tuple:
        """Changes whenever any parameter or buffer is modified in place or replaced."""
        signature = []
        for tensor in (*self.parameters(), *self.buffers()):
            try:
                version = tensor._version
            except RuntimeError:  # an inference tensor: cannot change outside inference mode
                version = -1
            signature.append((tensor.data_ptr(), version, tensor.dtype, tensor.device))
        return tuple(signature)

    def _active_fast_head(self):
        """The opt-in inference head for this pass, (re)built as needed; ``None`` to compute as ``"default"``."""
        if self.compute_mode not in ("fused", "bf16", "int8") or self.training or torch.is_grad_enabled():
            return None
        signature = self._weights_signature()
        if self._fast_head is None or self._fast_signature != signature:
            from .fast import build_fast_head

            object.__setattr__(self, "_fast_head", None)  # free the old copy first
            head = build_fast_head(self, self.compute_mode, **self._fast_options)
            object.__setattr__(self, "_fast_head", head)
            object.__setattr__(self, "_fast_signature", signature)
        return self._fast_head

    def __getstate__(self):
        state = super().__getstate__()
        state["_fast_head"] = state["_fast_signature"] = None  # copies and pickles rebuild it
        return state

    def _apply(self, fn, recurse: bool = True):
        result = super()._apply(fn, recurse)
        # .to(device)/.half()/...: drop a fast copy the move made stale, at once (it may hold GPU memory)
        if self._fast_head is not None and self._weights_signature() != self._fast_signature:
            self._drop_fast_head()
        return result

    def reset_attention_gates(self) -> None:
        """Open every gate (BatchNorm weight and bias 1), as done when starting from ImageNet weights."""
        for gate in (self.att1, self.att2, self.att3, self.att4, self.att5):
            nn.init.ones_(gate.bn.weight)
            nn.init.ones_(gate.bn.bias)

    # -- weights -----------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "esrnxfbsp",
        *,
        config: AudioHeadConfig | None = None,
        cache_dir: str | Path | None = None,
        offline: bool | None = None,
        progress: bool = True,
    ) -> ESResNeXtFbsp:
        """Load a standalone classifier (registry name ``"esrnxfbsp"`` or a path); eval mode.

        The number of classes is taken from the checkpoint's ``fc`` layer.
        """
        from ..checkpoints import CheckpointError, check_state_dict, load_state_dict, resolve

        path, _ = resolve(name_or_path, cache_dir=cache_dir, offline=offline, progress=progress)
        state = load_state_dict(path)
        if "fc.weight" not in state:
            hint = " (an AudioCLIP checkpoint? use AudioCLIP.from_pretrained)" if "audio.fc.weight" in state else ""
            raise CheckpointError(f"{path}: no 'fc.weight' key, not a standalone audio classifier{hint}")
        model = cls(num_classes=state["fc.weight"].shape[0], config=config)
        check_state_dict(state, {k: v.shape for k, v in model.state_dict().items()}, str(path))
        model.load_state_dict(state)
        return model.eval()

    def load_trunk_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy everything but the classifier layer from a standalone classifier's state dict."""
        from ..checkpoints import check_state_dict

        expected = {k: v.shape for k, v in self.state_dict().items() if not k.startswith("fc.")}
        trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
        check_state_dict(trunk, expected, source)
        self.load_state_dict(trunk, strict=False)

    # -- front end -------------------------------------------------------

    def log_power(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, channels, samples)`` in [-1, 1] -> dB tensor ``(batch, channels, bands, bins, frames)``.

        Computed in float32 even inside ``torch.autocast``. The top bins that do not fill a whole band (two of 1025, Nyquist
        among them) are dropped: each band has ``num_bins // num_bands`` bins.
        """
        cfg = self.config
        batch, channels, _ = wave.shape
        # The front end is ill-conditioned: it always runs in the filterbank's
        # dtype (float32), also under an enclosing autocast.
        with torch.autocast(wave.device.type, enabled=False):
            wave = int16_range_to_unit(wave.to(self.window.dtype))
            with torch.no_grad():  # framing is fixed; only the filterbank learns
                frames = frame_signal(wave, cfg.win_length, cfg.hop_length) * self.window
                left = (cfg.n_fft - cfg.win_length) // 2
                frames = F.pad(frames, (left, cfg.n_fft - cfg.win_length - left))
            real, imag = self.fbsp(frames)  # (batch, channels, frames, bins)
            power = real * real + imag * imag

            band = cfg.num_bins // cfg.num_bands
            power = power[..., : band * cfg.num_bands].transpose(-1, -2)
            power = power.reshape(batch, channels, cfg.num_bands, band, power.shape[-1])
            power = torch.where(power > 0.0, power, torch.full_like(power, _LOG_FLOOR))
            return 10.0 * torch.log10(power)

    def fbsp_norm_loss(self) -> torch.Tensor:
        """The filterbank's kernel-norm regulariser (added to the training loss)."""
        return self.fbsp.norm_loss(self.config.n_fft)

    # -- trunk -----------------------------------------------------------

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Band "images" ``(n, bands, bins, frames)`` -> pooled, gated features ``(n, 2048)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage, gate in (
            (self.layer1, self.att1),
            (self.layer2, self.att2),
            (self.layer3, self.att3),
            (self.layer4, self.att4),
        ):
            x = gate(x, stage(x))
        return self.att5(x, self.avgpool(x)).flatten(1)

    def pooled_features(self, log_power: torch.Tensor) -> torch.Tensor:
        """dB tensor ``(batch, channels, bands, bins, frames)`` -> ``(batch, 2048)``, summed over channels."""
        batch, channels = log_power.shape[:2]
        if self.compute_mode == "plain":
            # As the original: a trunk pass per audio channel, stacked and summed.
            outputs = [self.trunk(log_power[:, c]) for c in range(channels)]
            return torch.stack(outputs, dim=-1).sum(dim=-1)
        # Channels share the trunk; folding them into the batch runs them in one
        # pass. (In training, BatchNorm then sees all channels in one batch.)
        x = log_power.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        features = run_in_chunks(self.trunk, x, None if self.training else self.trunk_chunk_frames)
        return features.view(batch, channels, -1).sum(dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, channels, samples)`` in [-1, 1] at 44.1 kHz -> ``(batch, num_classes)``."""
        fast = self._active_fast_head()
        if fast is not None:
            return fast(wave)
        return self.fc(self.pooled_features(self.log_power(wave)))
