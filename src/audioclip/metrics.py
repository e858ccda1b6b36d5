"""Scores: accuracy, confusion matrix, multi-label mAP (torchmetrics) and per-query retrieval metrics.

One module for the numbers of both training (model selection, :func:`score`)
and evaluation (the reported tables), so the two never disagree.

Classification
    ``accuracy``: share of items whose highest score is their class (top-1;
    torchmetrics ``multiclass_accuracy``, micro average; a tie for the highest
    score goes to the lower class index). ``confusion_matrix`` (rows: true
    class, columns: predicted) and the per-class accuracy (recall) derived
    from it; a class without items has NaN.

Multi-label
    ``mean_average_precision``: torchmetrics ``multilabel_average_precision``
    per class (the area under the step precision-recall curve; tied scores form
    one threshold, as scikit-learn's ``average_precision_score``), averaged over
    the classes that have at least one positive item. Scores are mapped to
    [0, 1] by an order-preserving affine map in float64 first (torchmetrics
    would apply a sigmoid to logits, which saturates to 1.0 in float32 and
    creates ties).

Retrieval (``retrieval_metrics``), per query, over the targets ranked by
descending similarity, ties broken by target order (the earlier target
first), with ``R`` the query's relevant targets (``|R| >= 1``):

- ``P@k`` = (relevant among the top ``k``) / ``k``
- ``R@k`` = (relevant among the top ``k``) / ``|R|``
- ``AP``  = (1 / ``|R|``) x sum over the ranks ``i`` of relevant targets of
  ``P@i``  (non-interpolated average precision; mAP is its mean)
- the interpolated precision at recall ``r``: the highest ``P@i`` at any rank
  ``i`` whose recall is at least ``r`` (for precision-recall curves)

A query without any relevant target gets NaN for ``R@k`` and ``AP`` and is
left out of every mean (torchmetrics' ``empty_target_action="skip"``). These
are the definitions of torchmetrics' ``retrieval_precision``,
``retrieval_recall`` and ``retrieval_average_precision``, computed here in
chunks of queries rather than through torchmetrics because (1) its retrieval
classes keep every (query, target) pair in memory (400 million for AudioSet
audio-to-image) and loop over queries in Python, and (2) its retrieval
functions (torchmetrics 1.9, the version tested) count a target with a score of
zero or less as not retrieved (Lightning-AI/torchmetrics#3104), which would
silently change the metrics of cosine similarities. ``tests/test_metrics.py`` checks this code
against torchmetrics (on positive scores), scikit-learn's
``average_precision_score`` and hand-computed cases with ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "RetrievalScores",
    "accuracy",
    "confusion_matrix",
    "mean_average_precision",
    "mean_std",
    "per_class_accuracy",
    "retrieval_metrics",
    "retrieval_metrics_torchmetrics",
    "score",
]

#: the name of the one score a training run selects its best epoch by
ScoreName = Literal["accuracy", "mAP"]

RECALL_LEVELS = np.linspace(0.0, 1.0, 101)


def _tensor(x, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


# -- classification ------------------------------------------------------------------


def accuracy(scores, targets) -> float:
    """Top-1 accuracy of ``scores`` ``(n, classes)`` against integer ``targets`` ``(n,)``."""
    from torchmetrics.functional.classification import multiclass_accuracy

    scores, targets = _tensor(scores, torch.float64), _tensor(targets, torch.long)
    if targets.numel() == 0:
        return float("nan")
    preds = scores.argmax(dim=1)  # first maximum: ties go to the lower class index
    return float(multiclass_accuracy(preds, targets, num_classes=scores.shape[1], average="micro"))


def confusion_matrix(scores, targets) -> np.ndarray:
    """``(classes, classes)`` counts: row = true class, column = predicted (top-1) class."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    scores, targets = _tensor(scores, torch.float64), _tensor(targets, torch.long)
    preds = scores.argmax(dim=1)
    return multiclass_confusion_matrix(preds, targets, num_classes=scores.shape[1]).numpy()


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Per-class accuracy (recall) from a confusion matrix; NaN for classes without items."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


# -- multi-label -----------------------------------------------------------------------


def mean_average_precision(scores, multi_hot) -> tuple[float, np.ndarray]:
    """``(mAP, per-class AP)``: the mean over classes with a positive item; other classes get NaN."""
    from torchmetrics.functional.classification import multilabel_average_precision

    scores = _tensor(scores, torch.float64)
    target = _tensor(multi_hot).to(torch.long)
    per_class = np.full(scores.shape[1], np.nan)
    have = (target.sum(dim=0) > 0).nonzero().flatten()
    if have.numel() == 0:
        return float("nan"), per_class
    lo, hi = scores.min(), scores.max()
    unit = (scores - lo) / (hi - lo) if hi > lo else torch.full_like(scores, 0.5)
    ap = multilabel_average_precision(unit[:, have], target[:, have], num_labels=int(have.numel()),
                                      average=None, thresholds=None)
    per_class[have.numpy()] = ap.numpy()
    return float(np.mean(per_class[have.numpy()])), per_class


def score(scores, targets, multilabel: bool) -> tuple[ScoreName, float]:
    """(metric name, value): ``mAP`` of multi-hot ``targets`` for multi-label data, else top-1 ``accuracy``."""
    if multilabel:
        return "mAP", mean_average_precision(scores, targets)[0]
    return "accuracy", accuracy(scores, targets)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation of the values that are not None or NaN (NaN when too few)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# -- retrieval ---------------------------------------------------------------------------


