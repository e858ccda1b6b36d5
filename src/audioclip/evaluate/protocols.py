"""The three evaluations of the paper: zero-shot, supervised (fine-tuned) and querying.

Each returns a :class:`Report`: rows of numbers (one per modality or
modality pair, fold and metric, with the paper's figure beside it) plus what
the plots need (confusion matrices, per-class scores, precision-recall curves).
Embeddings come from :func:`audioclip.evaluate.embed.embed_items`, once per
modality, so every metric and pair of a run shares them (and later runs too,
through the store).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from ..metrics import (
    RECALL_LEVELS,
    accuracy,
    confusion_matrix,
    mean_average_precision,
    mean_std,
    per_class_accuracy,
    retrieval_metrics,
)
from .conventions import AudioConventions
from .datasets import EvalSet
from .embed import EmbeddingStore, Encoder, ItemEmbeddings, embed_items
from .paper import PaperValue, paper_value

__all__ = ["PAIRS", "TASKS", "Report", "RunOptions", "run_querying", "run_supervised", "run_zeroshot"]

#: the paper's three evaluations
Task = Literal["zeroshot", "supervised", "querying"]
#: a query modality and a target modality
Pair = Literal["text-image", "text-audio", "audio-image", "image-audio", "audio-audio"]
#: which targets count as relevant to a query: the same label set, or one sharing a label
Relevance = Literal["exact", "overlap"]
TASKS: tuple[Task, ...] = get_args(Task)
PAIRS: tuple[Pair, ...] = get_args(Pair)
RELEVANCE: tuple[Relevance, ...] = get_args(Relevance)


@dataclass
class RunOptions:
    """How embeddings are computed and kept."""

    store: EmbeddingStore = field(default_factory=lambda: EmbeddingStore(enabled=False))
    batch_size: int = 16
    workers: int = 0
    progress: bool = True


@dataclass
class Report:
    """What one evaluation produced."""

    task: str
    dataset: EvalSet
    checkpoint: str
    checkpoint_id: str
    conventions: AudioConventions | None
    templates: list[str]
    rows: list[dict] = field(default_factory=list)
    per_class: dict[str, dict] = field(default_factory=dict)  # modality -> {metric, values, counts}
    confusion: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (classes, classes)
    pr_curves: dict[str, np.ndarray] = field(default_factory=dict)  # pair -> precision at RECALL_LEVELS
    embedding: dict[str, dict] = field(default_factory=dict)  # modality -> computed / cached / failures
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, modality: str, metric: str, value: float, fold="all", n: int | None = None, **extra) -> None:
        paper = paper_value(self.task, self.dataset.name, modality, metric) if fold in ("all", "mean") else None
        if paper is not None and paper.value is not None and self.dataset.partial:
            paper = PaperValue(None, f"not comparable: this run covers part of the dataset "
                                     f"({'; '.join(self.dataset.partial)}); the paper's figure is {paper.text()} %")
        row = {"task": self.task, "dataset": self.dataset.name, "checkpoint": self.checkpoint, "modality": modality,
               "fold": fold, "metric": metric, "value": _clean(value), "n": n}
        if paper is not None:
            row["paper"] = paper.value
            row["paper_source"] = paper.source
        row.update(extra)
        self.rows.append(row)

    @property
    def failures(self) -> list[tuple[str, str]]:
        seen = {}
        for info in self.embedding.values():
            for path, reason in info.get("failures", []):
                seen.setdefault(path, reason)
        return list(seen.items())

    def note_embeddings(self, emb: ItemEmbeddings, key: str | None = None) -> None:
        info = self.embedding.setdefault(key or emb.modality, {"computed": 0, "cached": 0, "failures": []})
        info["computed"] += emb.computed
        info["cached"] += emb.cached
        info["failures"] += [list(f) for f in emb.failures]


def _listed(values) -> list:
    """A JSON-safe list: NaN becomes None."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def _clean(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _embed(encoder, data: EvalSet, modality, conventions, options: RunOptions, items=None) -> ItemEmbeddings:
    return embed_items(encoder, data.items if items is None else items, modality, set_identity=data.identity(),
                       conventions=conventions, store=options.store, batch_size=options.batch_size,
                       workers=options.workers, progress=options.progress)


def _modalities(data: EvalSet, wanted: Sequence[str] | None) -> list[str]:
    have = data.modalities
    possible = have + (["both"] if len(have) == 2 else [])
    if not wanted:
        return possible
    bad = [m for m in wanted if m not in possible]
    if bad:
        raise ValueError(f"{data.title} has no {', '.join(bad)} to classify (it has {' and '.join(have) or 'nothing'})")
    return list(wanted)


