"""One way to build a model: :func:`create_model`, :func:`list_models`, :func:`list_pretrained`.

``create_model(name)`` takes

- an architecture (``list_models()``: ``"AudioCLIP-RN50"``, ``"AudioCLIP-tiny"``,
  ``"ESResNeXt-fbsp"``, ...): random weights, or ``pretrained=`` weights;
- a registered weights name (``list_pretrained()``: ``"full"``, ``"partial"``,
  ``"clip"``, ``"esrnxfbsp"``): downloaded once into the cache, verified by
  sha256, loaded into the architecture the registry ties it to;
- a checkpoint file: its architecture is recognised from its tensor shapes
  (a file saved from ``AudioCLIP("AudioCLIP-tiny")`` loads with no config).

The model code (:mod:`audioclip.model`) knows nothing of files or downloads;
this module joins it to :mod:`audioclip.checkpoints`. Every command, the index,
evaluation and training build their models here.

torch is imported inside the functions: the command line checks names before
paying for it. The parts: :mod:`.configs` (the bundled architectures and the
bounds of any other config), :mod:`.build` (a config to a module),
:mod:`.hub` (Hugging Face Hub repositories and folders); this module joins
them into :func:`create_model` and names what was built (:func:`checkpoint_id`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import checkpoints
from ..checkpoints import REGISTRY, CheckpointError
from . import build
from .build import config_kind
from .configs import MAX_CONFIG_BYTES, MAX_PARAMETERS, check_model_config, list_models, model_config
from .hub import HUB_CONFIG, HUB_PREFIX, HUB_WEIGHTS, hub_files

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_PARAMETERS",
    "HUB_CONFIG",
    "HUB_PREFIX",
    "HUB_WEIGHTS",
    "ModelSource",
    "RandomWeightsWarning",
    "architecture_seed",
    "check_model_config",
    "checkpoint_id",
    "create_model",
    "describe_source",
    "list_models",
    "list_pretrained",
    "load_trunk",
    "recognise_architecture",
    "resolve_device",
]


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights (an architecture name without ``pretrained=``)."""


def list_pretrained() -> list[tuple[str, str]]:
    """``(architecture, weights name)`` for every registered checkpoint, e.g. ``("AudioCLIP-RN50", "full")``."""
    return [(w.architecture, name) for name, w in REGISTRY.items()]


@dataclass(frozen=True)
class ModelSource:
    """What ``create_model(name)`` will load.

    ``kind``: ``"architecture"``, ``"registry"`` (registered weights), ``"file"``,
    ``"hub"`` (``hf-hub:ORG/NAME``) or ``"folder"`` (a local Hub folder).
    """

    name: str
    kind: str
    architecture: str | None  # None for a file until its shapes are read
    weights: checkpoints.PretrainedWeights | None = None
    path: Path | None = None


