"""The trained classifier, its mixture with zero-shot, and honest numbers for both.

Shapes: ``N`` clips, ``D`` embedding size, ``C`` classes (the background class is
one of them in a single-label problem).

- **Solver**: scikit-learn's ``LogisticRegression`` (L-BFGS, L2 penalty) on the
  L2-normalised embeddings: multinomial for one label per clip, one binary
  regression per class for several. A well-kept, deterministic solver of a
  convex problem: its optimum does not depend on where it starts, so the head
  equals what scikit-learn gives on the same vectors with the same settings.
- **Zero-shot partner**: ``scale * (T - mean(T))``, the class names' text
  vectors ``T`` ``(C, D)`` (prompt ensembling) times the model's audio-text
  logit scale; centring changes no softmax and gives sigmoids a neutral point.
- **Mixture** (WiSE-FT, Wortsman et al. 2022): logits ``(1 - a) * zero-shot +
  a * trained``; ``a`` (and the regularisation ``C``) are chosen on validation
  folds, ``a = 0`` (zero-shot itself) among the candidates, so the mixture is
  never worse than zero-shot on those folds.
- **Threshold** (with a background class): the smallest score for a class that
  lets at most ``max_false_positives`` of the validation folds' background
  clips through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .folds import sample_shots

__all__ = ["ALPHAS", "Arrays", "Selection", "evaluate", "logistic_regression", "select", "train_linear"]

#: mixing weights tried on the validation folds (0: zero-shot, 1: the trained classifier alone)
ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
MAX_ITER = 1000


@dataclass
class Arrays:
    """The problem as arrays: ``X`` ``(N, D)`` normalised float64, ``Y`` ``(N, C)`` multi-hot, ``zeroshot``
    ``(C, D)`` the zero-shot layer; ``background`` the background class's column (single-label only)."""

    X: np.ndarray
    Y: np.ndarray
    zeroshot: np.ndarray
    multilabel: bool = False
    background: int | None = None

    @property
    def y(self) -> np.ndarray:
        """``(N,)`` the class of each clip (single-label)."""
        return self.Y.argmax(axis=1)