def _multi_hot(data: EvalSet, rows: np.ndarray) -> np.ndarray:
    hot = np.zeros((len(rows), len(data.classes)), dtype=np.int64)
    for r, i in enumerate(rows):
        hot[r, list(data.items[i].targets)] = 1
    return hot


# -- zero-shot ------------------------------------------------------------------------


def run_zeroshot(
    encoder: Encoder,
    data: EvalSet,
    *,
    modalities: Sequence[str] | None = None,
    templates: Sequence[str] = ("{}",),
    conventions: AudioConventions | None = None,
    options: RunOptions | None = None,
) -> Report:
    """Zero-shot classification of every item by its audio, its picture and both (logits added).

    Single-label sets: top-1 accuracy on all items, per fold and the mean over
    folds, with the confusion matrix and per-class accuracy. Multi-label sets:
    mAP over classes.
    """
    if encoder.kind != "audioclip":
        raise ValueError("zero-shot classification needs an AudioCLIP checkpoint, not a standalone classifier")
    options = options or RunOptions()
    wanted = _modalities(data, modalities)
    report = Report("zeroshot", data, encoder.checkpoint, encoder.checkpoint_id, conventions, list(templates))
    classes = encoder.class_vectors(data.classes, templates).numpy().astype(np.float64)
    scales = encoder.logit_scales()
    emb = {}
    for m in ("audio", "image"):
        if m in wanted or ("both" in wanted):
            emb[m] = _embed(encoder, data, m, conventions, options)
            report.note_embeddings(emb[m])
    for modality in wanted:
        parts = ["audio", "image"] if modality == "both" else [modality]
        ok = np.logical_and.reduce([emb[p].ok for p in parts])
        rows = np.flatnonzero(ok)
        if len(rows) == 0:
            report.notes.append(f"{modality}: nothing could be embedded")
            continue
        scores = sum(scales[f"{p}_text"] * emb[p].vectors[rows].astype(np.float64) @ classes.T for p in parts)
        _score_classification(report, data, modality, scores, rows)
    report.details["logit_scales"] = scales
    return report


def _score_classification(report: Report, data: EvalSet, modality: str, scores: np.ndarray, rows: np.ndarray) -> None:
    if data.multilabel:
        hot = _multi_hot(data, rows)
        value, per_class = mean_average_precision(scores, hot)
        report.add(modality, "mAP", value, n=len(rows))
        report.per_class[modality] = {"metric": "AP", "values": _listed(per_class),
                                      "counts": hot.sum(axis=0).tolist()}
        return
    targets = np.array([data.items[i].targets[0] for i in rows])
    report.add(modality, "accuracy", accuracy(scores, targets), n=len(rows))
    matrix = confusion_matrix(scores, targets)
    report.confusion[modality] = matrix
    report.per_class[modality] = {"metric": "accuracy", "values": _listed(per_class_accuracy(matrix)),
                                  "counts": matrix.sum(axis=1).tolist()}
    folds = np.array([data.items[i].fold for i in rows])
    if len(data.folds) > 1:
        per_fold = []
        for fold in data.folds:
            sel = folds == fold
            if sel.any():
                acc = accuracy(scores[sel], targets[sel])
                per_fold.append(acc)
                report.add(modality, "accuracy", acc, fold=fold, n=int(sel.sum()))
        mean, std = mean_std(per_fold)
        report.add(modality, "accuracy", mean, fold="mean", n=len(per_fold), std=_clean(std))


# -- supervised -------------------------------------------------------------------------


