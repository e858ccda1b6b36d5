"""Scores: top-1 accuracy (single-label) and mean average precision (multi-label)."""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "mean_average_precision", "score"]


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows whose highest score is the target class."""
    if len(targets) == 0:
        return float("nan")
    return float((scores.argmax(axis=1) == targets).mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: the mean of the precision at each positive, ranking by score (ties: stable order)."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(bool)
    if not hits.any():
        return float("nan")
    ranks = np.flatnonzero(hits) + 1
    return float((np.arange(1, len(ranks) + 1) / ranks).mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP over the classes that have at least one positive."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def score(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> tuple[str, float]:
    """(metric name, value): ``mAP`` for multi-label data, ``accuracy`` otherwise."""
    if multilabel:
        return "mAP", mean_average_precision(scores, targets)
    return "accuracy", accuracy(scores, targets)
