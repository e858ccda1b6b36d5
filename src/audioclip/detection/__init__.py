"""Sound events over time: when something happens in a recording, for labels named in words or a fitted head.

:func:`detect` scores each recording over time (:mod:`.scores`: sliding ``windows`` or the
trunk's ``columns``), turns the scores into events (:mod:`.postprocess`) and returns both;
:mod:`.writers` writes them (CSV, Parquet, JSON lines, Raven selection tables, Audacity
labels), :mod:`.plot` draws them, :mod:`.synthetic` mixes strongly labelled test recordings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..media import MediaError
from ..media.files import DecodeOptions
from .postprocess import PostProcessing, events_from_scores
from .scores import METHODS, FrameScores, Scorer, frame_scores

__all__ = ["detect", "detect_files", "Detection", "FileDetection", "PostProcessing", "FrameScores", "METHODS",
           "zero_shot_scorer", "head_scorer", "query_scores"]


@dataclass
class FileDetection:
    """One recording's frame scores and events, or why it could not be read."""

    path: str
    frames: FrameScores | None = None
    events: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Detection:
    """What :func:`detect` found: events of every file, frame scores, failed files and the settings used."""

    files: list[FileDetection]
    settings: dict[str, Any]

    @property
    def events(self) -> list[dict]:
        """Event records ``{"path", "label", "start_s", "end_s", "score", "mean_score"}``, file by file."""
        return [{"path": f.path, **ev} for f in self.files if f.ok for ev in f.events]

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(f.path, f.error) for f in self.files if not f.ok]

    def frames_table(self):
        """The frame scores as a ``pyarrow.Table``: ``path, start_s, end_s, label, score``, one row per time step
        and label."""
        from .writers import frames_table

        return frames_table([f.frames for f in self.files if f.ok])


def zero_shot_scorer(model, labels: Sequence[str], templates: str | Sequence[str] = "{}") -> Scorer:
    """Scores of ``labels`` named in words: the softmax over the labels of the scaled cosine similarities,
    what :func:`audioclip.classify` gives."""
    from ..inference import text_classifier, zero_shot

    classes = text_classifier(model, list(labels), templates)
    return lambda embeddings: zero_shot(model, classes, audio=embeddings)


def head_scorer(head) -> tuple[list[str], Scorer, Any]:
    """``(labels, scorer, threshold)`` of a fitted head.

    A head is an :class:`audioclip.heads.Head` (or a folder holding one), any object with
    ``labels``, an optional ``threshold`` (one value or one per label) and a function from
    L2-normalised audio embeddings ``(N, D)`` to scores ``(N, C)`` in [0, 1] (the object
    itself when callable, else its ``probabilities`` or ``scores``), or a tuple
    ``(labels, threshold, function)``.

    A head's background class ("none of these") is no event: its column is left out, and
    where it is a softmax head's best class the other classes score 0 there, as the head
    decides (``Head.decide``: such a clip is "none"), so the threshold chosen by ``fit`` for
    a false-positive rate means the same over time.
    """
    if isinstance(head, (str, os.PathLike)):
        from ..heads import load_head

        head = load_head(head)
    keep, background_index = None, None
    if isinstance(head, tuple) and len(head) == 3:
        labels, threshold, fn = head
    else:
        labels, threshold = getattr(head, "labels", None), getattr(head, "threshold", None)
        # audioclip.heads.Head: class probabilities; its predict() gives decisions (names), not scores
        fn = head if callable(head) else getattr(head, "probabilities", None) or getattr(head, "scores", None)
        background = getattr(head, "background", None)
        if labels is not None and background in labels:
            labels = list(labels)
            background_index = labels.index(background)
            keep = [i for i, label in enumerate(labels) if label != background]
            labels = [labels[i] for i in keep]
            if threshold is not None and np.ndim(threshold) == 1:
                threshold = [threshold[i] for i in keep]
            if getattr(head, "activation", "softmax") != "softmax":
                background_index = None  # a sigmoid head scores each class on its own
        if threshold is not None and np.ndim(threshold) == 0 and float(threshold) <= 0:
            threshold = None  # a head without a calibrated threshold: detect's own default applies
    if labels is None or fn is None:
        raise TypeError("a head needs labels and a function from embeddings to scores")

    def scorer(embeddings: torch.Tensor) -> torch.Tensor:
        scores = torch.as_tensor(np.asarray(fn(embeddings), dtype=np.float32))
        if keep is None:
            return scores
        kept = scores[:, keep]
        if background_index is not None:  # "none of these" wins: no class is active there
            kept = torch.where((scores.argmax(dim=1) == background_index)[:, None], torch.zeros_like(kept), kept)
        return kept

    return list(labels), scorer, threshold


