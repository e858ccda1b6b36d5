"""Reports: the printed table (shaped like the paper's), JSON, CSV and plots."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from ..io import atomic_write, write_text_atomic
from .protocols import Report

__all__ = ["CSV_COLUMNS", "format_report", "report_dict", "write_outputs"]

CSV_COLUMNS = ["task", "dataset", "checkpoint", "modality", "fold", "metric", "value", "std", "n", "micro",
               "queries", "skipped_queries", "targets", "paper", "paper_source", "checkpoint_file", "checkpoint_id"]

_TITLES = {"zeroshot": "Zero-shot classification", "supervised": "Supervised classification (fine-tuned checkpoints)",
           "querying": "Querying (cross-modal retrieval)"}


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def _paper_cell(row: dict, sources: list[str]) -> str:
    if "paper" not in row:
        return ""
    if row["paper"] is None:
        return "n/a (subset)" if row.get("paper_source", "").startswith("not comparable") else "see paper"
    src = row["paper_source"]
    if src not in sources:
        sources.append(src)
    return f"{_pct(row['paper'])} [{sources.index(src) + 1}]"


def format_report(report: Report) -> str:
    """The result as text: a header saying what was measured and how, then the table."""
    data = report.dataset
    lines = [f"{_TITLES[report.task]} — {data.summary()}",
             f"checkpoint: {report.checkpoint} ({report.checkpoint_id})"]
    if report.task == "supervised" and len({r.get('checkpoint_file') for r in report.rows} - {None}) > 1:
        lines[-1] = f"checkpoints: {report.checkpoint}, one per fold (below)"
    if report.conventions is not None and "audio" in data.modalities:
        lines.append(f"audio input: {report.conventions.describe()}")
    if report.task != "supervised" or report.details.get("checkpoint_kind") == "audioclip":
        shown = report.templates if len(report.templates) <= 3 else report.templates[:2] + [f"... ({len(report.templates)} templates)"]
        lines.append("prompts: " + ", ".join(f'"{t}"' if "{}" in t else t for t in shown))
    if report.task == "querying":
        d = report.details
        lines.append(f"relevance: {d['relevance']} label-set match; a query never retrieves its own item"
                     + ("" if not d.get("keep_paired") else " (same modality; its paired picture/sound may be retrieved)")
                     + "; averaged over queries of a label set, then over label sets")
    lines.append("")
    sources: list[str] = []
    if report.task == "querying":
        lines += _querying_table(report, sources)
    elif report.task == "supervised":
        lines += _supervised_table(report, sources)
    else:
        lines += _zeroshot_table(report, sources)
    if sources:
        lines.append("")
        lines += [f"[{i + 1}] {s}" for i, s in enumerate(sources)]
    emb = ", ".join(f"{m}: {v['computed']} embedded, {v['cached']} from cache, {len(v['failures'])} failed"
                    for m, v in report.embedding.items())
    if emb:
        lines.append(f"embeddings: {emb}")
    for note in data.notes + report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _zeroshot_table(report: Report, sources: list[str]) -> list[str]:
    folds = report.dataset.folds if len(report.dataset.folds) > 1 else []
    header = ["modality", "metric", "all"] + [f"fold {f}" for f in folds] + (["fold mean ± std"] if folds else []) + ["paper"]
    rows = []
    for modality in dict.fromkeys(r["modality"] for r in report.rows):
        mine = [r for r in report.rows if r["modality"] == modality]
        metric = mine[0]["metric"]
        by_fold = {r["fold"]: r for r in mine}
        cells = [modality, metric, _pct(by_fold.get("all", {}).get("value"))]
        cells += [_pct(by_fold[f]["value"]) if f in by_fold else "-" for f in folds]
        if folds:
            m = by_fold.get("mean", {})
            cells.append(f"{_pct(m.get('value'))} ± {_pct(m.get('std'))}")
        cells.append(_paper_cell(by_fold.get("all", {}), sources) or "")
        rows.append(cells)
    return _table(header, rows)


def _supervised_table(report: Report, sources: list[str]) -> list[str]:
    metric = report.rows[0]["metric"]
    header = ["fold", "items", metric, "checkpoint"]
    rows = []
    for r in report.rows:
        if r["fold"] == "mean":
            continue
        rows.append([str(r["fold"]), str(r["n"]), _pct(r["value"]), str(r.get("checkpoint_file", ""))])
    lines = _table(header, rows)
    mean = next((r for r in report.rows if r["fold"] == "mean"), None)
    if mean is not None:
        lines.append(f"cross-validation mean ± std over {mean['n']} fold(s): {_pct(mean['value'])} ± {_pct(mean.get('std'))}"
                     f"   paper: {_paper_cell(mean, sources)}")
    elif rows:
        lines.append(f"paper: {_paper_cell(report.rows[0], sources)}")
    return lines


def _querying_table(report: Report, sources: list[str]) -> list[str]:
    header = ["query → target", "P@1", "R@1", "mAP", "label sets", "queries", "targets", "paper P@1 / R@1 / mAP"]
    rows = []
    for pair in dict.fromkeys(r["modality"] for r in report.rows):
        by = {r["metric"]: r for r in report.rows if r["modality"] == pair}
        papers = " / ".join(_paper_cell(by[m], sources) for m in ("P@1", "R@1", "mAP"))
        if papers == "see paper / see paper / see paper":
            papers = "see paper"
        first = by["P@1"]
        rows.append([pair.replace("-", " → "), _pct(by["P@1"]["value"]), _pct(by["R@1"]["value"]),
                     _pct(by["mAP"]["value"]), str(first["n"]), str(first["queries"]), str(first["targets"]), papers])
    return _table(header, rows)


# -- files -------------------------------------------------------------------------------


def report_dict(report: Report) -> dict:
    data = report.dataset
    return {
        "task": report.task,
        "dataset": data.name,
        "dataset_title": data.title,
        "root": os.path.abspath(data.root),
        "dataset_options": data.options,
        "checkpoint": report.checkpoint,
        "checkpoint_id": report.checkpoint_id,
        "audio_conventions": report.conventions.describe() if report.conventions else None,
        "templates": report.templates,
        "num_items": len(data.items),
        "partial": data.partial,
        "folds": data.folds,
        "classes": data.classes,
        "rows": report.rows,
        "per_class": report.per_class,
        "embedding": report.embedding,
        "details": report.details,
        "notes": data.notes + report.notes,
        "pr_curves": {k: v.tolist() for k, v in report.pr_curves.items()},
    }


def write_outputs(report: Report, out: str | os.PathLike, plots: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.csv``, ``table.txt``, per-class and confusion CSVs and PNG plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    table = format_report(report)
    write_text_atomic(out / "table.txt", table + "\n", encoding="utf-8")
    written.append(out / "table.txt")
    with atomic_write(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in report.rows:
            writer.writerow(row)
    written.append(out / "results.csv")
    classes = report.dataset.classes
    for modality, info in report.per_class.items():
        path = out / f"per_class_{modality}.csv"
        with atomic_write(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["class", info["metric"], "items"])
            for name, value, count in zip(classes, info["values"], info["counts"]):
                writer.writerow([name, "" if value is None or math.isnan(value) else f"{value:.6f}", count])
        written.append(path)
    for modality, matrix in report.confusion.items():
        path = out / f"confusion_{modality}.csv"
        with atomic_write(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted"] + classes)
            for name, row in zip(classes, matrix):
                writer.writerow([name] + [int(x) for x in row])
        written.append(path)
    if plots:
        written += _plots(report, out)
    result = report_dict(report)
    result["files"] = [p.name for p in written] + ["results.json"]
    write_text_atomic(out / "results.json", json.dumps(result, indent=2, default=_json_default), encoding="utf-8")
    written.append(out / "results.json")
    return written


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _plots(report: Report, out: Path) -> list[Path]:
    from ..metrics import RECALL_LEVELS
    from .plots import plot_confusion, plot_per_class, plot_pr_curves

    data = report.dataset
    task = {"zeroshot": "zero-shot", "supervised": "fine-tuned", "querying": "querying"}[report.task]
    ckpt = "fold checkpoints" if report.task == "supervised" else Path(str(report.checkpoint)).name
    label = f"{data.title}, {task}, {ckpt}"
    written = []
    for modality, matrix in report.confusion.items():
        path = out / f"confusion_{modality}.png"
        plot_confusion(matrix, data.classes, f"Confusion matrix ({modality}) — {label}", path)
        written.append(path)
    for modality, info in report.per_class.items():
        overall = next((r["value"] for r in report.rows if r["modality"] == modality and r["fold"] in ("all", "mean")
                        and r["value"] is not None), None)
        path = out / f"per_class_{modality}.png"
        values = [np.nan if v is None else v for v in info["values"]]
        plot_per_class(values, data.classes, f"Per-class {info['metric']} ({modality}) — {label}", path,
                       metric=info["metric"], mean=overall, counts=info["counts"])
        written.append(path)
    if report.pr_curves:
        maps = {r["modality"]: r["value"] for r in report.rows if r["metric"] == "mAP"}
        path = out / "precision_recall.png"
        plot_pr_curves(report.pr_curves, RECALL_LEVELS, f"Precision-recall — {data.title}, {ckpt}", path, maps)
        written.append(path)
    return written
