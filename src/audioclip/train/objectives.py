"""What one training step computes, as a module DDP can wrap.

- ``contrastive`` (AudioCLIP): the paper's symmetric cross-entropy between the
  compared heads (audio with text, and image for the tri-modal AudioSet
  regimes), over the whole global batch: features of all processes are
  gathered, so the negatives are the same as in a single process.
- ``prompt_ce`` (AudioCLIP): cross-entropy of the audio-text logits against the
  prompts of all classes (zero-shot-style classification as the objective).
- ``classify`` (standalone ESResNeXt-fbsp): cross-entropy, or binary
  cross-entropy for multi-label data.

Every loss is the one a single process would compute on the global batch; the
value handed to ``backward`` is scaled so that DDP's gradient average gives
exactly that loss's gradient. The fbsp kernel-norm regulariser is added while
the audio head learns. Evaluation scores a clip against every class: audio-text
logits of the class prompts for AudioCLIP, the classifier's logits otherwise.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..model import AudioCLIP, contrastive_loss
from ..prompts import text_classifier
from .build import audio_head
from .distributed import Dist

__all__ = ["TrainTask", "audio_features", "class_text_features", "eval_scores"]


def audio_features(head: nn.Module, wave: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """The audio head's output; under mixed precision the fbsp front end still runs in float32.

    The front end is ill-conditioned (see :mod:`audioclip.model.fbsp`), so only
    the trunk and the projection follow autocast.
    """
    if amp_dtype is None:
        return head(wave)
    with torch.autocast(device_type=wave.device.type, enabled=False):
        power_db = head.log_power(wave.float())
    return head.fc(head.pooled_features(power_db))


def class_text_features(model: AudioCLIP, classes: list[str], prompt: str) -> torch.Tensor:
    """L2-normalised text features of every class prompt, ``(num_classes, embed_dim)``, on the model's device.

    :func:`audioclip.prompts.text_classifier` with the one template ``prompt``,
    under the caller's grad mode (the text head may be learning). With one
    template there is nothing to average: the prompt vectors are used as they
    are, all in one call (renormalising a unit vector, or another batch, would
    only move the last bits of what training always used).
    """
    return text_classifier(model, classes, prompt, batch_size=None, renormalize=False)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


class TrainTask(nn.Module):
    """``forward(batch) -> (loss for backward, global loss value)``; wraps the model for DDP."""

    def __init__(
        self,
        model: nn.Module,
        cfg: dict,
        classes: list[str],
        multilabel: bool,
        dist: Dist,
        trainable_heads: list[str],
        amp_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_kind = cfg["task"]["loss"]
        self.modalities = list(cfg["task"]["modalities"])
        self.prompt = cfg["task"]["prompt"]
        self.classes = classes
        self.multilabel = multilabel
        self.dist = dist
        self.amp_dtype = amp_dtype
        self.audio_learns = "audio" in trainable_heads
        self.text_learns = "text" in trainable_heads
        self._class_text: torch.Tensor | None = None
        if self.loss_kind == "prompt_ce" and multilabel:
            raise ValueError("task.loss prompt_ce is for single-label data; use contrastive for multi-label")

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.dist.device
        audio = batch["audio"].to(device, non_blocking=True)
        weights = batch["weight"].to(device)
        sizes = batch.get("sizes") or self.dist.sizes(audio.shape[0])
        with _autocast(device, self.amp_dtype):
            if self.loss_kind == "classify":
                loss, value = self._classify(audio, batch, weights, sizes)
            elif self.loss_kind == "prompt_ce":
                loss, value = self._prompt_ce(audio, batch, weights, sizes)
            else:
                loss, value = self._contrastive(audio, batch, weights, sizes)
        if self.audio_learns:
            with torch.autocast(device_type=device.type, enabled=False):
                reg = audio_head(self.model).fbsp_norm_loss()
            loss = loss + reg
            value = value + reg.detach()
        return loss, value

    # -- losses ------------------------------------------------------------

    def _weighted_mean(self, per_sample: torch.Tensor, weights: torch.Tensor):
        """Weighted mean over the global batch, as (scaled local part for backward, global value)."""
        total = self.dist.sum(weights.sum()).to(per_sample.dtype)
        local = (per_sample * weights).sum() / total
        value = self.dist.sum(local.detach()).float()
        return local * self.dist.world, value

    def _classify(self, audio, batch, weights, sizes):
        logits = audio_features(self.model, audio, self.amp_dtype).float()
        target = batch["target"].to(self.dist.device)
        if self.multilabel:
            per = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(dim=1)
        else:
            per = F.cross_entropy(logits, target, reduction="none")
        return self._weighted_mean(per, weights)

    def class_text(self) -> torch.Tensor:
        if self.text_learns:
            return class_text_features(self.model, self.classes, self.prompt)
        if self._class_text is None:
            with torch.no_grad():
                self._class_text = class_text_features(self.model, self.classes, self.prompt)
        return self._class_text

    def _prompt_ce(self, audio, batch, weights, sizes):
        a = F.normalize(audio_features(self.model.audio, audio, self.amp_dtype).float(), dim=-1)
        scale = self.model.logit_scales()["audio_text"]
        logits = scale * a @ self.class_text().T
        per = F.cross_entropy(logits, batch["target"].to(self.dist.device), reduction="none")
        return self._weighted_mean(per, weights)

    def _contrastive(self, audio, batch, weights, sizes):
        model, dist = self.model, self.dist
        feats = {"audio": F.normalize(audio_features(model.audio, audio, self.amp_dtype).float(), dim=-1)}
        if "image" in self.modalities:
            image = batch["image"].to(dist.device, non_blocking=True)
            feats["image"] = F.normalize(model.encode_image(image).float(), dim=-1)
        if "text" in self.modalities:
            if not self.text_learns and not self.multilabel:
                # frozen text head, one class per clip: the class prompt's features, computed once
                # for all classes (cheaper, and the same however the batch is split over processes)
                feats["text"] = self.class_text()[batch["target"].to(dist.device)]
            else:
                feats["text"] = F.normalize(model.encode_text(batch["text"]).float(), dim=-1)
        feats = {k: dist.gather_rows(v, sizes) for k, v in feats.items()}
        all_weights = dist.gather_rows(weights, sizes)
        if bool((all_weights == 1).all()):
            all_weights = None  # unweighted: exactly the model's own loss
        scales = model.logit_scales()
        logits = []
        for pair, (a, b) in (("audio_image", ("audio", "image")), ("audio_text", ("audio", "text")),
                             ("image_text", ("image", "text"))):
            if a in feats and b in feats:
                logits.append(scales[pair] * feats[a] @ feats[b].T)
        with torch.autocast(device_type=dist.device.type, enabled=False):
            loss = contrastive_loss([x.float() for x in logits], all_weights)
        return loss * dist.world, loss.detach()


@torch.no_grad()
def eval_scores(model: nn.Module, audio: torch.Tensor, class_text: torch.Tensor | None,
                amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Per-class scores ``(batch, num_classes)`` for evaluation."""
    with _autocast(audio.device, amp_dtype):
        if isinstance(model, AudioCLIP):
            a = F.normalize(audio_features(model.audio, audio, amp_dtype).float(), dim=-1)
            return (model.logit_scales()["audio_text"] * a @ class_text.T).float()
        return audio_features(model, audio, amp_dtype).float()