def _check_head_checkpoint(model, head) -> None:
    wanted = getattr(head, "checkpoint", None)
    if wanted is None:
        return
    have = _checkpoint_of(model)
    if have is not None and have != wanted:
        raise ValueError(f"the head was fitted on checkpoint {wanted}, not on this model's ({have})")


def detect_files(
    model,
    files: Sequence[str | os.PathLike],
    labels: Sequence[str],
    scorer: Scorer,
    *,
    method: str = "columns",
    window: float = 5.0,
    hop: float = 0.5,
    postprocess: PostProcessing = PostProcessing(),
    options: DecodeOptions | None = None,
    batch_size: int = 16,
) -> Iterator[FileDetection]:
    """Frame scores and events of each file, in order; a file that cannot be read gives one with ``error``."""
    for path in files:
        path = os.fspath(path)
        try:
            scores = frame_scores(model, path, list(labels), scorer, method=method, window=window, hop=hop,
                                  options=options, batch_size=batch_size)
        except MediaError as err:
            yield FileDetection(path, error=err.reason)
            continue
        except (ValueError, RuntimeError) as err:  # the model refused the input; the others go on
            yield FileDetection(path, error=f"{type(err).__name__}: {err}")
            continue
        events = events_from_scores(scores.scores, scores.cell_start, scores.cell_end, scores.labels, postprocess)
        yield FileDetection(path, scores, events)


def detect(
    model,
    files: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    labels: Sequence[str] | None = None,
    head=None,
    templates: str | Sequence[str] = "{}",
    method: str = "columns",
    window: float = 5.0,
    hop: float = 0.5,
    threshold: float | Sequence[float] | None = None,
    threshold_low: float | Sequence[float] | None = None,
    median_filter: float = 0.0,
    min_duration: float = 0.0,
    merge_gap: float = 0.0,
    top_k: int | None = None,
    mono: bool = False,
    batch_size: int = 16,
) -> Detection:
    """Sound events in ``files``: for each, the scores of ``labels`` (or a ``head``'s) over time and the events.

    - ``labels``: named in words, scored zero-shot (softmax over the labels, as
      :func:`audioclip.classify`); ``templates``: prompt templates as ``classify`` takes.
      Or ``head``: a fitted head (see :func:`head_scorer`), whose calibrated threshold is
      the default ``threshold``.
    - ``method``: ``"columns"`` (default: one pass of the audio head, a score every 0.41 s)
      or ``"windows"`` (``window`` s windows every ``hop`` s, each scored as ``classify``
      scores that window cut out of the file). See docs/detection.md.
    - ``threshold`` (default 0.5), ``threshold_low`` (hysteresis), ``median_filter``,
      ``min_duration``, ``merge_gap`` (seconds), ``top_k``: :class:`PostProcessing`.

    Returns a :class:`Detection`: ``.events`` (records), ``.frames_table()``, ``.failed``, ``.settings``.
    """
    if (labels is None) == (head is None):
        raise ValueError("give labels or a head, not both")
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if labels is not None:
        labels = list(labels)
        scorer = zero_shot_scorer(model, labels, templates)
        default_threshold = 0.5
    else:
        if isinstance(head, (str, os.PathLike)):  # a head folder, as classify(head=...) takes
            from ..heads import load_head

            head = load_head(head)
        _check_head_checkpoint(model, head)
        labels, scorer, default_threshold = head_scorer(head)
        default_threshold = 0.5 if default_threshold is None else default_threshold
    post = PostProcessing(
        threshold=_tuple(default_threshold if threshold is None else threshold),
        threshold_low=_tuple(threshold_low), median_filter_s=median_filter, min_duration_s=min_duration,
        merge_gap_s=merge_gap, top_k=top_k)
    check_method(method, window, hop)
    options = DecodeOptions(window=window, hop=hop, mono=mono)
    settings = detection_settings(model, labels, method=method, window=window, hop=hop, postprocess=post,
                                  mono=mono, scorer="head" if head is not None else "zero-shot")
    results = list(detect_files(model, files, labels, scorer, method=method, window=window, hop=hop,
                                postprocess=post, options=options, batch_size=batch_size))
    return Detection(results, settings)