def run_supervised(
    encoder_for_fold: Callable[[int | None], Encoder],
    data: EvalSet,
    *,
    folds: Sequence[int] | None = None,
    templates: Sequence[str] = ("{}",),
    conventions: AudioConventions | None = None,
    options: RunOptions | None = None,
    label: str | None = None,
) -> Report:
    """Accuracy of fine-tuned checkpoints, each on its held-out fold, and the cross-validation mean.

    ``encoder_for_fold(k)`` gives the checkpoint trained without fold ``k``
    (``None`` for a dataset without folds: one checkpoint, every item). An
    AudioCLIP checkpoint classifies by its audio-text logits against the class
    prompts (as the original's evaluation); a standalone ESResNeXt-fbsp by its
    classifier. ``label`` names the set of checkpoints in the report (default:
    the first fold's file).
    """
    options = options or RunOptions()
    if "audio" not in data.modalities:
        raise ValueError(f"{data.title} has no audio; supervised evaluation is of fine-tuned audio models")
    todo = list(folds) if folds else (list(data.folds) or [None])
    first = None
    report = None
    per_fold, pooled_scores, pooled_targets, pooled_rows = [], [], [], []
    for fold in todo:
        encoder = encoder_for_fold(fold)
        if report is None:
            first = encoder
            report = Report("supervised", data, label or encoder.checkpoint, encoder.checkpoint_id, conventions,
                            list(templates))
        idx = [i for i, it in enumerate(data.items) if fold is None or it.fold == fold]
        if not idx:
            report.notes.append(f"fold {fold}: no items")
            continue
        emb = _embed(encoder, data, "audio", conventions, options, items=[data.items[i] for i in idx])
        report.note_embeddings(emb, "audio")
        rows = np.array(idx)[emb.ok]
        vectors = emb.vectors[emb.ok].astype(np.float64)
        if encoder.kind == "audioclip":
            classes = encoder.class_vectors(data.classes, templates).numpy().astype(np.float64)
            scores = encoder.logit_scales()["audio_text"] * vectors @ classes.T
        else:
            if vectors.shape[1] != len(data.classes):
                raise ValueError(f"fold {fold}: the classifier has {vectors.shape[1]} classes, "
                                 f"{data.title} has {len(data.classes)}")
            scores = vectors
        if data.multilabel:
            value, _ = mean_average_precision(scores, _multi_hot(data, rows))
            metric = "mAP"
        else:
            targets = np.array([data.items[i].targets[0] for i in rows])
            value, metric = accuracy(scores, targets), "accuracy"
            pooled_targets.append(targets)
        pooled_scores.append(scores)
        pooled_rows.append(rows)
        per_fold.append(value)
        report.add("audio", metric, value, fold="all" if fold is None else fold, n=len(rows),
                   checkpoint_file=encoder.checkpoint, checkpoint_id=encoder.checkpoint_id)
    if report is None or not pooled_scores:
        raise ValueError(f"{data.title}: nothing to evaluate")
    report.details["folds"] = [f for f in todo if f is not None]
    if not data.multilabel:
        scores, targets = np.concatenate(pooled_scores), np.concatenate(pooled_targets)
        matrix = confusion_matrix(scores, targets)
        report.confusion["audio"] = matrix
        report.per_class["audio"] = {"metric": "accuracy", "values": _listed(per_class_accuracy(matrix)),
                                     "counts": matrix.sum(axis=1).tolist()}
    if todo != [None]:
        mean, std = mean_std(per_fold)
        report.add("audio", "mAP" if data.multilabel else "accuracy", mean, fold="mean", n=len(per_fold),
                   std=_clean(std))
    report.details["checkpoint_kind"] = first.kind
    return report


# -- querying ------------------------------------------------------------------------------


def _parse_pair(pair: str) -> tuple[str, str]:
    if pair not in PAIRS:
        raise ValueError(f"unknown pair {pair!r}; known: {', '.join(PAIRS)}")
    source, target = pair.split("-")
    return source, target


def run_querying(
    encoder: Encoder,
    data: EvalSet,
    *,
    pairs: Sequence[str] | None = None,
    templates: Sequence[str] = ("{}",),
    relevance: Relevance = "exact",
    keep_paired: bool = False,
    conventions: AudioConventions | None = None,
    options: RunOptions | None = None,
    max_pairs: int = 2_000_000,
) -> Report:
    """Cross-modal querying (paper section 5.2): P@1, R@1 and mAP for each query -> target modality pair.

    Targets are the dataset's items of the target modality. Text queries are
    the target items' unique label sets (their labels joined with ``", "``, in
    each template). An audio or image query is every item with that modality;
    its query group is its label set, and the scores are averaged first over
    the queries of a group, then over groups, so that each unique label set
    counts once, as with text queries. A target is relevant when its label set
    equals the query's (``relevance="exact"``) or shares a label with it
    (``"overlap"``). A query never retrieves its own item (for cross-modal pairs
    its own picture or sound, unless ``keep_paired``).
    """
    if encoder.kind != "audioclip":
        raise ValueError("querying needs an AudioCLIP checkpoint")
    if relevance not in RELEVANCE:
        raise ValueError(f"relevance must be 'exact' or 'overlap', got {relevance!r}")
    options = options or RunOptions()
    have = set(data.modalities) | {"text"}
    if pairs:
        chosen = []
        for pair in pairs:
            s, t = _parse_pair(pair)
            if s not in have or t not in have:
                raise ValueError(f"{data.title} has no {t if t not in have else s}: pair {pair} is impossible")
            chosen.append(pair)
    else:
        chosen = [p for p in PAIRS if set(_parse_pair(p)) <= have]
    report = Report("querying", data, encoder.checkpoint, encoder.checkpoint_id, conventions, list(templates))
    report.details.update(relevance=relevance, keep_paired=keep_paired, averaging="label-set macro")
    emb: dict[str, ItemEmbeddings] = {}
    for pair in chosen:
        for m in _parse_pair(pair):
            if m != "text" and m not in emb:
                emb[m] = _embed(encoder, data, m, conventions, options)
                report.note_embeddings(emb[m])
    label_sets = [tuple(sorted(set(it.targets))) for it in data.items]
    for pair in chosen:
        source, target = _parse_pair(pair)
        t_rows = np.flatnonzero(emb[target].ok)
        if len(t_rows) == 0:
            report.notes.append(f"{pair}: no {target} could be embedded")
            continue
        t_vec = torch.as_tensor(emb[target].vectors[t_rows], dtype=torch.float64)
        if source == "text":
            unique = list(dict.fromkeys(label_sets[i] for i in t_rows))
            first = {}
            for i in t_rows:
                first.setdefault(label_sets[i], i)
            texts = [", ".join(data.items[first[s]].labels) for s in unique]
            q_vec = encoder.class_vectors(texts, templates).to(torch.float64)
            q_sets, q_items, q_group = unique, np.full(len(unique), -1), np.arange(len(unique))
        else:
            q_rows = np.flatnonzero(emb[source].ok)
            q_vec = torch.as_tensor(emb[source].vectors[q_rows], dtype=torch.float64)
            q_sets = [label_sets[i] for i in q_rows]
            group_of = {s: g for g, s in enumerate(dict.fromkeys(q_sets))}
            q_items, q_group = q_rows, np.array([group_of[s] for s in q_sets])
        scores = _rank_queries(q_vec, t_vec, q_sets, q_items, [label_sets[i] for i in t_rows], t_rows,
                               len(data.classes), relevance, exclude_self=source == target or not keep_paired,
                               max_pairs=max_pairs)
        _report_pair(report, pair, scores, q_group, n_targets=len(t_rows))
    return report


