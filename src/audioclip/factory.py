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
paying for it.
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

from . import checkpoints
from .checkpoints import REGISTRY, CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ModelSource",
    "RandomWeightsWarning",
    "architecture_seed",
    "checkpoint_id",
    "create_model",
    "describe_source",
    "list_models",
    "list_pretrained",
    "resolve_device",
]


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights (an architecture name without ``pretrained=``)."""


def list_models() -> list[str]:
    """Architecture names (the bundled JSON configs in ``audioclip/model_configs``).

    Read from the package data directly, so that telling what a name means
    (:func:`describe_source`) imports no torch.
    """
    from importlib import resources

    files = resources.files("audioclip.model_configs").iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def list_pretrained() -> list[tuple[str, str]]:
    """``(architecture, weights name)`` for every registered checkpoint, e.g. ``("AudioCLIP-RN50", "full")``."""
    return [(w.architecture, name) for name, w in REGISTRY.items()]


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


def _model_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The config of an architecture name, a JSON file given explicitly (read bounded) or a dict, checked.

    Configs other than the bundled ones are bounded (:func:`check_model_config`)
    and counted on PyTorch's meta device (no memory) before anything is built:
    at most :data:`MAX_PARAMETERS` parameters.
    """
    import json

    from .model.config import load_model_config

    if isinstance(config, Mapping):
        where, cfg = "config", config
    elif os.fspath(config) in list_models():
        return load_model_config(os.fspath(config))
    else:
        from .io import FileReadError, read_text_bounded

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
        model = _build(cfg, init=False)
    return sum(p.numel() for p in model.parameters())


def _kind(cfg: Mapping[str, Any]) -> str:
    return cfg.get("kind", "audioclip")


# --------------------------------------------------------------------------
# What a name means, told without loading anything heavy
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """What ``create_model(name)`` will load: ``kind`` is ``"architecture"``, ``"registry"`` or ``"file"``."""

    name: str
    kind: str
    architecture: str | None  # None for a file until its shapes are read
    weights: checkpoints.PretrainedWeights | None = None
    path: Path | None = None


HUB_PREFIX = "hf-hub:"
HUB_CONFIG = "config.json"  # names the architecture (and its full config) of a Hub folder
HUB_WEIGHTS = "model.safetensors"


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


# --------------------------------------------------------------------------
# Building modules
# --------------------------------------------------------------------------


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


def _build(cfg: Mapping[str, Any], num_classes: int | None = None, *, init: bool = True) -> nn.Module:
    from .model import AudioCLIP, AudioHeadConfig, ESResNeXtFbsp

    with contextlib.nullcontext() if init else _no_weight_init():
        if _kind(cfg) == "audioclip":
            return AudioCLIP(dict(cfg))
        audio_cfg = dict(cfg.get("audio_cfg", {}))
        if "layers" in audio_cfg:
            audio_cfg["layers"] = tuple(audio_cfg["layers"])
        classes = num_classes if num_classes is not None else cfg.get("num_classes", 527)
        return ESResNeXtFbsp(num_classes=classes, config=AudioHeadConfig(**audio_cfg))


