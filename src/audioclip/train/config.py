"""Training configurations: YAML files over built-in defaults, overridable from the command line.

A config names the model, the task, the data and the optimisation; every key
has a default (:data:`DEFAULTS`), so a file only says what differs. Bundled
regimes live in ``audioclip/train/configs/*.yaml`` (``list_configs()``), one per
setting of the paper. ``--set section.key=value`` overrides any value (the
value is read as YAML: ``1e-3``, ``true``, ``[audio, text]``, ``null``); an
unknown key is an error, so a typo never silently does nothing.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from ..io import FileReadError, read_bytes_bounded
from ..errors import AudioclipError

__all__ = ["DEFAULTS", "ConfigError", "Loss", "ModelKind", "apply_overrides", "list_configs", "load_config", "merge"]

#: ``model.kind``: AudioCLIP, or the standalone ESResNeXt-fbsp audio classifier
ModelKind = Literal["audioclip", "esresnext"]
#: ``task.loss``: see :mod:`audioclip.train.objectives`
Loss = Literal["contrastive", "prompt_ce", "classify"]

_PACKAGE = "audioclip.train.configs"


class ConfigError(AudioclipError, ValueError):
    """A configuration that cannot be used, with the reason."""


DEFAULTS: dict[str, Any] = {
    "name": None,  # run name (default: the config file's name)
    "description": "",
    "model": {
        "kind": "audioclip",  # audioclip | esresnext (the standalone audio classifier)
        "config": "AudioCLIP-RN50",  # model config: bundled name or JSON path (esresnext uses its audio_cfg)
        "weights": None,  # registry name or file; audioclip: full or CLIP-only; esresnext: a classifier
        "audio_weights": None,  # audioclip: standalone classifier whose trunk fills the audio head
        "new_classifier": True,  # esresnext: a fresh final layer sized to the dataset's classes
        "imagenet_init": None,  # esresnext: "torchvision" or a path to ResNeXt-50 32x4d ImageNet weights
        "freeze_bn": False,  # every BatchNorm in eval mode (statistics fixed, affine still learned)
        "sync_bn": False,  # SyncBatchNorm across processes (GPU only)
    },
    "task": {
        "loss": "contrastive",  # contrastive | prompt_ce | classify
        "modalities": ["audio", "text"],  # contrastive: the heads compared (audio, image, text)
        "trainable": ["audio"],  # audioclip heads that learn; the others are frozen
        "prompt": "{}",  # label -> text; "{}" is the original's (the bare label)
    },
    "train": {
        "epochs": 50,
        "batch_size": 64,  # global: split across processes
        "eval_batch_size": 64,  # per process
        "num_workers": 4,  # DataLoader workers per process
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda
        "amp": "auto",  # auto (bf16 on a GPU that has it, else fp16; off on CPU) | off | bf16 | fp16
        "grad_clip": None,  # max gradient norm, or null
        "log_every": 10,  # steps between step-level log lines
        "progress": True,  # tqdm bars (rank 0)
        "test_every_epoch": False,  # also score the test set each epoch (monitoring only, never for selection)
        "max_steps_per_epoch": None,  # cut epochs short (smoke runs)
    },
    "optim": {
        "name": "sgd",
        "lr": 5.0e-5,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5.0e-4,
        "no_decay": ["fbsp.", "logit_scale"],  # parameter-name parts kept out of weight decay
    },
    "sched": {"name": "exponential", "gamma": 0.98},  # stepped once per epoch
    "data": {
        "dataset": "esc50",  # esc50 | us8k | audioset | folder | shards
        "root": None,  # dataset folder (folder: a folder or a CSV file; shards: the prepared folder)
        "options": {},  # reader options, e.g. {subset: esc10, audio_dir: audio_16k}
        "test_fold": 1,  # the held-out fold (esc50, us8k, a CSV with folds)
        "test_split": None,  # a predefined test split (audioset: eval)
        "test_fraction": 0.2,  # test share for data with neither folds nor splits
        "validation": {"kind": "fraction", "fraction": 0.1, "fold": None},  # fraction | fold | test | none
        "multilabel": None,  # force multi-label (default: from the dataset)
        "cache": True,  # decoded-audio cache (see audioclip.data.cache)
        "cache_dir": None,
        "cache_dtype": "float32",
        "max_clips": None,  # keep only the first N clips of each split (debugging)
        "shuffle_buffer": 1000,  # shards: samples in the shuffle buffer
    },
    "audio": {
        "length": None,  # seconds to crop/pad to; null: the longest clip of the dataset
        "channels": "mono",  # mono | stereo | keep
        "amplitude": "raw",  # raw | minmax (the original UrbanSound8K convention)
        "max_duration": None,  # decode at most this many seconds of each file
    },
    "augment": {
        "time_flip": {"p": 0.5},
        "time_scale": {"max_scale": 1.5},
        "crop": {"pad": "zeros", "quiet_swap": False},
        "noise": {"p": 0.25, "snr_min": 10.0, "snr_max": 120.0},
    },
    "image": {"size": None, "num_frames": 10},  # size null: the model's input size
    "output": {
        "dir": None,  # default: runs/<name>
        "export": True,  # write the best weights in the official checkpoint format
        "tensorboard": True,  # when the tensorboard package is installed
    },
}

# keys whose value is a free-form mapping (not checked against DEFAULTS)
_FREE = {("data", "options"), ("augment", "time_flip"), ("augment", "time_scale"), ("augment", "crop"),
         ("augment", "noise"), ("data", "validation")}


def list_configs() -> list[str]:
    """Names of the bundled regime configs."""
    files = resources.files(_PACKAGE).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


MAX_CONFIG_BYTES = 1_000_000


def _read(name_or_path: str | Path) -> tuple[dict, str]:
    text_name = str(name_or_path)
    path = Path(text_name)
    if os.path.lexists(path):  # a file named: read bounded (a FIFO, /dev/zero or a 2 GB file is refused at once)
        try:
            data = read_bytes_bounded(path, MAX_CONFIG_BYTES, what="config")
        except FileReadError as err:
            raise ConfigError(str(err)) from None
        try:
            text, name = data.decode("utf-8"), path.stem
        except UnicodeDecodeError:
            raise ConfigError(f"config {text_name}: not a UTF-8 text (YAML) file") from None
    elif text_name in list_configs():
        text, name = resources.files(_PACKAGE).joinpath(f"{text_name}.yaml").read_text(), text_name
    else:
        raise ConfigError(
            f"no config {text_name!r}: not a file, nor a bundled config ({', '.join(list_configs())})"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {text_name}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {text_name}: expected a mapping at the top level")
    return data, name


def merge(base: dict, update: dict, where: tuple[str, ...] = ()) -> dict:
    """``update`` laid over ``base`` (both left untouched); unknown keys raise :class:`ConfigError`."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = (*where, key)
        if where in _FREE:  # inside a free-form mapping: any key
            out[key] = copy.deepcopy(value)
        elif key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {'.'.join(path)!r} (known here: {known})")
        elif path in _FREE:
            if value is None:
                out[key] = None
            elif isinstance(value, dict):
                out[key] = {**(base[key] or {}), **copy.deepcopy(value)}
            else:
                raise ConfigError(f"config key {'.'.join(path)!r} takes a mapping or null, got {value!r}")
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {'.'.join(path)!r} is a section; give it a mapping")
            out[key] = merge(base[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(raw: str) -> Any:
    """A command-line value as YAML, with numbers like ``1e-3`` read as numbers (YAML 1.1 wants ``1.0e-3``)."""
    if not raw.strip():
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply ``["section.key=value", ...]``; values are parsed as YAML."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        value = _parse_value(raw)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"--set: empty key in {item!r}")
        current: Any = config
        for key in keys:
            current = current.get(key) if isinstance(current, dict) else None
        if isinstance(current, str) and not isinstance(value, str) and value is not None:
            value = raw  # a text setting keeps the text as typed ("{}" is a prompt, not a mapping)
        update: Any = value
        for key in reversed(keys):
            update = {key: update}
        config = merge(config, update)
    return config


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults, then the file (bundled name or path), then ``overrides``; checked."""
    config = copy.deepcopy(DEFAULTS)
    name = "run"
    if name_or_path is not None:
        data, name = _read(name_or_path)
        config = merge(config, data)
    config = apply_overrides(config, overrides or [])
    if not config.get("name"):
        config["name"] = name
    check(config)
    return config


def check(config: dict) -> None:
    """Reject values that cannot work, naming the key."""
    m, t, tr = config["model"], config["task"], config["train"]
    if m["kind"] not in get_args(ModelKind):
        raise ConfigError(f"model.kind must be audioclip or esresnext, got {m['kind']!r}")
    if t["loss"] not in get_args(Loss):
        raise ConfigError(f"task.loss must be contrastive, prompt_ce or classify, got {t['loss']!r}")
    if m["kind"] == "esresnext" and t["loss"] != "classify":
        raise ConfigError("model.kind esresnext trains with task.loss: classify")
    if m["kind"] == "audioclip" and t["loss"] == "classify":
        raise ConfigError("task.loss classify is for model.kind esresnext; AudioCLIP uses contrastive or prompt_ce")
    bad = set(t["modalities"]) - {"audio", "image", "text"}
    if bad or "audio" not in t["modalities"] or len(t["modalities"]) < 2 and t["loss"] == "contrastive":
        raise ConfigError(f"task.modalities must include audio and another of image, text; got {t['modalities']}")
    bad = set(t["trainable"]) - {"audio", "image", "text"}
    if bad:
        raise ConfigError(f"task.trainable: unknown heads {sorted(bad)} (audio, image, text)")
    if "{}" not in t["prompt"]:
        raise ConfigError(f"task.prompt must contain {{}} where the label goes, got {t['prompt']!r}")
    if tr["amp"] not in ("auto", "off", "bf16", "fp16"):
        raise ConfigError(f"train.amp must be auto, off, bf16 or fp16, got {tr['amp']!r}")
    if tr["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {tr['device']!r}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(tr[key], int) or tr[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {tr[key]!r}")
    for section, key in (("optim", "lr"), ("optim", "momentum"), ("optim", "weight_decay"), ("sched", "gamma")):
        value = config[section][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{section}.{key} must be a number, got {value!r} (in YAML files write 1.0e-4, not 1e-4)")
    if config["optim"]["name"] != "sgd":
        raise ConfigError(f"optim.name: only sgd (the paper's) is implemented, got {config['optim']['name']!r}")
    if config["sched"]["name"] not in ("exponential", "none"):
        raise ConfigError(f"sched.name must be exponential or none, got {config['sched']['name']!r}")
    if config["data"]["dataset"] not in ("esc50", "us8k", "audioset", "folder", "shards"):
        raise ConfigError(f"data.dataset: unknown {config['data']['dataset']!r}")
    if config["audio"]["channels"] not in ("mono", "stereo", "keep"):
        raise ConfigError(f"audio.channels must be mono, stereo or keep, got {config['audio']['channels']!r}")
    if config["audio"]["amplitude"] not in ("raw", "minmax"):
        raise ConfigError(f"audio.amplitude must be raw or minmax, got {config['audio']['amplitude']!r}")


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