@dataclass
class RetrievalScores:
    """Per-query values (NaN where a query has no relevant target, except ``precision_at_k``)."""

    k: int
    precision_at_k: np.ndarray  # (queries,)
    recall_at_k: np.ndarray
    average_precision: np.ndarray
    num_relevant: np.ndarray  # (queries,) int
    interpolated_precision: np.ndarray  # (queries, len(RECALL_LEVELS)); NaN rows for skipped queries

    @property
    def valid(self) -> np.ndarray:
        return self.num_relevant > 0


def retrieval_metrics(similarity, relevant, k: int = 1, exclude=None, max_pairs: int = 4_000_000) -> RetrievalScores:
    """P@k, R@k, AP and the interpolated precision-recall curve of every query.

    ``similarity`` and ``relevant`` are ``(queries, targets)``; ``exclude``
    (same shape, bool, optional) removes targets from a query's ranking (e.g.
    the query itself). Computed in chunks of queries of at most ``max_pairs``
    pairs.
    """
    sim = _tensor(similarity, torch.float64)
    rel = _tensor(relevant).bool()
    if sim.shape != rel.shape or sim.dim() != 2:
        raise ValueError(f"similarity {tuple(sim.shape)} and relevant {tuple(rel.shape)} must be equal 2-D shapes")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ex = _tensor(exclude).bool() if exclude is not None else None
    q, n = sim.shape
    levels = torch.as_tensor(RECALL_LEVELS)
    out = {name: np.full(q, np.nan) for name in ("p", "r", "ap")}
    num_rel = np.zeros(q, dtype=np.int64)
    interp = np.full((q, len(RECALL_LEVELS)), np.nan)
    step = max(1, max_pairs // max(n, 1))
    for start in range(0, q, step):
        s, r = sim[start:start + step].clone(), rel[start:start + step].clone()
        if ex is not None:
            e = ex[start:start + step]
            s[e] = -torch.inf
            r[e] = False
        # a stable sort of the negated scores: descending, ties in target order
        order = torch.sort(-s, dim=1, stable=True).indices
        # excluded targets rank last and are never relevant, so they change nothing below
        hits = torch.gather(r, 1, order).to(torch.float64)
        nrel = hits.sum(dim=1)
        top = hits[:, :k].sum(dim=1)  # P@k divides by k, as torchmetrics (adaptive_k=False)
        cum = hits.cumsum(dim=1)
        ranks = torch.arange(1, n + 1, dtype=torch.float64)
        precision = cum / ranks
        has = nrel > 0
        ap = (precision * hits).sum(dim=1) / nrel.clamp(min=1)
        out["p"][start:start + step] = (top / k).numpy()
        out["r"][start:start + step] = torch.where(has, top / nrel.clamp(min=1), torch.nan).numpy()
        out["ap"][start:start + step] = torch.where(has, ap, torch.nan).numpy()
        num_rel[start:start + step] = nrel.to(torch.int64).numpy()
        # interpolated precision: best precision at any rank reaching recall >= level
        recall = cum / nrel.clamp(min=1)[:, None]
        best_after = precision.flip(1).cummax(dim=1).values.flip(1)
        where = torch.searchsorted(recall.contiguous(), levels.expand(recall.shape[0], -1).contiguous())
        where = where.clamp(max=n - 1)
        curve = torch.gather(best_after, 1, where)
        curve[~has] = torch.nan
        interp[start:start + step] = curve.numpy()
    return RetrievalScores(k, out["p"], out["r"], out["ap"], num_rel, interp)


def retrieval_metrics_torchmetrics(similarity, relevant, k: int = 1, exclude=None) -> RetrievalScores:
    """The same per-query values from torchmetrics' functional retrieval metrics, one query at a time.

    A reference for :func:`retrieval_metrics` (slow: a Python loop over
    queries). torchmetrics (1.9) counts a target whose score is zero or
    negative as not retrieved at all, and works in float32; cosine
    similarities are often negative, so each query's scores are handed over
    as ``(n - rank) / n`` (rank 0 = most similar, ties in target order), which
    keeps the ranking and makes every score positive.
    """
    from torchmetrics.functional.retrieval import (
        retrieval_average_precision,
        retrieval_precision,
        retrieval_recall,
    )

    sim = _tensor(similarity, torch.float64)
    rel = _tensor(relevant).bool()
    q = sim.shape[0]
    p, r, ap = np.full(q, np.nan), np.full(q, np.nan), np.full(q, np.nan)
    num_rel = np.zeros(q, dtype=np.int64)
    for i in range(q):
        keep = ~_tensor(exclude[i]).bool() if exclude is not None else torch.ones(sim.shape[1], dtype=torch.bool)
        s, t = sim[i][keep], rel[i][keep]
        order = torch.sort(-s, stable=True).indices
        s = torch.empty_like(s, dtype=torch.float32)
        s[order] = (len(s) - torch.arange(len(s), dtype=torch.float32)) / len(s)
        num_rel[i] = int(t.sum())
        p[i] = float(retrieval_precision(s, t, top_k=k))
        if num_rel[i]:
            r[i] = float(retrieval_recall(s, t, top_k=k))
            ap[i] = float(retrieval_average_precision(s, t))
    return RetrievalScores(k, p, r, ap, num_rel, np.full((q, len(RECALL_LEVELS)), np.nan))
