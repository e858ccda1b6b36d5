"""AudioCLIP: text, image and audio heads mapping into one embedding space.

The text and image heads are CLIP ResNet-50 (QuickGELU) as built by
``open_clip``; the audio head is :class:`ESResNeXtFbsp`. Every pair of
modalities has its own learned temperature ("logit scale"). The layout of
parameters, and so every state-dict key, is the original implementation's, so
its published checkpoints load unchanged and checkpoints saved here load there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from .config import load_model_config
from .esresnext import AudioHeadConfig, ESResNeXtFbsp

# Audio is accepted up to this peak; beyond it the input almost certainly uses
# another convention (int16-scaled floats), which would silently give garbage.
MAX_AUDIO_PEAK = 2.0

Texts = str | Sequence[str] | Sequence[Sequence[str]] | torch.Tensor


@dataclass
class AudioCLIPOutput:
    """What :meth:`AudioCLIP.forward` returns.

    Features are L2-normalised, ``(batch, embed_dim)``. ``logits_x_y`` is
    ``scale_xy * x_features @ y_features.T``, ``(batch_x, batch_y)``. A field is
    ``None`` when a modality it needs was not given. ``loss`` is the symmetric
    contrastive loss (plus the fbsp regulariser when audio is present); it is
    ``None`` unless at least two modalities with equal batch sizes were given.
    """

    audio_features: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    text_features: torch.Tensor | None = None
    logits_audio_image: torch.Tensor | None = None
    logits_audio_text: torch.Tensor | None = None
    logits_image_text: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class AudioCLIP(CLIP):
    """The tri-modal model.

    ``AudioCLIP()`` builds the paper's architecture with random weights; load
    published or saved weights with :func:`audioclip.create_model`. Its input
    and output sizes: :attr:`image_size` (pixels), :attr:`sample_rate` (Hz)
    and ``embed_dim`` (the length of every vector: 1024; 64 for
    ``AudioCLIP-tiny``).
    """

    def __init__(self, config: str | Path | dict[str, Any] = "AudioCLIP-RN50"):
        cfg = load_model_config(config)
        super().__init__(
            embed_dim=cfg["embed_dim"],
            vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
            text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
            quick_gelu=cfg.get("quick_gelu", True),
        )
        audio_cfg = dict(cfg.get("audio_cfg", {}))
        if "layers" in audio_cfg:
            audio_cfg["layers"] = tuple(audio_cfg["layers"])
        self.config = cfg
        self.embed_dim = cfg["embed_dim"]
        self.audio = ESResNeXtFbsp(num_classes=self.embed_dim, config=AudioHeadConfig(**audio_cfg))
        # Audio pairs start at the largest allowed temperature, as in the paper.
        self.logit_scale_ai = nn.Parameter(torch.tensor(math.log(100.0)))
        self.logit_scale_at = nn.Parameter(torch.tensor(math.log(100.0)))

    # -- encoders ---------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # -- input and output sizes (``embed_dim``, the vectors' length, is set in __init__) --

    @property
    def image_size(self) -> int:
        """Side of the square pictures :meth:`encode_image` takes, in pixels (224; 64 for ``AudioCLIP-tiny``).

        ``audioclip.load_image(path, model=model)`` prepares pictures of this size.
        """
        return int(self.visual.image_size)

    @property
    def sample_rate(self) -> int:
        """Samples per second of the waveforms :meth:`encode_audio` takes (44100)."""
        return int(self.audio.config.sample_rate)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(batch, channels, samples)`` or ``(batch, samples)``, in [-1, 1] at 44.1 kHz -> ``(batch, embed_dim)``.

        Not normalised. Channels are embedded separately and summed before
        the projection (stereo is not the embedding of a down-mix). Clips
        shorter than one analysis window (1654 samples) are zero-padded to it.
        """
        return self.audio(check_audio_input(audio, self.device))

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CLIP-normalised images ``(batch, 3, size, size)`` -> ``(batch, embed_dim)``, not normalised by default."""
        size = self.visual.image_size
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            kind = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(f"encode_image: expected a float tensor, got {kind}")
        if image.dim() != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != (size, size):
            raise ValueError(
                f"encode_image: expected shape (batch, 3, {size}, {size}), got {tuple(image.shape)}; "
                f"this model takes {size}-pixel pictures: audioclip.load_image(path, model=model) prepares them"
            )
        _check_batch_finite(image, "encode_image")
        visual_dtype = self.visual.conv1.weight.dtype
        return super().encode_image(image.to(self.device, visual_dtype), normalize=normalize)

    def encode_text(self, text: Texts, normalize: bool = False) -> torch.Tensor:
        """Texts -> ``(batch, embed_dim)``, not normalised by default.

        ``text`` is a list of strings, a single string, a list of label lists
        (each joined with ``", "``, as the original does for multi-label
        clips), or token ids ``(batch, context_length)`` from :func:`tokenize`.
        """
        if not isinstance(text, torch.Tensor):
            from .tokenizer import tokenize

            text = tokenize(check_text_input(text), context_length=self.context_length)
        elif text.dim() != 2 or text.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"encode_text: token ids must be an integer (batch, {self.context_length}) tensor")
        if text.shape[0] == 0:
            raise ValueError("encode_text: empty batch")
        return super().encode_text(text.to(self.device), normalize=normalize)

    # -- the joint model --------------------------------------------------

    def logit_scales(self) -> dict[str, torch.Tensor]:
        """The three temperatures, exponentiated and clamped to [1, 100]."""
        return {
            "audio_image": self.logit_scale_ai.exp().clamp(1.0, 100.0),
            "audio_text": self.logit_scale_at.exp().clamp(1.0, 100.0),
            "image_text": self.logit_scale.exp().clamp(1.0, 100.0),
        }

    def forward(
        self,
        audio: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        text: Texts | None = None,
        sample_weights: torch.Tensor | None = None,
    ) -> AudioCLIPOutput:
        """Embed whichever modalities are given and compare every pair.

        ``sample_weights`` ``(batch,)`` weighs each sample's terms in the loss
        (e.g. per-class weights in AudioSet training).
        """
        if audio is None and image is None and text is None:
            raise ValueError("forward: give at least one of audio, image, text")
        out = AudioCLIPOutput()
        if audio is not None:
            out.audio_features = F.normalize(self.encode_audio(audio), dim=-1)
        if image is not None:
            out.image_features = F.normalize(self.encode_image(image), dim=-1)
        if text is not None:
            out.text_features = F.normalize(self.encode_text(text), dim=-1)

        scales = self.logit_scales()
        pairs = {
            "audio_image": (out.audio_features, out.image_features),
            "audio_text": (out.audio_features, out.text_features),
            "image_text": (out.image_features, out.text_features),
        }
        logits = {}
        for name, (a, b) in pairs.items():
            if a is not None and b is not None:
                logits[name] = scales[name] * a @ b.T
                setattr(out, f"logits_{name}", logits[name])

        square = all(x.shape[0] == x.shape[1] for x in logits.values())
        if logits and square and len({x.shape[0] for x in logits.values()}) == 1:
            out.loss = contrastive_loss(list(logits.values()), sample_weights)
            if audio is not None:
                out.loss = out.loss + self.audio.fbsp_norm_loss()
        return out


def contrastive_loss(logits: Sequence[torch.Tensor], sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's symmetric cross-entropy over every pair of modalities.

    For each ``(batch, batch)`` logit matrix, cross-entropy against the
    diagonal over rows plus over columns; the sum is divided by ``k!`` for
    ``k`` pairs (1, 2 or 6), the normalisation the published weights were
    trained with. ``sample_weights`` weighs sample ``i`` (its row and column);
    the mean is then weighted.
    """
    target = torch.arange(logits[0].shape[0], device=logits[0].device)
    if sample_weights is not None:
        sample_weights = sample_weights.to(device=logits[0].device, dtype=logits[0].dtype)
    total = sum(
        F.cross_entropy(x, target, weight=sample_weights) + F.cross_entropy(x.T, target, weight=sample_weights)
        for x in logits
    )
    return total / math.factorial(len(logits))


