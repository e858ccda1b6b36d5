"""``audioclip fit`` in Python: embed a labelled data set once, fit a head, evaluate it, write the head folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..heads import Head
from ..io import exclusive_lock
from ..util import package_version
from .data import DataError, LabelledData, check_shots, label_text, parse_shots, read_data
from .folder import CONFUSION_NAME, EMBEDDINGS_NAME, REPORT_NAME, head_folder_problem
from .folds import assign_folds
from .solver import ALPHAS, Arrays, evaluate, select, train_linear

__all__ = ["EMBEDDINGS_NAME", "FitReport", "fit", "format_summary", "parse_shots"]

DEFAULT_CS = (1.0, 10.0, 100.0)


@dataclass
class FitReport:
    """What a fit did: the head, the report written beside it, the clips left out and why."""

    head: Head
    folder: str
    report: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    embedded: int = 0
    reused: int = 0
    seconds_embedding: float = 0.0
    seconds_fitting: float = 0.0


def fit(
    model,
    data: LabelledData | str | os.PathLike,
    out: str | os.PathLike,
    *,
    embeddings: str | os.PathLike | None = None,
    background: str | None = None,
    templates: str | Sequence[str] = "{}",
    shots: Sequence[int | None] | str = (None,),
    seeds: int = 1,
    Cs: Sequence[float] = DEFAULT_CS,
    alpha: float | None = None,
    max_false_positives: float = 0.05,
    n_folds: int = 5,
    options=None,
    batch_size: int = 16,
    workers: int = 0,
    precision: str = "fp32",
    plot: bool = True,
    on_result: Callable[[str, str | None], None] | None = None,
) -> FitReport:
    """Fit a head on ``data`` (a folder of class folders, a CSV/Parquet table, or :func:`read_data`'s result) and
    write it to the folder ``out``.

    The clips are embedded once into ``out/embeddings.parquet`` (:func:`audioclip.engines.embed_to`; a re-run, or
    a run cut short, embeds only what is missing), or read from ``embeddings`` (an ``audioclip embed`` output made
    with the same checkpoint). ``alpha`` fixes the mixing weight (1: the trained classifier alone) instead of
    choosing it. ``out`` is replaced whole when the head is ready (a fit cut short leaves the previous head), so
    it must be a new folder or a head folder: one that holds anything else is refused with a
    :class:`~audioclip.heads.HeadError` before anything is written (its ``embeddings.parquet`` is always kept).
    Embeddings of another checkpoint are a :class:`~audioclip.fit.DataError`.
    Clips that could not be embedded are left out and listed in :attr:`FitReport.problems`.
    """
    if not isinstance(data, LabelledData):
        data = read_data(data, background=background)
    shots = parse_shots(shots) if isinstance(shots, str) else list(shots)
    check_shots(data, shots)
    out = Path(out)
    check_head_folder(out)
    with exclusive_lock(_lock_path(out)):  # one fit at a time into a folder: a second one stops at once
        return _fit(model, data, out, embeddings=embeddings, templates=templates, shots=shots, seeds=seeds, Cs=Cs,
                    alpha=alpha, max_false_positives=max_false_positives, n_folds=n_folds, options=options,
                    batch_size=batch_size, workers=workers, precision=precision, plot=plot, on_result=on_result)


def _fit(model, data: LabelledData, out: Path, *, embeddings, templates, shots, seeds, Cs, alpha,
         max_false_positives, n_folds, options, batch_size, workers, precision, plot, on_result) -> FitReport:
    from ..embeddings_io import read_embeddings
    from ..engines import embed_to
    from ..factory import checkpoint_id
    from ..inference import DecodeOptions, text_classifier

    problems = list(data.problems)
    ident = checkpoint_id(model)
    paths = [e.path for e in data.examples]

    start = time.perf_counter()
    embedded = reused = 0
    if embeddings is None:
        options = options or DecodeOptions(image_size=model.visual.image_size)
        report = embed_to(model, paths, out / EMBEDDINGS_NAME, options=options, batch_size=batch_size,
                          precision=precision, workers=workers, on_result=on_result)
        embedded, reused = report.done, report.skipped
        failed = {path: reason for path, reason in report.failed}
        source = out / EMBEDDINGS_NAME
    else:
        failed, source = {}, Path(embeddings)
    table = read_embeddings(source)
    settings = dict(table.settings)
    if settings.get("checkpoint") not in (None, ident):
        raise DataError(f"{source}: embeddings of checkpoint {settings.get('checkpoint')}, but the model is {ident}; "
                         "give the checkpoint they were made with")
    vectors = _pooled_audio(table)
    for path, reason in sorted(failed.items()):
        problems.append(f"{path}: {reason}; left out")
    left_out = set(failed)
    for e in data.examples:
        if e.path not in vectors and e.path not in failed:
            problems.append(f"{e.path}: {'has no sound' if embeddings is None else f'not in {source}'}; left out")
            left_out.add(e.path)
    if left_out:
        from .data import check_data

        background = data.background  # a multi-label table's background is no class any more: kept aside
        data = check_data(data.without(left_out), background=None if data.multilabel else background)
        data.background = background if data.multilabel else data.background
        problems += [p for p in data.problems if p not in problems]
    seconds_embedding = time.perf_counter() - start

    start = time.perf_counter()
    classes = list(data.classes)
    index = {c: i for i, c in enumerate(classes)}
    X = np.stack([vectors[e.path] for e in data.examples]).astype(np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = np.zeros((len(X), len(classes)), dtype=np.int64)
    for row, e in enumerate(data.examples):
        for label in e.labels or ((data.background,) if not data.multilabel else ()):
            Y[row, index[label]] = 1
    import torch

    with torch.no_grad():
        text = text_classifier(model, [label_text(c) for c in classes], templates).double().numpy()
    scale = float(model.logit_scales()["audio_text"].detach())
    zeroshot = scale * (text - text.mean(axis=0, keepdims=True))
    background_index = index.get(data.background) if data.background and not data.multilabel else None
    arr = Arrays(X, Y, zeroshot, data.multilabel, background_index)
    strata = np.where(Y.sum(axis=1) > 0, Y.argmax(axis=1), -1)
    folds = assign_folds(data.examples, strata, n_folds=n_folds)
    alphas = ALPHAS if alpha is None else (float(alpha),)

    from threadpoolctl import threadpool_limits

    # Hundreds of small regressions: one BLAS thread each is many times faster than threads that wait for
    # each other (and for torch's) on every small matrix product.
    with threadpool_limits(limits=1):
        evaluation = evaluate(arr, folds, shots=shots, seeds=seeds, Cs=Cs, alphas=alphas,
                              max_false_positives=max_false_positives, classes=classes)
        everything = np.arange(len(X))
        sel = select(arr, everything, folds, shots=None, rng=np.random.default_rng(0), Cs=Cs, alphas=alphas,
                     max_false_positives=max_false_positives)
        W, b = train_linear(X, Y, data.multilabel, sel.C)
    seconds_fitting = time.perf_counter() - start

    report = {
        "data": data.source, "clips": len(X), "classes": classes, "background": data.background,
        "multilabel": data.multilabel, "counts": {c: int(Y[:, i].sum()) for i, c in enumerate(classes)},
        "folds": {"source": "data" if data.has_folds else "grouped", "numbers": sorted(set(folds.tolist()))},
        "solver": {"name": "sklearn.linear_model.LogisticRegression", "C": sel.C, "C_tried": list(Cs),
                   "max_iter": 1000, "penalty": "l2"},
        "mixing": {"alpha": sel.alpha, "alphas_tried": list(alphas),
                   "validation": {"zeroshot": sel.zeroshot_score, "combined": sel.best_score,
                                  "trained": sel.scores.get((sel.C, 1.0))}},
        "threshold": sel.threshold, "max_false_positives": max_false_positives,
        "evaluation": evaluation, "problems": problems,
        "seconds": {"embedding": round(seconds_embedding, 3), "fitting": round(seconds_fitting, 3)},
    }
    parts = {"trained.weight": torch.from_numpy(W).float(), "trained.bias": torch.from_numpy(b).float(),
             "zeroshot.weight": torch.from_numpy(zeroshot).float()}
    from ..heads.head import mix

    weight, bias = mix(parts, sel.alpha)
    info = {key: settings[key] for key in ("checkpoint", "checkpoint_name", "checkpoint_sha256", "architecture",
                                            "window_s", "hop_s", "sample_rate", "mono", "audio_mode")
            if key in settings}
    info.setdefault("checkpoint", ident)
    info.update({"templates": [templates] if isinstance(templates, str) else list(templates),
                 "label_texts": [label_text(c) for c in classes], "multilabel": data.multilabel,
                 "solver": report["solver"], "metrics": _summary_metrics(report),
                 "package_version": package_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    head = Head(classes, weight, bias, "sigmoid" if data.multilabel else "softmax",
                None if data.multilabel else data.background, sel.threshold,
                sel.alpha, parts, info)
    extra = {REPORT_NAME: (json.dumps(report, indent=2, default=_jsonable) + "\n").encode()}
    if plot and not data.multilabel and evaluation.get("detail"):
        try:
            extra[CONFUSION_NAME] = _confusion_png(evaluation, classes)
        except ImportError:  # matplotlib (the fit extra) is not installed: the numbers are in report.json
            pass
    check_head_folder(out)  # again: the folder is replaced whole, and the user may have added a file meanwhile
    # the embeddings in the folder are kept, also when --embeddings named another file (or that very one)
    head.save(out, extra=extra, carry=(EMBEDDINGS_NAME,))
    head.folder = str(out)
    return FitReport(head, str(out), report, problems, embedded, reused, seconds_embedding, seconds_fitting)


def check_head_folder(out: str | os.PathLike) -> None:
    """A :class:`~audioclip.heads.HeadError` if ``out`` is a file, or a folder holding more than a head's files."""
    from ..heads import HeadError

    problem = head_folder_problem(out)
    if problem is not None:
        raise HeadError(problem)


def _lock_path(out: Path) -> Path:
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    return parent / f".{out.name}.fit.lock"


def _pooled_audio(table) -> dict[str, np.ndarray]:
    """path -> its pooled audio vector, from an embed output."""
    import pyarrow.compute as pc

    t = table.table
    keep = pc.and_(pc.equal(t["kind"], "pooled"), pc.equal(t["modality"], "audio"))
    rows = t.filter(keep)
    matrix = np.asarray(rows["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                        dtype=np.float32).reshape(rows.num_rows, -1)
    return dict(zip(rows["path"].to_pylist(), matrix))


def _summary_metrics(report: dict) -> dict:
    """The numbers head.json keeps: the validation scores and, per shot count, the test means."""
    out = {"validation": report["mixing"]["validation"]}
    for entry in report["evaluation"].get("shots", []):
        out[f"shots={entry['shots']}"] = {kind: {m: v["mean"] for m, v in entry[kind].items()}
                                          for kind in ("zeroshot", "head", "combined")}
    return out


def _confusion_png(evaluation: dict, classes: list[str]) -> bytes:
    import tempfile

    from ..evaluate.plots import plot_confusion

    matrix = np.array(evaluation["detail"]["combined"]["confusion"])
    shots = evaluation["shots"][-1]["shots"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFUSION_NAME
        plot_confusion(matrix, classes, f"head mixed with zero-shot, test folds (shots: {shots}, seed 0)", path)
        return path.read_bytes()


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def format_summary(report: dict) -> str:
    """The evaluation as a text table: per shot count, zero-shot / head / mixture, mean ± std over seeds."""
    evaluation = report["evaluation"]
    lines = []
    metric = "mAP" if report["multilabel"] else "accuracy"
    if evaluation.get("note"):
        lines.append(evaluation["note"])
    if evaluation.get("shots"):
        lines.append(f"{'shots':>6}  {'zero-shot ' + metric:>20}  {'head ' + metric:>20}  {'mixed ' + metric:>20}"
                     f"  {'mixed macro F1':>16}")
        for entry in evaluation["shots"]:
            cells = [_pm(entry[kind][metric]) for kind in ("zeroshot", "head", "combined")]
            lines.append(f"{entry['shots']!s:>6}  {cells[0]:>20}  {cells[1]:>20}  {cells[2]:>20}"
                         f"  {_pm(entry['combined']['macro_f1']):>16}")
            fpr = entry["combined"].get("false_positive_rate")
            if fpr and fpr["mean"] is not None:
                lines.append(f"{'':>6}  background clips let through: {_pm(fpr)} "
                             f"(target {report['max_false_positives']:.1%})")
    v = report["mixing"]["validation"]
    lines.append(f"chosen on validation folds: C {report['solver']['C']:g}, mixing weight "
                 f"{report['mixing']['alpha']:.1f} (validation {metric}: zero-shot {v['zeroshot']:.3f}, "
                 f"mixed {v['combined']:.3f}), threshold {report['threshold']:.3f}")
    return "\n".join(lines)


def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
