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


class ESResNeXtFbsp(ResNet):
    """Waveform ``(batch, channels, samples)`` -> ``(batch, num_classes)``.

    Used twice: as the audio head of AudioCLIP (``num_classes`` = embedding
    size, 1024) and as the standalone AudioSet classifier (527 classes) that
    the published ``ESRNXFBSP.pt`` holds.

    Input samples are in [-1, 1] at 44.1 kHz.
    """

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

        The top bins that do not fill a whole band (two of 1025, Nyquist
        among them) are dropped: each band has ``num_bins // num_bands`` bins.
        """
        cfg = self.config
        batch, channels, _ = wave.shape
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

    def pooled_features(self, log_power: torch.Tensor) -> torch.Tensor:
        """dB tensor ``(batch, channels, bands, bins, frames)`` -> ``(batch, 2048)``, summed over channels."""
        batch, channels = log_power.shape[:2]
        # Channels share the trunk; folding them into the batch runs them in one
        # pass. (In training, BatchNorm then sees all channels in one batch.)
        x = log_power.flatten(0, 1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage, gate in (
            (self.layer1, self.att1),
            (self.layer2, self.att2),
            (self.layer3, self.att3),
            (self.layer4, self.att4),
        ):
            x = gate(x, stage(x))
        x = self.att5(x, self.avgpool(x)).flatten(1)
        return x.view(batch, channels, -1).sum(dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform ``(batch, channels, samples)`` in [-1, 1] at 44.1 kHz -> ``(batch, num_classes)``."""
        return self.fc(self.pooled_features(self.log_power(wave)))
