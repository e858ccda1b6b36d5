"""The model of a training config: construction, starting weights, what is frozen, export.

Frozen means frozen: a frozen head's parameters have ``requires_grad=False``,
are left out of the optimizer, and its modules are put back in eval mode every
time the model switches to training, so BatchNorm running statistics never
move either (:func:`set_train_mode`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoints import CheckpointError, load_state_dict, resolve, save_state_dict
from ..factory import create_model, list_models, load_trunk
from ..model import AudioCLIP, ESResNeXtFbsp, load_model_config

__all__ = [
    "FBSP_GRAD_EPS",
    "build_model",
    "export_weights",
    "frozen_modules",
    "normalise_fbsp_grads",
    "param_groups",
    "set_train_mode",
    "setup_trainable",
]

# The fbsp front end rescales each of its parameters' gradient by its max-norm
# (see audioclip.model.fbsp). Training applies it after gradients are summed
# over processes, with this epsilon, the model's.
FBSP_GRAD_EPS = 1e-8

_PAIRS = {"logit_scale_ai": ("audio", "image"), "logit_scale_at": ("audio", "text"), "logit_scale": ("image", "text")}


def audio_head(model: nn.Module) -> ESResNeXtFbsp:
    return model.audio if isinstance(model, AudioCLIP) else model


def build_model(cfg: dict, num_classes: int) -> nn.Module:
    """AudioCLIP or a standalone ESResNeXt-fbsp, with the config's starting weights (through the factory)."""
    m = cfg["model"]
    if m["kind"] == "audioclip":
        if m["weights"]:
            model = create_model(m["weights"], config=m["config"], audio_weights=m["audio_weights"])
        else:
            model = create_model(_architecture(m["config"]), config=m["config"], audio_weights=m["audio_weights"],
                                 deterministic=False)  # from scratch: under the run's own seed
        return model

    if m["weights"] and not m["new_classifier"]:
        head = create_model(m["weights"], config=_as_classifier(m["config"]))
    else:
        head = create_model(_architecture(m["config"]), config=_as_classifier(m["config"]), num_classes=num_classes,
                            deterministic=False)
    if m["imagenet_init"]:
        load_imagenet_trunk(head, m["imagenet_init"])
    if m["weights"] and m["new_classifier"]:
        path, _ = resolve(m["weights"])
        load_trunk(head, load_state_dict(path, mmap=True), str(path))
    return head


def _architecture(config) -> str:
    """The factory name to build ``config`` from: a bundled name as is, else the default architecture it overrides."""
    return config if isinstance(config, str) and config in list_models() else "AudioCLIP-RN50"


def _as_classifier(config) -> dict:
    """A standalone classifier's config from an AudioCLIP config (its audio head) or a classifier config."""
    cfg = load_model_config(config)
    return {"kind": "esresnext", "num_classes": cfg.get("num_classes", 527), "audio_cfg": cfg.get("audio_cfg", {})}


