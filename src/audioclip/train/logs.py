"""Run logs: one CSV row per epoch (always), TensorBoard scalars (when installed), a text log."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

__all__ = ["RunLog"]


class RunLog:
    """Writes ``metrics.csv``, ``train.log`` and (optionally) TensorBoard events under ``folder``.

    Only the main process writes; the others get a silent instance.
    ``resume_epoch`` drops CSV rows of epochs after it (an epoch that was under
    way when a run was killed is redone and logged again).
    """

    def __init__(self, folder: Path, enabled: bool = True, tensorboard: bool = True, resume_epoch: int | None = None):
        self.enabled = enabled
        self.folder = folder
        self.csv_path = folder / "metrics.csv"
        self.writer = None
        self.tensorboard_note = ""
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if resume_epoch is not None and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
            self._rewrite(rows)
        elif resume_epoch is None and self.csv_path.exists():
            self.csv_path.unlink()
        self.text = open(folder / "train.log", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:
                self.tensorboard_note = "TensorBoard logging off: the tensorboard package is not installed"

    def _rewrite(self, rows: list[dict]) -> None:
        if not rows:
            self.csv_path.unlink()
            return
        fields = list(rows[0])
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, file=sys.stdout, flush=True)
        self.text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def epoch(self, row: dict) -> None:
        """Append an epoch's row; new columns extend the header."""
        if not self.enabled:
            return
        rows = []
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
        fields = list(rows[0]) if rows else []
        fields += [k for k in row if k not in fields]
        if rows and fields != list(rows[0]):
            rows.append({k: row.get(k, "") for k in fields})
            self._rewrite(rows)
        else:
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                if new:
                    w.writeheader()
                w.writerow({k: row.get(k, "") for k in fields})
        if self.writer is not None:
            step = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, step)
            self.writer.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        self.text.close()
