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

The forward pass computes the original's function to its float32 rounding
(within the equivalence tolerances of ``tests/fixtures/README.md``): the audio
channels go through the trunk as one batch and the convolutions run
channels-last. Faster or differently ordered computations of the same function
(the original's exact order, a cached filterbank, folded BatchNorm, bfloat16,
int8) are transforms that return a new model: see :mod:`audioclip.model.transforms`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from .fbsp import FbspFilterbank, blackman_harris_window, frame_signal, int16_range_to_unit

# Replaces exact zeros of the power spectrum before the logarithm.
_LOG_FLOOR = 1e-18


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
        if torch.compiler.is_exporting():
            gate = adaptive_max_pool2d_by_gather(stage_input, stage_output.shape[-2:])
        else:
            gate = F.adaptive_max_pool2d(stage_input, stage_output.shape[-2:])
        gate = self.bn(self.conv_point(self.conv_depth(gate)))
        return stage_output * torch.sigmoid(gate)


def adaptive_max_pool2d_by_gather(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d(x, output_size)`` from gathers and maxima: ``(n, c, h, w)`` -> ``(n, c, *output_size)``.

    The same maxima over the same elements (bit-identical), written with ops
    that ONNX has for sizes only known at run time; ONNX has no adaptive max
    pooling, and the gates' output sizes follow the clip's length. Used when
    the model is exported (``torch.compiler.is_exporting()``).
    """
    return _adaptive_max_1d(_adaptive_max_1d(x, 2, output_size[0]), 3, output_size[1])


def _adaptive_max_1d(x: torch.Tensor, dim: int, out: int) -> torch.Tensor:
    # Bin i of an adaptive pooling covers [floor(i n / out), ceil((i + 1) n / out)):
    # gather k = ceil(n / out) + 1 indices per bin, repeating the bin's last one
    # where it is shorter (a repeated element does not change a maximum).
    n = x.shape[dim]
    i = torch.arange(out, device=x.device)
    start = torch.div(i * n, out, rounding_mode="floor")
    end = torch.div((i + 1) * n + out - 1, out, rounding_mode="floor")
    j = torch.arange((n + out - 1) // out + 1, device=x.device)
    index = torch.minimum(start[:, None] + j[None, :], end[:, None] - 1)
    gathered = x.index_select(dim, index.reshape(-1))
    shape = [*x.shape[:dim], out, j.shape[0], *x.shape[dim + 1 :]]
    return gathered.reshape(shape).amax(dim + 1)


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

    def __init__(
        self,
        num_classes: int = 527,
        config: AudioHeadConfig | None = None,
        trunk_chunk_frames: int | None = 512,
    ):
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
        # In inference on a CPU the trunk runs on chunks of about this many
        # frames (one 5 s clip); None: the whole batch. See run_in_chunks.
        self.trunk_chunk_frames = trunk_chunk_frames
        set_conv_memory_format(self, torch.channels_last)

    def reset_attention_gates(self) -> None:
        """Open every gate (BatchNorm weight and bias 1), as done when starting from ImageNet weights."""
        for gate in (self.att1, self.att2, self.att3, self.att4, self.att5):
            nn.init.ones_(gate.bn.weight)
            nn.init.ones_(gate.bn.bias)

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

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Band "images" ``(n, bands, bins, frames)`` -> gated features before pooling ``(n, 2048, bins', frames')``.

        Time is downsampled 32 times (five stride-2 steps, each ``ceil(n / 2)``): column ``j`` of
        the map stands for input frames ``32 j`` to ``32 j + 31``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage, gate in (
            (self.layer1, self.att1),
            (self.layer2, self.att2),
            (self.layer3, self.att3),
            (self.layer4, self.att4),
        ):
            x = gate(x, stage(x))
        return x

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Band "images" ``(n, bands, bins, frames)`` -> pooled, gated features ``(n, 2048)``."""
        x = self.feature_map(x)
        return self.att5(x, self.avgpool(x)).flatten(1)

    def pooled_features(self, log_power: torch.Tensor) -> torch.Tensor:
        """dB tensor ``(batch, channels, bands, bins, frames)`` -> ``(batch, 2048)``, summed over channels."""
        batch, channels = log_power.shape[:2]
        # Channels share the trunk; folding them into the batch runs them in one
        # pass. (In training, BatchNorm then sees all channels in one batch.)
        x = log_power.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        features = run_in_chunks(self.trunk, x, None if self.training else self.trunk_chunk_frames)
        return features.view(batch, channels, -1).sum(dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, channels, samples)`` in [-1, 1] at 44.1 kHz -> ``(batch, num_classes)``."""
        return self.fc(self.pooled_features(self.log_power(wave)))


def set_conv_memory_format(module: nn.Module, memory_format: torch.memory_format) -> None:
    """Re-lay-out every 4-d convolution weight of ``module`` in place (values, shapes and keys unchanged)."""
    with torch.no_grad():
        for conv in module.modules():
            if isinstance(conv, nn.Conv2d) and not conv.weight.is_contiguous(memory_format=memory_format):
                conv.weight.data = conv.weight.data.contiguous(memory_format=memory_format)