def load_imagenet_trunk(head: ESResNeXtFbsp, source: str | Path) -> None:
    """Start the trunk from ImageNet ResNeXt-50 (32x4d) weights, then open the attention gates.

    ``source`` is ``"torchvision"`` (torchvision's IMAGENET1K_V1 weights, downloaded
    to torch's cache when reachable) or a path to such a state dict. The three
    frequency bands take the place of the RGB channels.
    """
    if str(source) == "torchvision":
        from torchvision.models import ResNeXt50_32X4D_Weights

        try:
            state = ResNeXt50_32X4D_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as e:  # no network, proxy, ...
            raise CheckpointError(
                f"ImageNet weights could not be fetched by torchvision ({e}); download "
                f"{ResNeXt50_32X4D_Weights.IMAGENET1K_V1.url} elsewhere and set model.imagenet_init to its path"
            ) from None
        name = "torchvision resnext50_32x4d IMAGENET1K_V1"
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        name = str(source)
    own = head.state_dict()
    trunk = {k: v for k, v in state.items() if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")}
    wrong = [k for k, v in trunk.items() if k not in own or own[k].shape != v.shape]
    absent = [k for k in own if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4") and k not in trunk]
    if wrong or absent or not trunk:
        raise CheckpointError(
            f"{name}: does not fit this audio head's trunk (a ResNeXt-50 32x4d is needed; "
            f"{len(wrong)} mismatched keys, e.g. {wrong[:3]}; {len(absent)} missing, e.g. {absent[:3]})"
        )
    head.load_state_dict(trunk, strict=False)
    head.reset_attention_gates()


def frozen_modules(model: nn.Module, trainable: Iterable[str]) -> list[nn.Module]:
    """The AudioCLIP heads not in ``trainable`` (modules only; see :func:`setup_trainable`)."""
    if not isinstance(model, AudioCLIP):
        return []
    trainable = set(trainable)
    heads = {
        "audio": [model.audio],
        "image": [model.visual],
        "text": [model.transformer, model.token_embedding, model.ln_final],
    }
    return [module for head, modules in heads.items() if head not in trainable for module in modules]


def setup_trainable(model: nn.Module, cfg: dict) -> tuple[list[str], list[str]]:
    """Set ``requires_grad`` from the config; returns (trainable heads, frozen parameter names).

    For AudioCLIP, the heads listed in ``task.trainable`` that take part in the
    task learn; a pair's temperature learns when the pair is compared and one of
    its heads learns. A standalone classifier learns everything.
    """
    if not isinstance(model, AudioCLIP):
        for p in model.parameters():
            if p.numel():  # fbsp's empty 'bias' stays as it is (it never learns)
                p.requires_grad_(True)
        _rebuild_fbsp_params(model)
        return ["audio"], []
    task = cfg["task"]
    used = {"audio", "text"} if task["loss"] == "prompt_ce" else set(task["modalities"])
    heads = [h for h in task["trainable"] if h in used]
    ignored = sorted(set(task["trainable"]) - used)
    if ignored:
        warnings.warn(f"task.trainable lists {ignored}, which the task does not use: kept frozen", stacklevel=2)
    text_params = {"positional_embedding", "text_projection"}
    for name, p in model.named_parameters():
        head = name.split(".")[0]
        if head == "audio":
            on = "audio" in heads
        elif head == "visual":
            on = "image" in heads
        elif head in ("transformer", "token_embedding", "ln_final") or name in text_params:
            on = "text" in heads
        elif name in _PAIRS:
            a, b = _PAIRS[name]
            on = a in used and b in used and (a in heads or b in heads)
        else:
            on = False
        if name == "audio.fbsp.bias":
            on = False
        p.requires_grad_(on)
    _rebuild_fbsp_params(model)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.numel()]
    return heads, frozen


def _rebuild_fbsp_params(model: nn.Module) -> None:
    """Replace the fbsp parameters by plain copies without the per-backward gradient hook.

    The model normalises these gradients in a hook, per backward pass. Under
    DDP that would normalise each process's partial gradient before the
    average (not what a single process computes), and under fp16 loss scaling
    it would normalise the scaled gradient. Training instead calls
    :func:`normalise_fbsp_grads` once the gradients are complete.
    """
    fbsp = audio_head(model).fbsp
    for name in ("m", "fb", "fc"):
        old = getattr(fbsp, name)
        new = nn.Parameter(old.detach().clone(), requires_grad=old.requires_grad)
        setattr(fbsp, name, new)


def normalise_fbsp_grads(model: nn.Module) -> None:
    """Divide each fbsp parameter's gradient by its largest magnitude (the model's rule)."""
    fbsp = audio_head(model).fbsp
    for p in (fbsp.m, fbsp.fb, fbsp.fc):
        if p.grad is not None:
            p.grad.div_(p.grad.abs().max() + FBSP_GRAD_EPS)


def param_groups(model: nn.Module, cfg: dict) -> list[dict]:
    """Trainable parameters in two groups: with weight decay, and without (fbsp, temperatures)."""
    no_decay_parts = cfg["optim"]["no_decay"] or []
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(part in name for part in no_decay_parts) else decay).append(p)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not decay and not no_decay:
        raise ValueError("nothing to train: every parameter is frozen")
    return [g for g in groups if g["params"]]


def set_train_mode(model: nn.Module, frozen: list[nn.Module], freeze_bn: bool = False) -> None:
    """``model.train()``, then frozen heads (and, with ``freeze_bn``, every BatchNorm) back to eval."""
    model.train()
    for module in frozen:
        module.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def export_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the weights in the official format: the plain state dict, the original's keys."""
    return save_state_dict(model.state_dict(), path)