def _rank_queries(q_vec, t_vec, q_sets, q_items, t_sets, t_items, num_classes, relevance, exclude_self, max_pairs):
    """Per-query retrieval scores, computing similarities and relevance a chunk of queries at a time."""
    n = t_vec.shape[0]
    t_items = torch.as_tensor(np.asarray(t_items))
    if relevance == "exact":
        ids = {s: i for i, s in enumerate(dict.fromkeys(list(q_sets) + list(t_sets)))}
        q_key = torch.as_tensor([ids[s] for s in q_sets])
        t_key = torch.as_tensor([ids[s] for s in t_sets])
    else:
        def hot(sets):
            h = torch.zeros(len(sets), num_classes, dtype=torch.float64)
            for r, s in enumerate(sets):
                h[r, list(s)] = 1.0
            return h
        q_hot, t_hot = hot(q_sets), hot(t_sets)
    q_items = torch.as_tensor(np.asarray(q_items))
    step = max(1, max_pairs // max(n, 1))
    parts = []
    for start in range(0, q_vec.shape[0], step):
        sl = slice(start, start + step)
        sim = q_vec[sl] @ t_vec.T
        if relevance == "exact":
            rel = q_key[sl, None] == t_key[None, :]
        else:
            rel = (q_hot[sl] @ t_hot.T) > 0
        exclude = (q_items[sl, None] == t_items[None, :]) if exclude_self else None
        parts.append(retrieval_metrics(sim, rel, k=1, exclude=exclude, max_pairs=max_pairs))
    return _concat(parts)


def _concat(parts):
    from ..metrics import RetrievalScores

    return RetrievalScores(
        parts[0].k,
        np.concatenate([p.precision_at_k for p in parts]),
        np.concatenate([p.recall_at_k for p in parts]),
        np.concatenate([p.average_precision for p in parts]),
        np.concatenate([p.num_relevant for p in parts]),
        np.concatenate([p.interpolated_precision for p in parts]),
    )


def _group_mean(values: np.ndarray, groups: np.ndarray, valid: np.ndarray) -> float:
    """Mean over groups of the mean over the group's valid queries (groups without any are left out)."""
    means = [values[(groups == g) & valid].mean(axis=0) for g in np.unique(groups[valid])]
    return float(np.mean(means)) if means else float("nan")


def _report_pair(report: Report, pair: str, s, groups: np.ndarray, n_targets: int) -> None:
    valid = s.valid
    n_groups = len(np.unique(groups[valid]))
    extra = dict(queries=int(valid.sum()), skipped_queries=int((~valid).sum()), targets=n_targets)
    for metric, values in (("P@1", s.precision_at_k), ("R@1", s.recall_at_k), ("mAP", s.average_precision)):
        report.add(pair, metric, _group_mean(values, groups, valid), n=n_groups,
                   micro=_clean(values[valid].mean()) if valid.any() else None, **extra)
    if valid.any():
        curves = s.interpolated_precision
        per_group = [curves[(groups == g) & valid].mean(axis=0) for g in np.unique(groups[valid])]
        report.pr_curves[pair] = np.mean(per_group, axis=0)
    report.details.setdefault("recall_levels", RECALL_LEVELS.tolist())
