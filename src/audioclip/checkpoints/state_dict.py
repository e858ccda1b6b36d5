"""State dicts: ``weights_only`` loading (``.pt``) and safetensors, checking against a model, saving, converting.

Nothing is unpickled but plain tensors and containers; every problem is one
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError

if TYPE_CHECKING:  # torch is imported lazily so that the CLI starts fast
    import torch

__all__ = ["check_state_dict", "convert_checkpoint", "is_safetensors", "load_state_dict", "save_model",
           "save_state_dict"]

_KEY_ORDER = "audioclip.key_order"  # safetensors metadata: the state dict's key order
_LIST_LIMIT = 10


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    # torch's weights_only errors bury the actual cause after this marker
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.split(". ", 1)[0].rstrip(".")
    if len(line) > 160:
        line = line[:157] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _describe(value: object) -> str:
    return type(value).__name__


def load_state_dict(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict (parameter name -> tensor) from a checkpoint file.

    Only plain tensors and containers are unpickled (``weights_only=True``).
    ``mmap=True`` maps the file instead of reading it (tensors are paged in as
    they are copied into a model; files in the pre-1.6 format are read whole).
    A state dict wrapped under ``"state_dict"`` or ``"model"`` is unwrapped,
    and a ``"module."`` prefix shared by all keys (DDP) is removed.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes); delete it and download it again")

    if is_safetensors(path):
        return _load_safetensors(path)
    try:
        obj = _torch_load(path, mmap)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refused for safety: the file contains arbitrary Python objects "
                f"that weights-only loading does not allow ({_short_reason(e)}); "
                "only plain tensor state dicts are accepted"
            ) from e
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_short_reason(e)}"
        ) from e
    except PermissionError as e:
        raise CheckpointError(f"{path}: cannot read file: {e.strerror}") from e
    except Exception as e:  # torch.load fails with many types on bad data
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_short_reason(e)}"
        ) from e

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: contains a {_describe(obj)}, not a state dict (mapping of names to tensors)"
        )
    if not obj:
        raise CheckpointError(f"{path}: state dict is empty")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        examples = ", ".join(
            f"{k!r} ({_describe(obj[k])})" if isinstance(k, str) else f"key {k!r} (not a str)"
            for k in bad[:5]
        )
        raise CheckpointError(
            f"{path}: not a state dict: {len(bad)} entries are not str -> tensor, e.g. {examples}"
        )

    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (memory-mapped; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from safetensors import safe_open

    try:
        state = load_file(path, device="cpu")
        with safe_open(path, framework="pt") as f:
            order = json.loads((f.metadata() or {}).get(_KEY_ORDER, "[]"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {_short_reason(e)}") from e
    if not state:
        raise CheckpointError(f"{path}: state dict is empty")
    if isinstance(order, list) and sorted(order) == sorted(state):
        state = {k: state[k] for k in order}
    return state


def _torch_load(path: Path, mmap: bool):
    import torch

    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "zip" not in str(e).lower():  # only the legacy format cannot be mapped
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_LIST_LIMIT]
    more = f", ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}): " + ", ".join(shown) + more


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[torch.Size, torch.dtype]] | Mapping[str, torch.Size],
    source: str,
    *,
    ignore_missing: Iterable[str] = (),
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Raise one :class:`CheckpointError` listing every missing key, unexpected
    key and shape mismatch of ``state`` against ``expected``.

    ``expected`` maps keys to shapes, or to ``(shape, dtype)`` pairs. The
    ``ignore_*`` entries are keys or ``fnmatch`` patterns (``"audio.*"``).
    Dtypes only count when one side is floating point and the other is not:
    float16 vs float32 is converted on load and is not an error.
    """
    import torch

    ignore_missing, ignore_unexpected = tuple(ignore_missing), tuple(ignore_unexpected)
    missing = [k for k in expected if k not in state and not _matches(k, ignore_missing)]
    unexpected = [k for k in state if k not in expected and not _matches(k, ignore_unexpected)]

    mismatched = []
    for key, spec in expected.items():
        if key not in state:
            continue
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], torch.dtype):
            shape, dtype = spec
        else:
            shape, dtype = spec, None
        value = state[key]
        found_shape = tuple(getattr(value, "shape", ()))
        if found_shape != tuple(shape):
            mismatched.append(f"{key}: expected {list(shape)}, found {list(found_shape)}")
        elif dtype is not None and isinstance(value, torch.Tensor):
            if dtype.is_floating_point != value.dtype.is_floating_point:
                mismatched.append(f"{key}: expected dtype {dtype}, found {value.dtype}")

    if missing or unexpected or mismatched:
        parts = [f"{source}: state dict does not match the model"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(_listing("shape or dtype mismatches", mismatched))
        raise CheckpointError("\n".join(parts))


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save ``state`` as a plain dict of CPU tensors, atomically, and return the path."""
    import torch

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: cannot save entry {key!r} ({_describe(value)}): only str -> tensor is allowed"
            )
        tensor = value.detach().cpu().contiguous()
        # torch.save writes a view's whole storage; copy views so the file
        # holds only the tensor's own data
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        tensors[key] = tensor

    from ..io import atomic_path, atomic_write

    try:
        if is_safetensors(path):
            from safetensors.torch import save_file

            # every tensor has its own storage here (clone above), as safetensors requires
            tensors = {k: v.clone() if _shares_storage(v, tensors) else v for k, v in tensors.items()}
            with atomic_path(path) as tmp:
                # safetensors orders tensors its own way; the key order is kept in
                # the metadata so that a round trip gives back the same state dict
                metadata = {"format": "pt", _KEY_ORDER: json.dumps(list(tensors))}
                save_file(tensors, os.fspath(tmp), metadata=metadata)
        else:
            with atomic_write(path, "wb") as f:
                torch.save(tensors, f)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write file: {e.strerror or e}") from e
    return path


def _shares_storage(tensor: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> bool:
    ptr = tensor.untyped_storage().data_ptr()
    return tensor.numel() > 0 and sum(
        1 for t in tensors.values() if t.numel() > 0 and t.untyped_storage().data_ptr() == ptr
    ) > 1


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a safetensors file (by its suffix)."""
    return Path(path).suffix.lower() == ".safetensors"


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert a checkpoint between ``.pt`` and ``.safetensors`` (direction from the suffixes).

    Every tensor is kept bit for bit under its key and dtype, so a ``.pt``
    converted to safetensors and back still loads in the original code. As
    everywhere in :func:`load_state_dict`, a state dict wrapped under
    ``"state_dict"`` or ``"model"`` is unwrapped (the rest of such a training
    checkpoint is not converted) and a ``module.`` prefix shared by every key
    (DDP) is removed. A
    ``.safetensors`` file is read without unpickling anything; a ``.pt`` with
    ``weights_only=True``. Returns ``dst``.
    """
    src, dst = Path(src), Path(dst)
    kinds = {".pt", ".pth", ".bin", ".safetensors"}
    for path in (src, dst):
        if path.suffix.lower() not in kinds:
            raise CheckpointError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use .pt or .safetensors")
    if is_safetensors(src) == is_safetensors(dst):
        raise CheckpointError(f"{src} -> {dst}: nothing to convert (both are {'safetensors' if is_safetensors(src) else 'pickle'} files)")
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: the output is the input")
    return save_state_dict(load_state_dict(src), dst)



def save_model(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as a plain state dict with the original's keys (it loads there too); return the path."""
    return save_state_dict(model.state_dict(), path)