def describe_source(name: str | os.PathLike) -> ModelSource:
    """Tell what ``name`` is without importing torch or downloading; raise ``CheckpointError`` if nothing.

    As in :func:`audioclip.checkpoints.resolve`, a registry name (``"full"``)
    wins over a file of that name in the working folder; a registry *file*
    name (``"AudioCLIP-Full-Training.pt"``) is taken as the registry's only when
    no such file exists.
    """
    text = os.fspath(name)
    if text in list_models():
        return ModelSource(text, "architecture", text)
    if text.startswith(HUB_PREFIX):
        repo, _, _ = text[len(HUB_PREFIX):].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise CheckpointError(f"{text!r}: a Hub model is named hf-hub:ORG/NAME (optionally @REVISION)")
        return ModelSource(text, "hub", None)
    weights = checkpoints.lookup(text)
    if weights is not None:
        return ModelSource(text, "registry", weights.architecture, weights)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            if (path / HUB_CONFIG).is_file():
                return ModelSource(text, "folder", None, path=path)
            raise CheckpointError(f"{path}: is a folder, not a checkpoint file (nor a model folder with {HUB_CONFIG})")
        return ModelSource(text, "file", None, path=path)
    weights = checkpoints.lookup_filename(text)
    if weights is not None:
        return ModelSource(text, "registry", weights.architecture, weights)
    known = ", ".join([*REGISTRY, *list_models()])
    raise CheckpointError(
        f"{text!r} is neither an existing file, a registered checkpoint nor an architecture; known names: {known}"
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"cpu"`` -> CPU; ``"auto"`` -> CUDA when available; ``"cuda[:N]"`` must exist (else ``ValueError``)."""
    import torch

    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but PyTorch sees no CUDA GPU here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but there are {torch.cuda.device_count()} GPU(s)")
    return device


def architecture_seed(name: str) -> int:
    """The seed of an architecture's random weights: from the sha256 of its name, the same in every process.

    (Python's ``hash()`` of a string changes from process to process.)
    """
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw from torch's CPU generator seeded with ``seed``, leaving the caller's generator state as it was.

    Modules are built on the CPU, so their initialisation draws from that
    generator only; CUDA generators are neither used nor touched.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _expected_shapes(cfg: Mapping[str, Any], num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        model = build.build_model(cfg, num_classes, init=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _classes_of(state: Mapping[str, torch.Tensor]) -> int | None:
    fc = state.get("fc.weight")
    return int(fc.shape[0]) if fc is not None and fc.dim() == 2 else None


def recognise_architecture(state: Mapping[str, torch.Tensor], source: str) -> tuple[str, dict[str, Any]]:
    """The bundled architecture whose state-dict keys and shapes ``state`` has: ``(name, config)``.

    An AudioCLIP file must match every key; a CLIP-only file (no ``audio.*``)
    its text and image keys; a standalone classifier any number of classes.
    """
    is_classifier = "fc.weight" in state and not any(k.startswith("visual.") for k in state)
    has_audio = any(k.startswith("audio.") for k in state)
    closest: tuple[int, str] | None = None
    for name in list_models():
        cfg = model_config(name)
        if (config_kind(cfg) == "esresnext") != is_classifier:
            continue
        expected = _expected_shapes(cfg, _classes_of(state) if is_classifier else None)
        if not is_classifier and not has_audio:  # CLIP-only: the audio head stays as built
            expected = {k: v for k, v in expected.items()
                        if not k.startswith("audio.") and not k.startswith("logit_scale_a")}
        wrong = sum(1 for k, shape in expected.items() if tuple(getattr(state.get(k), "shape", (-1,))) != shape)
        wrong += sum(1 for k in state if k not in expected)
        if wrong == 0:
            return name, cfg
        if closest is None or wrong < closest[0]:
            closest = (wrong, name)
    what = "standalone audio classifier" if is_classifier else "AudioCLIP"
    hint = f" (closest: {closest[1]}, {closest[0]} keys differ)" if closest else ""
    raise CheckpointError(
        f"{source}: the tensors match no bundled {what} architecture{hint}; "
        f"known: {', '.join(list_models())}. Pass config= (or a JSON config) naming the architecture it was built with"
    )


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a full state dict, or a CLIP-only one into an AudioCLIP (text and image heads), checking every key."""
    from ..model import AudioCLIP

    expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    if isinstance(model, AudioCLIP):
        if "fbsp.m" in state and not any(k.startswith("visual.") for k in state):
            raise CheckpointError(
                f"{source}: this is a standalone audio classifier (ESResNeXt-fbsp) checkpoint, not an AudioCLIP "
                "one; load it with create_model() on its own, or pass it as audio_weights="
            )
        if not any(k.startswith("audio.") for k in state):
            audio_only = [k for k in expected if k.startswith("audio.") or k.startswith("logit_scale_a")]
            checkpoints.check_state_dict(state, expected, source, ignore_missing=audio_only)
            model.load_state_dict(state, strict=False)
            return
    elif "fc.weight" not in state:
        hint = " (an AudioCLIP checkpoint?)" if "audio.fc.weight" in state else ""
        raise CheckpointError(f"{source}: no 'fc.weight' key, not a standalone audio classifier{hint}")
    checkpoints.check_state_dict(state, expected, source)
    model.load_state_dict(state, strict=True)


def load_trunk(head: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy all but the classifier layer of a standalone classifier's ``state`` into an audio head."""
    expected = {k: v.shape for k, v in head.state_dict().items() if not k.startswith("fc.")}
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    checkpoints.check_state_dict(trunk, expected, source)
    head.load_state_dict(trunk, strict=False)


def create_model(
    name: str | os.PathLike,
    *,
    pretrained: str | os.PathLike | None = None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    audio_weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    audio_mode: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: bool = True,
    deterministic: bool = True,
) -> nn.Module:
    """Build an ``AudioCLIP`` (or a standalone ``ESResNeXtFbsp``) from an architecture, weights name or file.

    - ``name``: see the module docstring. ``pretrained``: weights (name or
      file) for an architecture ``name``. ``config``: the architecture of a
      file whose shapes match no bundled one (a name, JSON path or dict).
    - ``audio_weights``: a standalone classifier (``"esrnxfbsp"`` or a file)
      whose trunk and front end go into the audio head, as the original does
      when AudioCLIP training starts from CLIP.
    - ``num_classes``: classes of a new standalone classifier (default 527).
    - ``device``: ``None``/``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``;
      asking for CUDA where there is none is a ``ValueError``.
    - ``audio_mode``: ``None`` returns the trainable module; ``"default"``,
      ``"fused"``, ``"bf16"`` or ``"plain"`` an inference model made by
      :func:`audioclip.model.apply_audio_mode` (``"default"`` is exact).
    - ``deterministic``: an architecture's random weights are drawn from a
      generator seeded with its name (:func:`architecture_seed`), so they are
      the same in every process (and so their :func:`checkpoint_id`: outputs
      made with them can be resumed and searched); a ``UserWarning`` says they
      are random. The caller's random state is left as it was. ``False``
      draws them from torch's global generator, with no warning (training
      from scratch under the caller's seed).

    Returns the model in eval mode, with ``model.pretrained_cfg`` saying what
    was loaded (architecture, weights name, file); :func:`checkpoint_id` gives
    the identity stored beside embeddings made with it. Files are read with
    ``weights_only=True`` and memory-mapped where possible; parameters that are
    loaded are not randomly initialised first.
    """
    source = describe_source(name)
    target = resolve_device(device)
    if source.kind == "architecture" and pretrained is not None:
        weights_source = describe_source(pretrained)
        if weights_source.kind == "architecture":
            raise CheckpointError(f"pretrained={os.fspath(pretrained)!r} is an architecture, not weights")
        source = ModelSource(os.fspath(pretrained), weights_source.kind, source.architecture,
                             weights_source.weights, weights_source.path)
    elif pretrained is not None:
        raise ValueError(f"pretrained= goes with an architecture name; {os.fspath(name)!r} already names weights")

    options = dict(cache_dir=cache_dir, offline=offline, progress=progress)
    if source.kind == "architecture":
        cfg = model_config(config if config is not None else source.architecture)
        if deterministic:
            with _seeded(architecture_seed(source.architecture)):
                model = build.build_model(cfg, num_classes)
            trained = "esrnxfbsp" if config_kind(cfg) == "esresnext" else "full"
            warnings.warn(f"{source.architecture} has random weights (the same in every run): for trying the "
                          f"package out, its results mean nothing; trained weights: '{trained}'", RandomWeightsWarning,
                          stacklevel=1)  # here: shown once per process (a command may build it twice)
        else:
            model = build.build_model(cfg, num_classes)
        architecture, path, weights = source.architecture, None, None
    else:
        hub_cfg = None
        if source.kind in ("hub", "folder"):
            path, hub_cfg = hub_files(source.name, source.path if source.kind == "folder" else None,
                                      cache_dir=cache_dir, offline=offline)
            weights = None
        else:
            path, weights = checkpoints.resolve(source.name, **options)
        if config is None and hub_cfg is not None:
            config = hub_cfg.get("model_cfg") or hub_cfg.get("architecture")
            source = ModelSource(source.name, source.kind, hub_cfg.get("architecture"), path=path)
        # The config is checked (bounded, no path taken from a file) before the weights are read.
        if config is not None and source.architecture is not None and source.kind in ("hub", "folder"):
            cfg, architecture = model_config(config), source.architecture
        elif config is not None:
            cfg = model_config(config)
            architecture = cfg.get("name") or (os.fspath(config) if not isinstance(config, Mapping) else "custom")
        elif source.architecture is not None:
            architecture, cfg = source.architecture, model_config(source.architecture)
        else:
            architecture, cfg = None, None
        state = checkpoints.load_state_dict(path, mmap=True)
        if cfg is None:
            architecture, cfg = recognise_architecture(state, str(path))
        classes = _classes_of(state) if config_kind(cfg) == "esresnext" else None
        # A state dict that covers the whole model replaces every parameter:
        # skip their random initialisation.
        partial = config_kind(cfg) == "audioclip" and not any(k.startswith("audio.") for k in state)
        model = build.build_model(cfg, classes, init=partial)
        _load_into(model, state, str(path))
        del state

    if audio_weights is not None:
        head = getattr(model, "audio", None)
        if head is None:
            raise ValueError("audio_weights= is for AudioCLIP models")
        audio_path, _ = checkpoints.resolve(audio_weights, **options)
        load_trunk(head, checkpoints.load_state_dict(audio_path, mmap=True), str(audio_path))

    model.pretrained_cfg = {
        "source": os.fspath(name),
        "architecture": architecture,
        "weights": weights.name if weights is not None else None,
        "sha256": weights.sha256 if weights is not None else None,
        "file": str(path) if path is not None else None,
        "audio_weights": os.fspath(audio_weights) if audio_weights is not None else None,
    }
    if weights is None and path is None or audio_weights is not None:
        checkpoint_id(model)  # of the weights as built, before a transform changes the layout
    model = model.to(target).eval()
    if audio_mode is not None:
        from ..model import apply_audio_mode

        info = model.pretrained_cfg
        model = apply_audio_mode(model, audio_mode, inplace=True)
        info["audio_mode"] = audio_mode  # recorded with embeddings made by the model
        model.pretrained_cfg = info
    return model


def checkpoint_id(model: nn.Module) -> str:
    """A short identity of the weights of a model made by :func:`create_model`.

    Registered weights: ``name@<published sha256, 16 hex>``; a file:
    ``filename@<its sha256, 16 hex>`` (a renamed copy keeps its identity,
    retraining changes it); random weights: ``architecture@random-<hash of the
    tensors>``. Computed on first call (hashing a file) and remembered.
    """
    info = getattr(model, "pretrained_cfg", None)
    if not isinstance(info, dict):
        raise ValueError("checkpoint_id: the model was not made by audioclip.create_model")
    if "checkpoint_id" not in info:
        if info.get("audio_weights") is not None:
            info["checkpoint_id"] = f"{info['architecture']}@mixed-{_state_digest(model)[:16]}"
        elif info.get("weights") is not None:
            info["checkpoint_id"] = checkpoints.file_checkpoint_id("", REGISTRY[info["weights"]])
        elif info.get("file") is not None:
            info["checkpoint_id"] = checkpoints.file_checkpoint_id(info["file"])
        else:
            info["checkpoint_id"] = f"{info['architecture']}@random-{_state_digest(model)[:16]}"
    return info["checkpoint_id"]


def _state_digest(model: nn.Module) -> str:
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()
