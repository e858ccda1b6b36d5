"""Cross-validation: train one run per fold and report mean ± standard deviation."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from ..data import read_dataset
from ..metrics import mean_std
from .distributed import Dist
from .engine import Trainer, output_dir

__all__ = ["dataset_folds", "format_table", "run_cross_validation"]


def dataset_folds(cfg: dict) -> list[int]:
    d = cfg["data"]
    if d["dataset"] == "shards":
        raise ValueError("cross-validation needs a dataset with folds (esc50, us8k, a CSV with a fold column)")
    folds = read_dataset(d["dataset"], d["root"], **(d["options"] or {})).folds
    if not folds:
        raise ValueError(f"{d['dataset']} at {d['root']}: the dataset has no folds to cross-validate over")
    return folds


def format_table(rows: list[dict]) -> str:
    """Per-fold results and their mean ± sample standard deviation, as a text table."""
    metric = next((r["metric"] for r in rows if r.get("metric")), "score")
    lines = [f"{'fold':>6}  {'best epoch':>10}  {'val ' + metric:>14}  {'test ' + metric:>14}"]
    for r in rows:
        val = "-" if r.get("val") is None or math.isnan(r["val"]) else f"{r['val']:.4f}"
        lines.append(f"{r['test_fold']!s:>6}  {r['best_epoch']!s:>10}  {val:>14}  {r['test']:>14.4f}")
    vm, vs = mean_std([r.get("val") for r in rows])
    tm, ts = mean_std([r["test"] for r in rows])
    lines.append(f"{'mean':>6}  {'':>10}  {f'{vm:.4f} ± {vs:.4f}':>14}  {f'{tm:.4f} ± {ts:.4f}':>14}")
    if any(r.get("selected_on_test") for r in rows):
        lines.append("(epochs selected on the test folds: optimistic, as in the original protocol)")
    return "\n".join(lines)


def run_cross_validation(cfg: dict, dist: Dist, folds: list[int] | None = None, resume: bool = False) -> dict:
    """Train ``cfg`` once per fold (``folds``: all of the dataset's) under ``<output>/fold<k>``."""
    folds = folds or dataset_folds(cfg)
    base = output_dir(cfg)
    rows = []
    for fold in folds:
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg["data"]["test_fold"] = fold
        fold_cfg["output"]["dir"] = str(base / f"fold{fold}")
        fold_cfg["name"] = f"{cfg['name']}-fold{fold}"
        done = Path(fold_cfg["output"]["dir"]) / "results.json"
        if resume and done.exists():
            rows.append(json.loads(done.read_text()))
            if dist.is_main:
                print(f"fold {fold}: already finished ({done})", flush=True)
            continue
        rows.append(Trainer(fold_cfg, dist=dist, resume=resume).run())
    table = format_table(rows)
    summary = {"folds": rows, "table": table}
    if dist.is_main:
        base.mkdir(parents=True, exist_ok=True)
        (base / "cv.json").write_text(json.dumps(summary, indent=2))
        print(table, flush=True)
    return summary
