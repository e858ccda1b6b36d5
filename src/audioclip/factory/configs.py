"""Model configs: the bundled architectures, and the bounds every other config is checked against before a build.

A config that is not bundled (a JSON file, a dict, a Hub folder's
``model_cfg``) may come from anyone: it is read bounded, every setting is
checked against :data:`_CONFIG_SCHEMA`, and its parameters are counted on
PyTorch's meta device (no memory) before anything is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..checkpoints import CheckpointError
from . import build

__all__ = ["MAX_CONFIG_BYTES", "MAX_PARAMETERS", "check_model_config", "list_models", "model_config"]


def list_models() -> list[str]:
    """Architecture names (the bundled JSON configs in ``audioclip/model_configs``).

    Read from the package data directly, so that telling what a name means
    (:func:`audioclip.factory.describe_source`) imports no torch.
    """
    from importlib import resources

    files = resources.files("audioclip.model_configs").iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


MAX_CONFIG_BYTES = 1_000_000  # a model config is a page of JSON (the bundled ones: under 1 KB)
MAX_PARAMETERS = 2**31  # 8 GiB of float32: twenty times AudioCLIP-RN50 (134 M parameters)

# What a model config may hold: each setting a bundled config uses (and two more of open_clip's plain
# CLIP towers), with its bounds, all checked before anything is built. A setting that is not here is
# refused: open_clip reads some (``hf_model_name``, ``timm_model_name``) as models to download.
_INT, _NUM, _BOOL, _STR, _LAYERS = "whole number", "number", "true or false", "string", "4 whole numbers"
_CONFIG_SCHEMA: dict[str, Any] = {
    "name": (_STR,), "description": (_STR,), "kind": (_STR,), "quick_gelu": (_BOOL,),
    "embed_dim": (_INT, 1, 8192), "num_classes": (_INT, 1, 100_000),
    "vision_cfg": {"image_size": (_INT, 16, 1024), "layers": (_LAYERS, 1, 64), "width": (_INT, 1, 1024),
                   "patch_size": (_INT, 1, 1024), "head_width": (_INT, 1, 1024), "mlp_ratio": (_NUM, 0.25, 16)},
    "text_cfg": {"context_length": (_INT, 1, 1024), "vocab_size": (_INT, 1, 262_144), "width": (_INT, 1, 4096),
                 "heads": (_INT, 1, 128), "layers": (_INT, 1, 96), "mlp_ratio": (_NUM, 0.25, 16)},
    "audio_cfg": {"n_fft": (_INT, 16, 65_536), "hop_length": (_INT, 1, 65_536), "win_length": (_INT, 1, 65_536),
                  "normalized": (_BOOL,), "layers": (_LAYERS, 1, 64), "groups": (_INT, 1, 256),
                  "width_per_group": (_INT, 1, 256), "num_bands": (_INT, 1, 16),
                  "sample_rate": (_INT, 1000, 384_000)},
}


def check_model_config(cfg: Any, where: str) -> dict[str, Any]:
    """``cfg`` if it is a model config within :data:`_CONFIG_SCHEMA`'s bounds, else a one-line ``CheckpointError``.

    Bounds (inclusive): ``embed_dim`` 1-8192; ``vision_cfg``: ``image_size``
    16-1024, ``width`` 1-1024, ``layers`` 1-64 (each of 4), ``patch_size`` and
    ``head_width`` 1-1024; ``text_cfg``: ``context_length`` 1-1024,
    ``vocab_size`` 1-262,144, ``width`` 1-4096, ``heads`` 1-128, ``layers``
    1-96; ``audio_cfg``: ``n_fft``, ``hop_length``, ``win_length`` 16/1-65,536,
    ``layers`` 1-64 (each of 4), ``groups`` and ``width_per_group`` 1-256,
    ``num_bands`` 1-16, ``sample_rate`` 1,000-384,000 Hz; ``num_classes``
    1-100,000; ``kind`` "audioclip" or "esresnext". Nothing is built or
    allocated to check this (a config of a billion-wide embedding fails here
    at once).
    """
    def fail(problem: str):
        raise CheckpointError(f"{where}: invalid model config: {problem}")

    def check(section: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> None:
        for key, value in section.items():
            rule = schema.get(key)
            if rule is None:
                fail(f"{prefix}{key!r} is not a setting of audioclip's models (known: {', '.join(schema)})")
            if isinstance(rule, dict):
                if not isinstance(value, Mapping):
                    fail(f"{prefix}{key} is a {type(value).__name__}, not an object")
                check(value, rule, f"{prefix}{key}.")
                continue
            kind, *bounds = rule
            if value is None and key == "patch_size":  # the ResNet image tower has no patches
                continue
            values = value if kind == _LAYERS and isinstance(value, (list, tuple)) else [value]
            ok = {_STR: isinstance(value, str), _BOOL: isinstance(value, bool),
                  _INT: type(value) is int, _NUM: type(value) in (int, float),
                  _LAYERS: (len(values) == 4 or not isinstance(value, (list, tuple)))
                  and all(type(v) is int for v in values)}[kind]
            if ok and bounds:
                ok = all(bounds[0] <= v <= bounds[1] for v in values)
            if not ok:
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                span = f" from {bounds[0]:,} to {bounds[1]:,}" if bounds else ""
                fail(f"{prefix}{key} is {shown}, not a {kind}{span}")

    if not isinstance(cfg, Mapping):
        fail(f"a JSON object expected, found {type(cfg).__name__}")
    check(cfg, _CONFIG_SCHEMA, "")
    if cfg.get("kind", "audioclip") not in ("audioclip", "esresnext"):
        fail(f"kind is {cfg['kind']!r}, not 'audioclip' or 'esresnext'")
    audio = cfg.get("audio_cfg", {})
    for key in ("hop_length", "win_length"):
        if audio.get(key, 0) > audio.get("n_fft", 2048):
            fail(f"audio_cfg.{key} is more than n_fft ({audio.get('n_fft', 2048)})")
    return dict(cfg)


def model_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The config of an architecture name, a JSON file given explicitly (read bounded) or a dict, checked.

    Configs other than the bundled ones are bounded (:func:`check_model_config`)
    and counted on PyTorch's meta device (no memory) before anything is built:
    at most :data:`MAX_PARAMETERS` parameters.
    """
    import json

    from ..model.config import load_model_config

    if isinstance(config, Mapping):
        where, cfg = "config", config
    elif os.fspath(config) in list_models():
        return load_model_config(os.fspath(config))
    else:
        from ..io import FileReadError, read_text_bounded

        where = os.fspath(config)
        try:
            cfg = json.loads(read_text_bounded(config, MAX_CONFIG_BYTES, what="model config"))
        except FileReadError as err:
            if not os.path.lexists(where):
                raise CheckpointError(f"unknown model config {where!r}: not a bundled name "
                                      f"({', '.join(list_models())}) nor a JSON file") from None
            raise CheckpointError(str(err)) from None
        except ValueError as err:
            raise CheckpointError(f"{where}: the model config is not valid JSON ({err})") from None
    cfg = load_model_config(check_model_config(cfg, where))
    parameters = _parameter_count(cfg)
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f"{where}: invalid model config: {parameters:,} parameters, more than the "
                              f"{MAX_PARAMETERS:,} allowed")
    return cfg


def _parameter_count(cfg: Mapping[str, Any]) -> int:
    import torch

    with torch.device("meta"):
        model = build.build_model(cfg, init=False)
    return sum(p.numel() for p in model.parameters())

