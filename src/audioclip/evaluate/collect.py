"""``audioclip evaluate --collect``: many runs' ``results.json`` as the paper's three tables."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..io import atomic_write, read_text_bounded, write_text_atomic
from .paper import paper_value
from .report import CSV_COLUMNS

#: the most a results.json may hold (one evaluation's table: kilobytes)
MAX_RESULTS_BYTES = 10_000_000

__all__ = ["collect", "find_results"]

_DATASET_ORDER = ["imagenet", "audioset", "esc50", "esc10", "us8k", "folder"]
_TITLE = {"imagenet": "ImageNet", "audioset": "AudioSet", "esc50": "ESC-50", "esc10": "ESC-10", "us8k": "US8K",
          "folder": "custom"}


def find_results(paths) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob("results.json"))
        else:
            raise ValueError(f"{p}: no such file or folder")
    return found


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _mark(result: dict) -> str:
    """``*`` for a run on part of a dataset (not comparable with the paper)."""
    return "*" if result.get("partial") else ""


def _table(header, rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]


def _label(result: dict) -> str:
    return Path(str(result["checkpoint"])).name


def collect(paths, output: str | os.PathLike | None = None) -> str:
    """The zero-shot, supervised and querying tables of every ``results.json`` under ``paths`` (Markdown)."""
    results = []
    for path in find_results(paths):
        text = read_text_bounded(path, MAX_RESULTS_BYTES, what="results file")  # a FileReadError (ValueError)
        try:
            results.append(json.loads(text))
        except ValueError as err:
            raise ValueError(f"{path}: not a results file (invalid JSON: {err})") from None
    if not results:
        raise ValueError("no results.json found")
    out = []
    zs = [r for r in results if r["task"] == "zeroshot"]
    if zs:
        cols = sorted({(r["dataset"], row["modality"]) for r in zs for row in r["rows"]},
                      key=lambda c: (_DATASET_ORDER.index(c[0]) if c[0] in _DATASET_ORDER else 99, c[1]))
        header = ["zero-shot: checkpoint"] + [f"{_TITLE.get(d, d)} {m} ({'mAP' if d == 'audioset' else 'acc'})"
                                               for d, m in cols]
        rows = []
        for label in dict.fromkeys(_label(r) for r in zs):
            cells = {}
            for r in zs:
                if _label(r) == label:
                    for row in r["rows"]:
                        if row["fold"] == "all":
                            cells[(r["dataset"], row["modality"])] = _pct(row["value"]) + _mark(r)
            rows.append([label] + [cells.get(c, "") for c in cols])
        rows.append(["paper"] + [_paper(("zeroshot", d, m, "mAP" if d == "audioset" else "accuracy")) for d, m in cols])
        out += ["Zero-shot classification (%)", ""] + _table(header, rows) + [""]
    sv = [r for r in results if r["task"] == "supervised"]
    if sv:
        datasets = sorted({r["dataset"] for r in sv}, key=lambda d: _DATASET_ORDER.index(d) if d in _DATASET_ORDER else 99)
        header = ["supervised: checkpoints"] + [f"{_TITLE.get(d, d)} (fold mean ± std)" for d in datasets]
        rows = []
        for label in dict.fromkeys(_label(r) for r in sv):
            cells = {}
            for r in sv:
                if _label(r) == label:
                    mean = next((x for x in r["rows"] if x["fold"] == "mean"), None) or r["rows"][0]
                    cells[r["dataset"]] = (f"{_pct(mean['value'])} ± {_pct(mean.get('std'))}{_mark(r)} "
                                           f"({len(r['details'].get('folds', []))} folds)")
            rows.append([label] + [cells.get(d, "") for d in datasets])
        rows.append(["paper"] + [_paper(("supervised", d, "audio", "accuracy")) for d in datasets])
        out += ["Supervised classification, fine-tuned (%)", ""] + _table(header, rows) + [""]
    qu = [r for r in results if r["task"] == "querying"]
    if qu:
        labels = list(dict.fromkeys(_label(r) for r in qu))
        header = ["querying: dataset", "query → target"] + [f"{lb} P@1 / R@1 / mAP" for lb in labels] + ["paper"]
        cells: dict = {}
        for r in qu:
            for row in r["rows"]:
                entry = cells.setdefault((r["dataset"], row["modality"]), {}).setdefault(_label(r), {})
                entry[row["metric"]] = row["value"]
                entry["mark"] = _mark(r)
        rows = []
        for (d, pair) in sorted(cells, key=lambda c: (_DATASET_ORDER.index(c[0]) if c[0] in _DATASET_ORDER else 99, c[1])):
            row = [_TITLE.get(d, d), pair.replace("-", " → ")]
            for lb in labels:
                v = cells[(d, pair)].get(lb)
                row.append(" / ".join(_pct(v.get(m)) for m in ("P@1", "R@1", "mAP")) + v["mark"] if v else "")
            row.append("see paper")
            rows.append(row)
        out += ["Querying (%)", ""] + _table(header, rows) + [""]
    if any(r.get("partial") for r in results):
        out.append("*: measured on part of the dataset, not comparable with the paper.")
    out.append("'see paper': the paper's figure could not be verified offline (docs/reproduction.md).")
    text = "\n".join(out)
    if output:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "summary.md", text + "\n", encoding="utf-8")
        with atomic_write(folder / "summary.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for r in results:
                for row in r["rows"]:
                    writer.writerow(row)
    return text


def _paper(key) -> str:
    value = paper_value(*key)
    return value.text() if value.value is not None else "see paper"