def logistic_regression(C: float):
    """The scikit-learn estimator the head is (``C``: inverse L2 strength; the rest scikit-learn's defaults)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=MAX_ITER)


def train_linear(X: np.ndarray, Y: np.ndarray, multilabel: bool, C: float) -> tuple[np.ndarray, np.ndarray]:
    """``(C_classes, D)`` weight and ``(C_classes,)`` bias of the logistic regression fitted on ``X``, ``Y``.

    Single-label: the multinomial model (with two classes scikit-learn fits one logit ``z``; the layer holds
    ``-z/2, z/2``, whose softmax is the same probabilities). A class absent from ``Y`` (possible in a small
    validation split) gets a zero row and the lowest bias of the others: the zero-shot part still sees it.
    Multi-label: one binary regression per class; a class that is always (never) present gets a constant.
    """
    n_classes, dim = Y.shape[1], X.shape[1]
    W, b = np.zeros((n_classes, dim)), np.zeros(n_classes)
    if multilabel:
        for c in range(n_classes):
            column = Y[:, c]
            if column.min() == column.max():
                b[c] = 20.0 if column[0] else -20.0
                continue
            model = logistic_regression(C).fit(X, column)
            W[c], b[c] = model.coef_[0], model.intercept_[0]
        return W, b
    y = Y.argmax(axis=1)
    present = np.unique(y)
    if len(present) < 2:
        b[:] = -20.0
        b[present] = 0.0
        return W, b
    model = logistic_regression(C).fit(X, y)
    classes = model.classes_
    if len(classes) == 2:
        W[classes], b[classes] = np.stack([-model.coef_[0] / 2, model.coef_[0] / 2]), \
            np.array([-model.intercept_[0] / 2, model.intercept_[0] / 2])
    else:
        W[classes], b[classes] = model.coef_, model.intercept_
    absent = np.setdiff1d(np.arange(n_classes), classes)
    if len(absent):
        b[absent] = b[classes].min()
    return W, b


def activate(z: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(P: np.ndarray, Y: np.ndarray, multilabel: bool) -> float:
    """What the choices maximise: accuracy, or (multi-label) the mean average precision over classes."""
    if not multilabel:
        return float((P.argmax(axis=1) == Y.argmax(axis=1)).mean())
    from sklearn.metrics import average_precision_score

    keep = Y.sum(axis=0) > 0
    if not keep.any():
        return float("nan")
    return float(average_precision_score(Y[:, keep], P[:, keep], average="macro"))


def choose_threshold(P: np.ndarray, Y: np.ndarray, background: int | None, max_false_positives: float) -> float:
    """The lowest class score that lets at most ``max_false_positives`` of the background clips in ``P`` through.

    A background clip is a false positive when its best class is not the background and scores at least the
    threshold. 0.0 when there is no background class (or no background clip to learn it from).
    """
    if background is None:
        return 0.0
    rows = Y[:, background] > 0
    if not rows.any():
        return 0.0
    top = P[rows].argmax(axis=1)
    others = np.delete(P[rows], background, axis=1).max(axis=1)
    passing = np.sort(others[top != background])[::-1]
    allowed = int(math.floor(max_false_positives * rows.sum() + 1e-9))
    if allowed >= len(passing):
        return 0.0
    return float(np.nextafter(passing[allowed], np.inf))


def decide(P: np.ndarray, background: int | None, threshold: float) -> np.ndarray:
    """``(N,)`` the decided class per row, -1 for "none" (background won, or the best class is below threshold)."""
    best = P.argmax(axis=1)
    out = best.copy()
    if background is not None:
        out[best == background] = -1
    out[P.max(axis=1) < threshold] = -1
    return out


@dataclass
class Selection:
    """What the validation folds chose, and their scores: ``scores[(C, alpha)]`` the mean over folds."""

    C: float
    alpha: float
    threshold: float
    scores: dict[tuple[float, float], float] = field(default_factory=dict)
    folds: list[int] = field(default_factory=list)

    @property
    def zeroshot_score(self) -> float:
        return self.scores[(self.C, 0.0)]

    @property
    def best_score(self) -> float:
        return self.scores[(self.C, self.alpha)]


def select(arr: Arrays, pool: np.ndarray, folds: np.ndarray, *, shots: int | None, rng: np.random.Generator,
           Cs: Sequence[float], alphas: Sequence[float] = ALPHAS, max_false_positives: float = 0.05) -> Selection:
    """Choose ``C`` and the mixing weight on the folds of ``pool`` (each left out in turn; ``shots`` per class
    drawn from the others), then the threshold on the left-out predictions at that choice.

    Ties go to the smaller weight (nearer zero-shot), then the smaller ``C`` (the simpler classifier).
    """
    pool = np.asarray(pool)
    inner = sorted(set(folds[pool].tolist()))
    allowed = sorted(set(float(a) for a in alphas))
    alphas = sorted(set(allowed) | {0.0, 1.0})  # zero-shot and the trained classifier alone: always reported
    if len(inner) < 2:
        raise ValueError("choosing on validation folds needs at least two folds")
    zs_logits = arr.X @ arr.zeroshot.T
    oof = {C: np.zeros((len(arr.X), arr.Y.shape[1])) for C in Cs}
    draws = {v: sample_shots(arr.Y, pool[folds[pool] != v], shots, rng) for v in inner}
    for C in Cs:
        for v in inner:
            train = draws[v]
            W, b = train_linear(arr.X[train], arr.Y[train], arr.multilabel, C)
            val = pool[folds[pool] == v]
            oof[C][val] = arr.X[val] @ W.T + b
    scores = {}
    for C in Cs:
        for a in alphas:
            per_fold = []
            for v in inner:
                val = pool[folds[pool] == v]
                P = activate((1 - a) * zs_logits[val] + a * oof[C][val], arr.multilabel)
                per_fold.append(score(P, arr.Y[val], arr.multilabel))
            scores[(float(C), float(a))] = float(np.nanmean(per_fold))
    best = max((k for k in scores if k[1] in allowed), key=lambda k: (scores[k], -k[1], -k[0]))
    C, a = best
    P = activate((1 - a) * zs_logits[pool] + a * oof[C][pool], arr.multilabel)
    threshold = 0.0 if arr.multilabel else choose_threshold(P, arr.Y[pool], arr.background, max_false_positives)
    return Selection(C, a, threshold, scores, inner)


def metrics(P: np.ndarray, Y: np.ndarray, multilabel: bool, background: int | None = None,
            threshold: float = 0.0, detail: bool = False, classes: Sequence[str] = ()) -> dict:
    """Accuracy (multi-label: mAP too), macro F1, and with a background class the share of background clips let
    through as a class (``false_positive_rate``) at ``threshold``; ``detail`` adds per-class precision and recall
    and the confusion matrix (rows: true class)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    n = Y.shape[1]
    if multilabel:
        hits = (P >= 0.5).astype(int)
        out = {"mAP": score(P, Y, True), "macro_f1": float(f1_score(Y, hits, average="macro", zero_division=0)),
               "accuracy": float((hits == Y).all(axis=1).mean())}
        if detail:
            p, r, _, support = precision_recall_fscore_support(Y, hits, zero_division=0)
            out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "clips": int(support[i])}
                                for i, c in enumerate(classes)}
        return out
    y, pred = Y.argmax(axis=1), P.argmax(axis=1)
    out = {"accuracy": float((pred == y).mean()),
           "macro_f1": float(f1_score(y, pred, labels=list(range(n)), average="macro", zero_division=0))}
    if background is not None:
        rows = y == background
        decided = decide(P, background, threshold)
        out["false_positive_rate"] = float((decided[rows] >= 0).mean()) if rows.any() else None
        real = ~rows
        out["missed_rate"] = float((decided[real] < 0).mean()) if real.any() else None
    if detail:
        p, r, _, support = precision_recall_fscore_support(y, pred, labels=list(range(n)), zero_division=0)
        out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "clips": int(support[i])}
                            for i, c in enumerate(classes)}
        out["confusion"] = confusion_matrix(y, pred, labels=list(range(n))).tolist()
    return out