def _expected_shapes(cfg: Mapping[str, Any], num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        model = _build(cfg, num_classes, init=False)
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
        cfg = _model_config(name)
        if (_kind(cfg) == "esresnext") != is_classifier:
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
    from .model import AudioCLIP

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


# --------------------------------------------------------------------------
# Hugging Face Hub folders
# --------------------------------------------------------------------------


def _hub_files(source: ModelSource, *, cache_dir, offline) -> tuple[Path, dict[str, Any]]:
    """``(weights file, config)`` of a Hub repository or a local folder laid out like one.

    A repository is fetched by ``huggingface_hub`` into its own cache (its
    revisions, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN`` apply);
    ``offline=True`` reads that cache only.
    """
    import json

    if source.kind == "folder":
        folder = Path(source.path)
        config_path, weights_path = folder / HUB_CONFIG, folder / HUB_WEIGHTS
        if not weights_path.is_file():
            raise CheckpointError(f"{folder}: has {HUB_CONFIG} but no {HUB_WEIGHTS}")
    else:
        config_path, weights_path = _hub_download(source.name, (HUB_CONFIG, HUB_WEIGHTS),
                                                  cache_dir=cache_dir, offline=offline)
    from .io import FileReadError, read_text_bounded

    try:
        cfg = json.loads(read_text_bounded(config_path, MAX_CONFIG_BYTES, what=HUB_CONFIG))
    except FileReadError as e:
        raise CheckpointError(f"{source.name}: {e}") from None
    except ValueError as e:
        raise CheckpointError(f"{source.name}: {HUB_CONFIG} is not readable JSON ({e})") from None
    if not isinstance(cfg, dict) or not (cfg.get("architecture") or cfg.get("model_cfg")):
        raise CheckpointError(f"{source.name}: {HUB_CONFIG} names no architecture (an 'architecture' key)")
    # The folder names a bundled architecture, or carries its full config (then "architecture" is only a
    # label): never a path, which would be opened as a config file.
    architecture, model_cfg = cfg.get("architecture"), cfg.get("model_cfg")
    if model_cfg is not None:
        check_model_config(model_cfg, f"{source.name}: {HUB_CONFIG} model_cfg")
        if architecture is not None and (not isinstance(architecture, str) or len(architecture) > 200):
            raise CheckpointError(f"{source.name}: {HUB_CONFIG} 'architecture' is not a name")
    elif architecture not in list_models():
        shown = repr(architecture) if len(repr(architecture)) <= 60 else repr(architecture)[:57] + "..."
        raise CheckpointError(f"{source.name}: {HUB_CONFIG} names the architecture {shown}, which is not "
                              f"bundled ({', '.join(list_models())}) and gives no 'model_cfg'")
    return Path(weights_path), cfg


def _hub_download(name: str, filenames: tuple[str, ...], *, cache_dir, offline) -> list[str]:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:
        raise CheckpointError(f'{name}: loading from the Hugging Face Hub needs pip install "audioclip[hub]"') from None
    repo, _, revision = name[len(HUB_PREFIX):].partition("@")
    paths = []
    for filename in filenames:
        try:
            paths.append(hf_hub_download(repo, filename, revision=revision or None, local_files_only=bool(offline),
                                         cache_dir=None if cache_dir is None else Path(cache_dir) / "hf-hub"))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            raise CheckpointError(f"{name}: {filename} is not in the Hugging Face cache and downloads are off "
                                  f"({type(e).__name__})") from None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            raise CheckpointError(f"{name}: cannot fetch {filename} from the Hub"
                                  f"{f' (HTTP {status})' if status else ''}: {str(e).splitlines()[0]}") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{name}: cannot fetch {filename} from the Hub: {e}") from None
    return paths


# --------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------


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
        cfg = _model_config(config if config is not None else source.architecture)
        if deterministic:
            with _seeded(architecture_seed(source.architecture)):
                model = _build(cfg, num_classes)
            trained = "esrnxfbsp" if _kind(cfg) == "esresnext" else "full"
            warnings.warn(f"{source.architecture} has random weights (the same in every run): for trying the "
                          f"package out, its results mean nothing; trained weights: '{trained}'", RandomWeightsWarning,
                          stacklevel=1)  # here: shown once per process (a command may build it twice)
        else:
            model = _build(cfg, num_classes)
        architecture, path, weights = source.architecture, None, None
    else:
        hub_cfg = None
        if source.kind in ("hub", "folder"):
            path, hub_cfg = _hub_files(source, cache_dir=cache_dir, offline=offline)
            weights = None
        else:
            path, weights = checkpoints.resolve(source.name, **options)
        if config is None and hub_cfg is not None:
            config = hub_cfg.get("model_cfg") or hub_cfg.get("architecture")
            source = ModelSource(source.name, source.kind, hub_cfg.get("architecture"), path=path)
        # The config is checked (bounded, no path taken from a file) before the weights are read.
        if config is not None and source.architecture is not None and source.kind in ("hub", "folder"):
            cfg, architecture = _model_config(config), source.architecture
        elif config is not None:
            cfg = _model_config(config)
            architecture = cfg.get("name") or (os.fspath(config) if not isinstance(config, Mapping) else "custom")
        elif source.architecture is not None:
            architecture, cfg = source.architecture, _model_config(source.architecture)
        else:
            architecture, cfg = None, None
        state = checkpoints.load_state_dict(path, mmap=True)
        if cfg is None:
            architecture, cfg = recognise_architecture(state, str(path))
        classes = _classes_of(state) if _kind(cfg) == "esresnext" else None
        # A state dict that covers the whole model replaces every parameter:
        # skip their random initialisation.
        partial = _kind(cfg) == "audioclip" and not any(k.startswith("audio.") for k in state)
        model = _build(cfg, classes, init=partial)
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
        from .model import apply_audio_mode

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
