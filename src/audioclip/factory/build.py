"""Building a module from a config: the one place that turns a config into an ``AudioCLIP`` or an ``ESResNeXtFbsp``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_model", "config_kind"]


def config_kind(cfg: Mapping[str, Any]) -> str:
    """``"audioclip"`` (text, image and audio heads) or ``"esresnext"`` (a standalone audio classifier)."""
    return cfg.get("kind", "audioclip")

@contextlib.contextmanager
def _no_weight_init() -> Iterator[None]:
    """Skip the random initialisation of parameters while modules are built (they are loaded right after).

    The same trick as Hugging Face's ``no_init_weights``: the ``torch.nn.init``
    functions become no-ops for the duration. Buffers computed in constructors
    (the text head's causal mask, the analysis window) are built as usual.
    Saves about 3 s of a full-size model's start-up on 2 cores.
    """
    import torch.nn.init as init

    names = [
        "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
        "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
    ]
    saved = {n: getattr(init, n) for n in names if hasattr(init, n)}
    try:
        for n in saved:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def build_model(cfg: Mapping[str, Any], num_classes: int | None = None, *, init: bool = True) -> nn.Module:
    """The module ``cfg`` describes (``num_classes`` overrides a classifier's); ``init=False`` skips random init."""
    from ..model import AudioCLIP, AudioHeadConfig, ESResNeXtFbsp

    with contextlib.nullcontext() if init else _no_weight_init():
        if config_kind(cfg) == "audioclip":
            return AudioCLIP(dict(cfg))
        audio_cfg = dict(cfg.get("audio_cfg", {}))
        if "layers" in audio_cfg:
            audio_cfg["layers"] = tuple(audio_cfg["layers"])
        classes = num_classes if num_classes is not None else cfg.get("num_classes", 527)
        return ESResNeXtFbsp(num_classes=classes, config=AudioHeadConfig(**audio_cfg))

