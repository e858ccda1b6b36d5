"""The training loop: plain PyTorch, DistributedDataParallel under torchrun.

:class:`Trainer` runs one config end to end: data, model, optimizer, epochs
with a validation pass each, an atomic checkpoint each epoch, the best epoch
by validation score, the test score of that epoch, and the exported weights.
The same code runs on a CPU, one GPU, several GPUs and several nodes; the
global batch size is split over the processes, and a DDP run computes the
same updates as a single process with that batch size (see
:mod:`audioclip.train.objectives` and :mod:`audioclip.data.sampling`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..model import AudioCLIP
from . import config as config_mod
from .build import (
    build_model,
    export_weights,
    frozen_modules,
    normalise_fbsp_grads,
    param_groups,
    set_train_mode,
    setup_trainable,
)
from .checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from .data_setup import TrainData, build_data, make_loader
from .distributed import Dist, setup_distributed
from .logs import RunLog
from ..metrics import score
from .objectives import TrainTask, class_text_features, eval_scores

__all__ = ["Trainer", "output_dir"]

# the config keys whose change makes a checkpoint unfit to resume from
_RESUME_KEYS = ("model", "task", "optim", "sched", "data", "audio", "augment")


def _comparable(section: dict, name: str) -> dict:
    """A config section without what may change between a run and its resumption (where the data lives)."""
    if name != "data":
        return section
    return {k: v for k, v in section.items() if k not in ("root", "cache_dir", "cache")}


def output_dir(cfg: dict) -> Path:
    return Path(cfg["output"]["dir"] or Path("runs") / cfg["name"])


def _amp_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    amp = cfg["train"]["amp"]
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Trainer:
    """Train one config. ``run()`` returns the results dict (also written to ``results.json``).

    ``resume=True`` continues from ``<output>/last.pt`` when it exists (a path
    resumes from that file). ``callbacks["epoch_end"](trainer, epoch)`` runs
    after each epoch's checkpoint is written.
    """

    def __init__(
        self,
        cfg: dict,
        dist: Dist | None = None,
        resume: bool | str | Path = False,
        callbacks: dict[str, Callable] | None = None,
    ):
        self.cfg = cfg
        self.dist = dist or setup_distributed(cfg["train"]["device"])
        self.resume = resume
        self.callbacks = callbacks or {}
        self.out = output_dir(cfg)
        self.model: nn.Module | None = None

    # -- setup ---------------------------------------------------------------

    def _setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        t = cfg["train"]
        torch.manual_seed(t["seed"])
        self.data: TrainData = build_data(cfg, dist)
        torch.manual_seed(t["seed"])  # the same initial weights in every process
        model = build_model(cfg, len(self.data.classes))
        self.heads, self.frozen_names = setup_trainable(model, cfg)
        if t["batch_size"] // dist.world < 2 and not cfg["model"]["freeze_bn"]:
            raise ValueError(
                f"train.batch_size {t['batch_size']} over {dist.world} process(es) leaves fewer than 2 clips per "
                "process, too few for BatchNorm in training: raise the batch size or set model.freeze_bn"
            )
        if cfg["model"]["sync_bn"] and dist.active:
            if dist.device.type != "cuda":
                raise ValueError("model.sync_bn needs GPUs (SyncBatchNorm has no CPU implementation)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.frozen = frozen_modules(model, self.heads)
        self.model = model.to(dist.device)
        self.amp_dtype = _amp_dtype(cfg, dist.device)
        self.task = TrainTask(self.model, cfg, self.data.classes, self.data.multilabel, dist, self.heads, self.amp_dtype)
        if dist.active:
            device_ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.task, device_ids=device_ids)
        else:
            self.step_module = self.task
        o = cfg["optim"]
        self.optimizer = torch.optim.SGD(
            param_groups(self.model, cfg), lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
            weight_decay=o["weight_decay"],
        )
        self.scheduler = (
            torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg["sched"]["gamma"])
            if cfg["sched"]["name"] == "exponential" else None
        )
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=self.amp_dtype == torch.float16)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    # -- evaluation ----------------------------------------------------------

    def evaluate(self, which: str) -> tuple[str, float, int]:
        """(metric name, value, clips scored) on the ``val`` or ``test`` set, over all processes."""
        model, dist = self.model, self.dist
        model.eval()
        loader = make_loader(self.data, which, self.cfg, dist)
        class_text = None
        with torch.no_grad():
            if isinstance(model, AudioCLIP):
                class_text = class_text_features(model, self.data.classes, self.cfg["task"]["prompt"])
            scores, targets, skipped = [], [], 0
            for batch in loader:
                skipped += batch["skipped"]
                self._report_bad(batch)
                if not batch["size"]:
                    continue
                audio = batch["audio"].to(dist.device, non_blocking=True)
                scores.append(eval_scores(model, audio, class_text, self.amp_dtype).cpu().numpy())
                targets.append(batch["target"].numpy())
        parts = dist.all_gather_object((scores, targets))
        all_scores = [s for p in parts for s in p[0]]
        all_targets = [t for p in parts for t in p[1]]
        if not all_scores:
            return ("mAP" if self.data.multilabel else "accuracy"), float("nan"), 0
        s, t = np.concatenate(all_scores), np.concatenate(all_targets)
        name, value = score(s, t, self.data.multilabel)
        return name, value, len(t)

    def _report_bad(self, batch: dict) -> None:
        for line in batch.get("bad", []):
            if line not in self._bad_seen:
                self._bad_seen.add(line)
                print(f"[rank {self.dist.rank}] skipped unreadable clip: {line}", flush=True)
                with open(self.out / f"bad_files.rank{self.dist.rank}.txt", "a") as f:
                    f.write(line + "\n")

    # -- one epoch -------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        cfg, dist = self.cfg, self.dist
        t = cfg["train"]
        self.data.set_epoch(epoch)
        loader = make_loader(self.data, "train", cfg, dist)
        set_train_mode(self.model, self.frozen, cfg["model"]["freeze_bn"])
        total = len(loader) if hasattr(loader, "__len__") else None
        limit = t["max_steps_per_epoch"]
        if limit:
            total = min(total or limit, limit)
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{t['epochs']}", unit="batch", dynamic_ncols=True,
                   disable=not (dist.is_main and t["progress"]), leave=False)
        losses, skipped, steps, skipped_steps = [], 0, 0, 0
        for batch in loader:
            if limit and steps >= limit:
                break
            skipped += batch["skipped"]
            self._report_bad(batch)
            sizes = dist.sizes(batch["size"])
            if min(sizes) < 2:
                # unreadable clips left a process with fewer than 2 samples, too few for BatchNorm
                # statistics: every process skips this step together
                bar.update(1)
                skipped_steps += 1
                continue
            batch["sizes"] = sizes
            loss, value = self.step_module(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            normalise_fbsp_grads(self.model)
            if t["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(self.trainable, t["grad_clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            steps += 1
            self.global_step += 1
            losses.append(float(value))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if dist.is_main and t["log_every"] and self.global_step % t["log_every"] == 0:
                self.log.scalar("train/loss", losses[-1], self.global_step)
        bar.close()
        if not losses:
            raise RuntimeError(f"epoch {epoch + 1}: no training step was made (every batch was empty or unreadable)")
        row = {"train_loss": float(np.mean(losses)), "skipped": int(dist.sum(skipped)), "steps": steps}
        if skipped_steps:
            row["skipped_steps"] = skipped_steps
        return row

    # -- checkpoints --------------------------------------------------------

    def _state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "history": self.history,
            "rng": rng_state(),
            "config": self.cfg,
        }

    def _resume_path(self) -> Path | None:
        if not self.resume:
            return None
        path = Path(self.resume) if not isinstance(self.resume, bool) else self.out / "last.pt"
        if not path.exists():
            if isinstance(self.resume, bool):
                return None  # nothing to resume: start fresh
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        return path

    def _load_state(self, path: Path) -> int:
        state = load_checkpoint(path)
        saved = state.get("config", {})
        changed = [k for k in _RESUME_KEYS if k in saved and _comparable(saved[k], k) != _comparable(self.cfg[k], k)]
        if changed:
            raise ValueError(
                f"{path}: the checkpoint was made with a different config ({', '.join(changed)} differ); "
                "resume with the same config (only train.epochs and output settings may change)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best = state["best"]
        self.history = list(state["history"])
        self.global_step = int(state.get("global_step", 0))
        restore_rng(state["rng"])
        return int(state["epoch"])

    # -- the run --------------------------------------------------------------

    def run(self) -> dict:
        cfg, dist = self.cfg, self.dist
        t = cfg["train"]
        started = time.time()
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self._bad_seen: set[str] = set()
        self._setup()
        self.best: dict | None = None
        self.history: list[dict] = []
        self.global_step = 0
        start = 0
        resume_path = self._resume_path()
        if resume_path is not None:
            start = self._load_state(resume_path)
        self.log = RunLog(self.out, enabled=dist.is_main, tensorboard=cfg["output"]["tensorboard"],
                          resume_epoch=start if resume_path is not None else None)
        log = self.log.info
        if dist.is_main:
            (self.out / "config.yaml").write_text(config_mod.dump(cfg))
        log(f"run {cfg['name']}: {self.data.description}")
        for note in self.data.notes:
            log(f"note: {note}")
        if self.log.tensorboard_note:
            log(self.log.tensorboard_note)
        n_train = sum(p.numel() for p in self.trainable)
        n_all = sum(p.numel() for p in self.model.parameters())
        amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        mname = cfg["model"]["config"] if isinstance(cfg["model"]["config"], str) else "custom config"
        log(f"model {cfg['model']['kind']} ({mname}): {n_train:,} of {n_all:,} parameters train "
            f"(heads: {', '.join(self.heads)}); device {dist.device} x {dist.world} process(es); amp {amp}; "
            f"clip length {self.data.length / self.data.sample_rate:.2f} s")
        if resume_path is not None:
            log(f"resumed from {resume_path} after epoch {start}")
        elif (self.out / "last.pt").exists() and dist.is_main:
            log(f"note: {self.out} holds an earlier run's checkpoint; starting afresh (--resume continues it)")
        if self.data.val_is_test:
            log("WARNING: validation = test set (select-on-test): the best epoch is chosen on the test set, "
                "so the test score is optimistic; use only to reproduce the original protocol")

        for epoch in range(start, t["epochs"]):
            tick = time.time()
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(epoch))
            if self.scheduler is not None:
                self.scheduler.step()
            improved = False
            if self.data.val is not None:
                name, value, _ = self.evaluate("val")
                row[f"val_{name}"] = value
                previous = self.best["value"] if self.best is not None else float("nan")
                if self.best is None or (not math.isnan(value) and (math.isnan(previous) or value > previous)):
                    self.best = {"epoch": epoch + 1, "metric": name, "value": value}
                    improved = True
            else:
                self.best = {"epoch": epoch + 1, "metric": None, "value": float("nan")}
                improved = True
            if t["test_every_epoch"]:
                name, value, _ = self.evaluate("test")
                row[f"test_{name}"] = value
            row["seconds"] = round(time.time() - tick, 2)
            self.history.append(row)
            if dist.is_main:
                if improved:
                    save_checkpoint({"epoch": epoch + 1, "model": self.model.state_dict(), "best": self.best},
                                    self.out / "best.pt")
                save_checkpoint(self._state(epoch + 1), self.out / "last.pt")
                self.log.epoch(row)
            dist.barrier()
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
            log(shown + ("  *best*" if improved and self.data.val is not None else ""))
            if "epoch_end" in self.callbacks:
                self.callbacks["epoch_end"](self, epoch + 1)

        results = self._finish(started)
        self.log.close()
        return results

    def _finish(self, started: float) -> dict:
        cfg, dist = self.cfg, self.dist
        best_path = self.out / "best.pt"
        if best_path.exists():
            self.model.load_state_dict(load_checkpoint(best_path)["model"])
        name, value, n = self.evaluate("test")
        best = self.best or {}
        results = {
            "name": cfg["name"],
            "test_fold": cfg["data"]["test_fold"] if self.data.folds else None,
            "metric": name,
            "test": value,
            "test_clips": n,
            "best_epoch": best.get("epoch"),
            "val": best.get("value"),
            "selected_on_test": self.data.val_is_test,
            "epochs": cfg["train"]["epochs"],
            "minutes": round((time.time() - started) / 60.0, 2),
            "output": str(self.out),
        }
        if dist.is_main:
            if cfg["output"]["export"]:
                results["weights"] = str(export_weights(self.model, self.out / "model.pt"))
            (self.out / "results.json").write_text(json.dumps(results, indent=2))
        self.log.info(
            f"test {name} {value:.4f} on {n} clips with the weights of epoch {best.get('epoch')}"
            + (" (selected on the test set)" if self.data.val_is_test
               else " (selected on validation)" if self.data.val is not None else " (the last; no validation set)")
        )
        dist.barrier()
        return results
