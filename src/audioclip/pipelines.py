"""``audioclip.pipeline(task, model=...)``: the call shapes of Hugging Face ``transformers`` pipelines.

>>> clf = audioclip.pipeline("zero-shot-audio-classification", model="full")
>>> clf("bark.wav", candidate_labels=["dog", "rain", "a siren"])
[{'score': 0.93, 'label': 'dog'}, {'score': 0.05, 'label': 'rain'}, {'score': 0.02, 'label': 'a siren'}]

Tasks (argument names and result shapes as in ``transformers``, so code written
for CLAP there moves over by changing the model name):

- ``"zero-shot-audio-classification"``: ``clf(audio, candidate_labels=[...],
  hypothesis_template="This is a sound of {}.")``; ``audio`` is a file path, a
  waveform (numpy array or tensor, ``(samples,)`` or ``(channels, samples)``, in
  [-1, 1] at 44.1 kHz), a dict ``{"array": ..., "sampling_rate": ...}`` (resampled
  with soxr), or a list of these (then a list of results).
- ``"zero-shot-image-classification"``: ``clf(image, candidate_labels=[...],
  hypothesis_template="This is a photo of {}.")``; ``image`` is a path, a PIL
  image, or a list of these.
- ``"audio-classification"`` with ``head=HEAD_DIR`` (written by ``audioclip
  fit``): ``clf(audio, top_k=None)``, the head's classes ranked.
- ``"feature-extraction"``: ``fx(inputs, modality=None)`` gives each input's
  L2-normalised embedding as a list of floats (``return_tensors=True``: a
  tensor); a path is sniffed (audio, image, video's sound), a waveform or dict
  is audio, a PIL image is an image, other strings are text.

Scores are :func:`audioclip.classify`'s probabilities (a file is windowed and
its windows pooled, as everywhere in the package); the model is built by
:func:`audioclip.create_model` (any name it takes, ``hf-hub:`` included).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .factory import create_model
from .inference import Modality, classify, embed_files
from .media import SAMPLE_RATE, MediaError, clip_preprocess, sniff_modality, to_rgb
from .prompts import check_template

__all__ = ["PIPELINE_TASKS", "pipeline"]

PIPELINE_TASKS = ("zero-shot-audio-classification", "zero-shot-image-classification", "feature-extraction",
                  "audio-classification")

#: what ``modality=`` of feature extraction may say (``None``: sniffed from the input)
FeatureModality = Literal["audio", "image", "text"]


def pipeline(task: str, model: str | os.PathLike | torch.nn.Module = "full", *, device: str | None = None,
             audio_mode: str | None = "default", head=None, **model_kwargs) -> _Pipeline:
    """A callable for ``task`` (one of :data:`PIPELINE_TASKS`) around ``model``.

    ``model`` is a name or path for :func:`audioclip.create_model` (with
    ``device``, ``audio_mode`` and ``model_kwargs``), or a model already built.
    ``"audio-classification"`` takes ``head``: a folder written by ``audioclip fit``.
    """
    if task not in PIPELINE_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(PIPELINE_TASKS)}")
    if (task == "audio-classification") != (head is not None):
        raise ValueError("the audio-classification task takes a head (a folder written by 'audioclip fit'), "
                         "and only it does")
    if not isinstance(model, torch.nn.Module) and not hasattr(model, "encode_audio"):
        model = create_model(model, device=device or "auto", audio_mode=audio_mode, **model_kwargs)
    if head is not None:
        return _AudioClassification(task, model, head)
    cls = {"zero-shot-audio-classification": _ZeroShotAudio, "zero-shot-image-classification": _ZeroShotImage,
           "feature-extraction": _FeatureExtraction}[task]
    return cls(task, model)


class _Pipeline:
    def __init__(self, task: str, model):
        self.task = task
        self.model = model

    def __repr__(self) -> str:
        return f"audioclip.pipeline({self.task!r}, model={getattr(self.model, 'pretrained_cfg', {}).get('source')!r})"


def _is_batch(inputs: Any) -> bool:
    return isinstance(inputs, (list, tuple))


def _labels(candidate_labels: Sequence[str] | str | None) -> list[str]:
    if isinstance(candidate_labels, str):
        candidate_labels = [label.strip() for label in candidate_labels.split(",")]
    labels = [str(label) for label in (candidate_labels or [])]
    if not labels:
        raise ValueError("candidate_labels: give at least one label")
    return labels


def _ranked(probs: torch.Tensor, labels: list[str]) -> list[list[dict[str, Any]]]:
    out = []
    for row in probs.tolist():
        order = sorted(range(len(labels)), key=lambda i: -row[i])
        out.append([{"score": row[i], "label": labels[i]} for i in order])
    return out


def _waveform(item: Any) -> torch.Tensor:
    """A waveform input as ``(1, channels, samples)`` float32 at 44.1 kHz."""
    rate = SAMPLE_RATE
    if isinstance(item, dict):
        if "array" not in item:
            raise ValueError("an audio dict needs an 'array' (and a 'sampling_rate')")
        rate = int(item.get("sampling_rate") or SAMPLE_RATE)
        item = item["array"]
    wave = item.detach().cpu().float().numpy() if isinstance(item, torch.Tensor) else np.asarray(item, np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise ValueError(f"a waveform is (samples,) or (channels, samples), got shape {wave.shape}")
    if rate != SAMPLE_RATE:
        import soxr

        wave = soxr.resample(wave.T, rate, SAMPLE_RATE, quality="VHQ").T.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(wave))[None]


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


class _ZeroShot(_Pipeline):
    """Zero-shot classification of one modality: each input (a path or an in-memory item) ranked over the labels."""

    modality: Modality

    def _tensor(self, item: Any) -> torch.Tensor:
        raise NotImplementedError

    def _classify(self, inputs, candidate_labels, hypothesis_template: str):
        labels = _labels(candidate_labels)
        check_template(hypothesis_template)
        batch = _is_batch(inputs)
        items = list(inputs) if batch else [inputs]
        results = []
        for item in items:
            given = [os.fspath(item)] if _is_path(item) else self._tensor(item)
            probs = classify(self.model, labels, template=hypothesis_template, **{self.modality: given})
            results += _ranked(probs, labels)
        return results if batch else results[0]


class _ZeroShotAudio(_ZeroShot):
    modality = "audio"

    def __call__(self, audio, candidate_labels=None, hypothesis_template: str = "This is a sound of {}."):
        return self._classify(audio, candidate_labels, hypothesis_template)

    def _tensor(self, item: Any) -> torch.Tensor:
        return _waveform(item)


class _AudioClassification(_Pipeline):
    """``clf(audio, top_k=None)``: the head's classes ranked, ``[{"score", "label"}]``, as transformers'
    audio-classification pipeline (``top_k``: how many; default all)."""

    def __init__(self, task: str, model, head):
        from .inference import load_head_for

        super().__init__(task, model)
        self.head = load_head_for(model, head)

    def __call__(self, audio, top_k: int | None = None):
        batch = _is_batch(audio)
        items = list(audio) if batch else [audio]
        results = []
        for item in items:
            given = [os.fspath(item)] if _is_path(item) else _waveform(item)
            ranked = _ranked(classify(self.model, audio=given, head=self.head), self.head.labels)
            results += [r[:top_k] if top_k else r for r in ranked]
        return results if batch else results[0]


def _image_tensor(item: Any, size: int) -> torch.Tensor:
    from PIL import Image

    if isinstance(item, Image.Image):
        return clip_preprocess(to_rgb(item), size)[None]
    raise TypeError(f"an image is a file path or a PIL image, got {type(item).__name__}")


class _ZeroShotImage(_ZeroShot):
    modality = "image"

    def __call__(self, image, candidate_labels=None, hypothesis_template: str = "This is a photo of {}."):
        return self._classify(image, candidate_labels, hypothesis_template)

    def _tensor(self, item: Any) -> torch.Tensor:
        return _image_tensor(item, self.model.visual.image_size)


class _FeatureExtraction(_Pipeline):
    def __call__(self, inputs, modality: FeatureModality | None = None, return_tensors: bool = False):
        batch = _is_batch(inputs)
        items = list(inputs) if batch else [inputs]
        vectors = [self._embed(item, modality) for item in items]
        out = [v if return_tensors else v.tolist() for v in vectors]
        return out if batch else out[0]

    def _embed(self, item: Any, modality: FeatureModality | None) -> torch.Tensor:
        from PIL import Image

        model = self.model
        if isinstance(item, Image.Image):
            with torch.inference_mode():
                return F.normalize(model.encode_image(_image_tensor(item, model.visual.image_size)).float(), dim=-1)[0]
        if _is_path(item) and modality != "text" and (modality in ("audio", "image") or Path(item).is_file()):
            result = next(iter(embed_files(model, [os.fspath(item)])))
            if not result.ok:
                raise MediaError(result.path, result.error)
            wanted = modality or ("image" if sniff_modality(os.fspath(item)) == "image" else "audio")
            vector = result.pooled(wanted)
            if vector is None:
                raise MediaError(result.path, f"has no {wanted}")
            return vector
        if isinstance(item, str) and modality in (None, "text"):
            with torch.inference_mode():
                return F.normalize(model.encode_text([item]).float(), dim=-1)[0].cpu()
        with torch.inference_mode():
            return F.normalize(model.encode_audio(_waveform(item)).float(), dim=-1)[0].cpu()
