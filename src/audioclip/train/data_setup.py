"""The data side of a training config: index, splits, datasets and loaders for this process."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import (
    AudioAugment,
    AudioCache,
    ClipDataset,
    EvalBatchSampler,
    GlobalBatchSampler,
    ShardStream,
    ValidationSpec,
    collate,
    measure_longest,
    read_dataset,
    read_manifest,
    split_index,
)
from ..media.workers import die_with_parent
from ..model import load_model_config
from .distributed import Dist

__all__ = ["TrainData", "build_data"]


@dataclass
class TrainData:
    classes: list[str]
    multilabel: bool
    length: int  # samples every clip is cropped / padded to
    sample_rate: int
    train: object
    val: object | None
    test: object
    description: str
    val_is_test: bool = False
    folds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    train_sampler: GlobalBatchSampler | None = None

    def set_epoch(self, epoch: int) -> None:
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        elif isinstance(self.train, ShardStream):
            self.train.set_epoch(epoch)


def _worker_init(parent: int, worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker per core already; one thread each avoids oversubscription
    die_with_parent(parent)  # a killed run leaves no worker behind


def _model_rates(cfg: dict) -> tuple[int, int]:
    mcfg = load_model_config(cfg["model"]["config"])
    rate = int(mcfg.get("audio_cfg", {}).get("sample_rate", 44100))
    size = cfg["image"]["size"] or int(mcfg.get("vision_cfg", {}).get("image_size", 224))
    return rate, size


def build_data(cfg: dict, dist: Dist) -> TrainData:
    d, a, t = cfg["data"], cfg["audio"], cfg["train"]
    rate, image_size = _model_rates(cfg)
    image = cfg["model"]["kind"] == "audioclip" and cfg["task"]["loss"] == "contrastive" and "image" in cfg["task"]["modalities"]
    common = dict(
        seed=t["seed"], channels=a["channels"], amplitude=a["amplitude"], prompt=cfg["task"]["prompt"],
        image=image, image_size=image_size,
    )
    if d["dataset"] == "shards":
        return _build_shards(cfg, dist, rate, common)

    index = read_dataset(d["dataset"], d["root"], **(d["options"] or {}))
    notes = list(index.notes)
    if index.missing:
        notes.append(f"{len(index.missing)} files listed in the metadata were not found and are left out "
                     f"(e.g. {index.missing[0]})")
    multilabel = bool(d["multilabel"]) if d["multilabel"] is not None else index.multilabel
    validation = ValidationSpec(seed=t["seed"], **(d["validation"] or {"kind": "none"}))
    test_fold = d["test_fold"] if index.folds else None
    test_split = d["test_split"] if any(c.split for c in index.clips) else None
    splits = split_index(index, test_fold=test_fold, test_split=test_split, validation=validation,
                         test_fraction=d["test_fraction"])
    if d["max_clips"]:
        n = int(d["max_clips"])
        splits.train, splits.val, splits.test = splits.train[:n], splits.val[:n], splits.test[:n]

    cache = AudioCache(d["cache_dir"], sample_rate=rate, enabled=d["cache"], dtype=d["cache_dtype"],
                       max_duration=a["max_duration"])
    if a["length"]:
        length = round(float(a["length"]) * rate)
    elif index.max_duration:
        length = round(index.max_duration * rate)
    else:  # measure: rank 0 decodes (filling the cache), the others then read the cache
        everything = splits.train + splits.val + splits.test
        length = measure_longest(everything, cache, t["num_workers"]) if dist.is_main else 0
        length = int(dist.broadcast_object(length))
        if length == 0:
            raise ValueError(f"{index.name}: no clip could be decoded")
    if a["max_duration"]:
        length = min(length, round(float(a["max_duration"]) * rate))

    def dataset(clips, train):
        aug = AudioAugment(length, train=train, config=cfg["augment"])
        return ClipDataset(clips, len(index.classes), aug, cache, multilabel=multilabel,
                           num_frames=cfg["image"]["num_frames"], **common)

    train = dataset(splits.train, True)
    val = dataset(splits.val, False) if splits.val else None
    test = dataset(splits.test, False)
    sampler = GlobalBatchSampler(len(train), t["batch_size"], dist.rank, dist.world, seed=t["seed"])
    return TrainData(
        classes=index.classes, multilabel=multilabel, length=length, sample_rate=rate,
        train=train, val=val, test=test, description=f"{index.summary()}\n{splits.description}",
        val_is_test=splits.val_is_test, folds=index.folds, notes=notes, train_sampler=sampler,
    )


def _build_shards(cfg: dict, dist: Dist, rate: int, common: dict) -> TrainData:
    d, t = cfg["data"], cfg["train"]
    root = Path(d["root"])
    manifest = read_manifest(root)
    splits = manifest["splits"]
    if "train" not in splits or "test" not in splits:
        raise ValueError(f"{root}: the shards need a train and a test split")
    length = round(float(cfg["audio"]["length"]) * rate) if cfg["audio"]["length"] else int(manifest["longest_samples"])
    multilabel = bool(d["multilabel"]) if d["multilabel"] is not None else bool(manifest["multilabel"])
    classes = list(manifest["classes"])
    global_batch = t["batch_size"]
    if global_batch % dist.world:
        raise ValueError(f"the batch size ({global_batch}) must be divisible by the number of processes ({dist.world})")
    batches = splits["train"]["count"] // global_batch
    if batches == 0:
        raise ValueError(f"{root}: {splits['train']['count']} training samples for a batch size of {global_batch}")

    def stream(split, train):
        aug = AudioAugment(length, train=train, config=cfg["augment"])
        return ShardStream(
            [str(root / s) for s in splits[split]["shards"]], len(classes), aug, multilabel=multilabel,
            rank=dist.rank, world=dist.world, batches_per_rank=batches if train else None,
            local_batch=global_batch // dist.world, shuffle_buffer=d["shuffle_buffer"], **common,
        )

    kind = (d["validation"] or {}).get("kind", "fraction")
    val_is_test = kind == "test"
    val = stream("test", False) if val_is_test else (stream("val", False) if "val" in splits and kind != "none" else None)
    counts = ", ".join(f"{k} {v['count']}" for k, v in splits.items())
    return TrainData(
        classes=classes, multilabel=multilabel, length=length, sample_rate=rate,
        train=stream("train", True), val=val, test=stream("test", False),
        description=f"shards {root}: {counts}" + ("; validation = test (select-on-test)" if val_is_test else ""),
        val_is_test=val_is_test, notes=[],
    )


def make_loader(data: TrainData, which: str, cfg: dict, dist: Dist) -> DataLoader:
    t = cfg["train"]
    ds = getattr(data, which)
    workers = int(t["num_workers"])
    extra = dict(num_workers=workers, collate_fn=collate, pin_memory=dist.device.type == "cuda",
                 worker_init_fn=functools.partial(_worker_init, os.getpid()) if workers else None)
    if workers:
        extra["prefetch_factor"] = 2
    if isinstance(ds, ShardStream):
        size = (t["batch_size"] // dist.world) if which == "train" else t["eval_batch_size"]
        return DataLoader(ds, batch_size=size, drop_last=which == "train", **extra)
    if which == "train":
        return DataLoader(ds, batch_sampler=data.train_sampler, **extra)
    return DataLoader(ds, batch_sampler=EvalBatchSampler(len(ds), t["eval_batch_size"], dist.rank, dist.world), **extra)