def query_scores(model, path: str | os.PathLike, query: str, *, method: str = "columns", mono: bool = False,
                 templates: str | Sequence[str] = "{}", audio=None) -> FrameScores:
    """One text query's score over time in a recording (for a timeline): the cosine similarity of the query's
    text embedding with each frame's audio embedding, mapped to [0, 1] as ``(1 + cos) / 2``.

    ``audio``: the recording already decoded (``(channels, samples)`` at the model's rate; see
    :func:`~audioclip.detection.scores.frame_scores`), ``path`` then only naming it."""
    from ..inference import text_classifier

    vector = text_classifier(model, [query], templates)  # (1, D), normalised
    scorer = lambda embeddings: (1 + embeddings.float() @ vector.T) / 2  # noqa: E731
    return frame_scores(model, os.fspath(path), [query], scorer, method=method, options=DecodeOptions(mono=mono),
                        audio=audio)


def check_method(method: str, window: float, hop: float) -> None:
    """``method`` is known and (for windows) the hop is positive and no longer than the window."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not window > 0 or not hop > 0:
        raise ValueError(f"window and hop must be positive seconds, got {window} and {hop}")
    if hop > window:
        raise ValueError(f"the hop ({hop:g} s) is longer than the window ({window:g} s): audio between windows "
                         "would never be scored")


def detection_settings(model, labels: Sequence[str], *, method: str, window: float, hop: float,
                       postprocess: PostProcessing, mono: bool, scorer: str, **extra) -> dict[str, Any]:
    """Everything that made an output's events: written with it (Parquet metadata, or ``OUT.meta.json``)."""
    from ..util import package_version

    info = getattr(model, "pretrained_cfg", None) or {}
    settings = {
        "checkpoint": _checkpoint_of(model),
        "architecture": info.get("architecture"),
        "labels": list(labels),
        "scorer": scorer,
        "method": method,
        "window_s": float(window) if method == "windows" else None,
        "hop_s": float(hop) if method == "windows" else None,
        "column_s": None if method == "windows" else (32 * model.audio.config.hop_length
                                                      / model.audio.config.sample_rate),
        "mono": bool(mono),
        **postprocess.settings(),
        "package_version": package_version(),
        **extra,
    }
    return {k: v for k, v in settings.items() if v is not None}


def _checkpoint_of(model) -> str | None:
    """The model's :func:`~audioclip.factory.checkpoint_id`; None for a model not made by ``create_model``."""
    from ..factory import checkpoint_id

    try:
        return checkpoint_id(model)
    except ValueError:
        return None


def _tuple(value):
    """A threshold as PostProcessing keeps it: None, one float, or a tuple of floats (one per label)."""
    if value is None:
        return None
    values = np.asarray(value, dtype=float)
    return float(values) if values.ndim == 0 else tuple(values.tolist())