def _mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": len(values)}


def evaluate(arr: Arrays, folds: np.ndarray, *, shots: Sequence[int | None], seeds: int, Cs: Sequence[float],
             alphas: Sequence[float] = ALPHAS, max_false_positives: float = 0.05, classes: Sequence[str] = ()) -> dict:
    """Each fold left out in turn as the test set, the rest fitted on (``shots`` per class, ``seeds`` draws),
    with the choices made on the rest's own folds: zero-shot, the trained classifier and the mixture side by side.

    Returns ``{"folds": [...], "shots": [one entry per shot count], "detail": {...}}``: per shot count each
    metric's mean and standard deviation over the seeds (each seed's predictions pooled over the test folds),
    the chosen weights, and the validation scores of zero-shot and of the mixture; ``detail``: per-class
    precision and recall and the confusion matrices of zero-shot and the mixture, at the last shot count, seed 0.
    """
    outer = sorted(set(folds.tolist()))
    if len(outer) < 3:
        return {"folds": outer, "shots": [], "note": "evaluation needs at least three folds (one to test, two to "
                "choose the mixing weight on); the head was still fitted and its choices made on the folds"}
    zs_logits = arr.X @ arr.zeroshot.T
    results, detail = [], {}
    for s_i, count in enumerate(shots):
        runs = {"zeroshot": [], "head": [], "combined": []}
        chosen, validation = [], {"zeroshot": [], "combined": []}
        for seed in range(seeds):
            rng = np.random.default_rng([seed, s_i])
            P = {k: np.zeros(arr.Y.shape) for k in runs}
            thresholds = np.zeros(len(arr.X))
            for k in outer:
                test = np.flatnonzero(folds == k)
                pool = np.flatnonzero(folds != k)
                sel = select(arr, pool, folds, shots=count, rng=rng, Cs=Cs, alphas=alphas,
                             max_false_positives=max_false_positives)
                train = sample_shots(arr.Y, pool, count, rng)
                W, b = train_linear(arr.X[train], arr.Y[train], arr.multilabel, sel.C)
                z_head = arr.X[test] @ W.T + b
                P["zeroshot"][test] = activate(zs_logits[test], arr.multilabel)
                P["head"][test] = activate(z_head, arr.multilabel)
                P["combined"][test] = activate((1 - sel.alpha) * zs_logits[test] + sel.alpha * z_head, arr.multilabel)
                thresholds[test] = sel.threshold
                chosen.append({"seed": seed, "test_fold": k, "C": sel.C, "alpha": sel.alpha,
                               "threshold": sel.threshold})
                validation["zeroshot"].append(sel.zeroshot_score)
                validation["combined"].append(sel.best_score)
            for kind in runs:
                # the threshold belongs to the mixture; zero-shot and the trained head are shown at 0
                if kind == "combined" and arr.background is not None:
                    m = _per_fold_threshold_metrics(P[kind], arr, folds, outer, thresholds)
                else:
                    m = metrics(P[kind], arr.Y, arr.multilabel, arr.background, 0.0)
                runs[kind].append(m)
            if s_i == len(shots) - 1 and seed == 0:
                detail = {kind: metrics(P[kind], arr.Y, arr.multilabel, arr.background, 0.0, detail=True,
                                        classes=classes) for kind in ("zeroshot", "combined")}
        entry = {"shots": "all" if count is None else count, "seeds": seeds}
        for kind, found in runs.items():
            entry[kind] = {name: _mean_std([m.get(name) for m in found]) for name in found[0]}
        entry["chosen"] = chosen
        entry["validation"] = {k: _mean_std(v) for k, v in validation.items()}
        results.append(entry)
    return {"folds": outer, "shots": results, "detail": detail}


def _per_fold_threshold_metrics(P, arr: Arrays, folds, outer, thresholds) -> dict:
    """:func:`metrics` of the mixture with each test fold's own threshold (chosen without it)."""
    out = metrics(P, arr.Y, arr.multilabel, arr.background, 0.0)
    y = arr.y
    decided = np.concatenate([decide(P[folds == k], arr.background, thresholds[folds == k][0]) for k in outer])
    truth = np.concatenate([y[folds == k] for k in outer])
    bg = truth == arr.background
    out["false_positive_rate"] = float((decided[bg] >= 0).mean()) if bg.any() else None
    out["missed_rate"] = float((decided[~bg] < 0).mean()) if (~bg).any() else None
    return out