def check_text_input(text: str | Sequence[str] | Sequence[Sequence[str]]) -> list[str]:
    """Validate a text batch and return one string per row (a row's list of labels joined with ``", "``)."""
    if isinstance(text, str):
        return [text]
    joined = []
    for i, item in enumerate(text):
        if isinstance(item, str):
            joined.append(item)
        elif isinstance(item, Sequence) and all(isinstance(label, str) for label in item):
            joined.append(", ".join(item))
        else:
            raise TypeError(f"encode_text: text[{i}] is {type(item).__name__}; expected str or a list of str")
    if not joined:
        raise ValueError("encode_text: empty batch")
    return joined


def check_audio_input(audio: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Validate a waveform batch and return it as float32 ``(batch, channels, samples)`` on ``device``."""
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"encode_audio: expected a torch.Tensor, got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise TypeError(
            f"encode_audio: expected float samples in [-1, 1], got {audio.dtype}; "
            "for int16 PCM use audio.float() / 32768"
        )
    if audio.dim() == 2:
        audio = audio.unsqueeze(1)
    if audio.dim() != 3:
        raise ValueError(
            f"encode_audio: expected shape (batch, channels, samples) or (batch, samples), got {tuple(audio.shape)}"
        )
    batch, channels, samples = audio.shape
    if batch == 0 or channels == 0 or samples == 0:
        raise ValueError(f"encode_audio: empty input, shape {tuple(audio.shape)}")
    _check_batch_finite(audio, "encode_audio")
    peak = audio.abs().max().item()
    if peak > MAX_AUDIO_PEAK:
        raise ValueError(
            f"encode_audio: samples must be in [-1, 1], got a peak of {peak:g}; "
            "if these are int16-scaled values, divide by 32768"
        )
    return audio.to(device=device, dtype=torch.float32)


def _check_batch_finite(x: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(x.flatten(1)).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"{where}: NaN or infinite values in batch item(s) {rows[:10]}")
