"""Pictures of the results (matplotlib, Agg backend): confusion matrix, per-class scores, precision-recall."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..io import atomic_write

__all__ = ["plot_confusion", "plot_per_class", "plot_pr_curves"]

_MAX_LABELLED = 60  # beyond this many classes, tick labels are unreadable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> None:
    # Through a file object, so matplotlib cannot guess the format from the
    # temporary name: it is the destination's suffix (png unless told otherwise).
    fmt = os.path.splitext(os.fspath(path))[1][1:].lower() or None
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, dpi=110, format=fmt)
    finally:
        plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], title: str, path: str | os.PathLike) -> None:
    """Row-normalised confusion matrix (row: true class; each row sums to 1)."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, matrix / np.where(totals > 0, totals, 1), np.nan)
    n = len(classes)
    size = min(20.0, max(6.0, 0.22 * n + 3)) if n <= _MAX_LABELLED else 12.0
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= _MAX_LABELLED:
        ax.set_xticks(range(n), labels=classes, rotation=90, fontsize=max(5, 10 - n // 10))
        ax.set_yticks(range(n), labels=classes, fontsize=max(5, 10 - n // 10))
        if n <= 12:
            for r in range(n):
                for c in range(n):
                    if matrix[r, c]:
                        color = "white" if share[r, c] > 0.5 else "black"
                        ax.text(c, r, f"{int(matrix[r, c])}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)


def plot_per_class(values: Sequence[float], classes: Sequence[str], title: str, path: str | os.PathLike,
                   metric: str = "accuracy", mean: float | None = None, counts: Sequence[int] | None = None) -> None:
    """Horizontal bars, best class on top; with many classes, the 30 worst and the 30 best only."""
    plt = _pyplot()
    values = np.asarray(values, dtype=np.float64)
    known = np.flatnonzero(~np.isnan(values))
    order = known[np.argsort(-values[known], kind="stable")]
    shown_note = ""
    if len(order) > _MAX_LABELLED:
        order = np.concatenate([order[:30], order[-30:]])
        shown_note = f" (best 30 and worst 30 of {len(known)})"
    height = max(3.0, 0.22 * len(order) + 1.5)
    fig, ax = plt.subplots(figsize=(8, height))
    y = np.arange(len(order))[::-1]
    ax.barh(y, values[order] * 100, color="#4878a8")
    if counts is not None:
        for yy, i in zip(y, order):
            ax.text(min(values[i] * 100 + 1, 88), yy, f"{values[i] * 100:.1f} % of {int(counts[i])}",
                    va="center", fontsize=7)
    ax.set_yticks(y, labels=[classes[i] for i in order], fontsize=8)
    if shown_note:
        ax.axhline(len(order) / 2 - 0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(-0.6, len(order) - 0.4)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{metric} (%)")
    if mean is not None and not np.isnan(mean):
        ax.axvline(mean * 100, color="#c44e52", linestyle="--", linewidth=1, label=f"overall {mean * 100:.2f} %")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title + shown_note, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(plt, fig, path)


def plot_pr_curves(curves: dict[str, np.ndarray], recall_levels: Sequence[float], title: str,
                   path: str | os.PathLike, maps: dict[str, float] | None = None) -> None:
    """Mean interpolated precision against recall, one line per query -> target pair."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for pair, precision in curves.items():
        label = pair.replace("-", " → ")
        if maps and maps.get(pair) is not None:
            label += f" (mAP {maps[pair] * 100:.2f} %)"
        ax.plot(np.asarray(recall_levels), np.asarray(precision) * 100, label=label, linewidth=1.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path)
