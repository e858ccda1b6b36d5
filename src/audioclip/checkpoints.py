"""Pretrained weights: a registry of named checkpoints, a local cache, and
downloading, loading and saving of state dicts.

Errors are reported as :class:`CheckpointError` with a single message that
names the file or URL involved, so callers (and the CLI) can show it as is.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from .util import sha256_file
from .errors import AudioclipError

if TYPE_CHECKING:  # torch is imported lazily so that the CLI starts fast
    import torch

__all__ = [
    "CheckpointError",
    "PretrainedWeights",
    "REGISTRY",
    "cache_dir",
    "offline_mode",
    "cached_path",
    "download",
    "resolve",
    "load_state_dict",
    "check_state_dict",
    "save_state_dict",
    "checkpoint_id",
    "file_sha256",
    "convert_checkpoint",
    "is_safetensors",
    "lookup",
    "lookup_filename",
    "save_model",
]

CACHE_ENV = "AUDIOCLIP_CACHE"
_KEY_ORDER = "audioclip.key_order"  # safetensors metadata: the state dict's key order
OFFLINE_ENV = "AUDIOCLIP_OFFLINE"
BASE_URL_ENV = "AUDIOCLIP_BASE_URL"

_CHUNK = 1 << 20
_LIST_LIMIT = 10


class CheckpointError(AudioclipError):
    """A checkpoint could not be found, downloaded, verified, read or matched."""


@dataclass(frozen=True)
class PretrainedWeights:
    """A named checkpoint file that can be downloaded and verified."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int  # bytes
    kind: str  # "audioclip", "clip" or "esresnext"
    description: str
    architecture: str = "AudioCLIP-RN50"  # the bundled model config these weights belong to


_RELEASE_URL = "https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/"


def _release(name: str, filename: str, size: int, sha256: str, kind: str, description: str):
    architecture = "ESResNeXt-fbsp" if kind == "esresnext" else "AudioCLIP-RN50"
    return PretrainedWeights(name, filename, _RELEASE_URL + filename, sha256, size, kind, description, architecture)


REGISTRY: dict[str, PretrainedWeights] = {
    w.name: w
    for w in (
        _release(
            "full",
            "AudioCLIP-Full-Training.pt",
            537302068,
            "2441d35b353352c8b1bbfb8f7c687f46314c3d2909e940eaf763b8c17f632c44",
            "audioclip",
            "AudioCLIP with text, image and audio heads trained together on AudioSet",
        ),
        _release(
            "partial",
            "AudioCLIP-Partial-Training.pt",
            537302068,
            "1921885b6c3b5de0619f2ef4a9700ecbade758a398b34eb064230c30baef0c75",
            "audioclip",
            "AudioCLIP with the audio head trained under a frozen CLIP; "
            "audio embeddings are compatible with vanilla CLIP RN50",
        ),
        # The release URLs of the two entries below are assumed: the original
        # README only names the two AudioCLIP checkpoints above.
        _release(
            "clip",
            "CLIP.pt",
            408415159,
            "124e6d59d54c0837c456c953b3147adf438a21570d5c5b01ad83f6ad3e78d15e",
            "clip",
            "OpenAI CLIP RN50 text and image state dict (no audio weights)",
        ),
        _release(
            "esrnxfbsp",
            "ESRNXFBSP.pt",
            124795647,
            "acfcc6b0a0f07025cc660ed6dcf9b5a05fbd7c8ebf65edaa0a81d88a92ff6834",
            "esresnext",
            "standalone ESResNeXt-fbsp audio classifier trained on AudioSet (527 classes)",
        ),
    )
}


# --------------------------------------------------------------------------
# Cache and environment
# --------------------------------------------------------------------------


def _cache_folder(path: str | os.PathLike | None) -> Path:
    if path is None:
        path = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("audioclip")
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create cache folder {folder}: {e.strerror or e}") from e
    return folder


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Return the cache folder (argument, else ``$AUDIOCLIP_CACHE``, else the
    user cache folder), creating it if needed."""
    return _cache_folder(path)


def offline_mode(offline: bool | None = None) -> bool:
    """Return ``offline`` if given, else whether ``$AUDIOCLIP_OFFLINE`` is truthy."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


def _weights_url(weights: PretrainedWeights) -> str:
    base = os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{weights.filename}" if base else weights.url


def cached_path(
    weights: PretrainedWeights, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """Return the cached file of ``weights`` if present with the expected size.

    Only the size is compared: hashing half a gigabyte on every load is too
    slow, and the full sha256 check already happened when it was downloaded.
    """
    path = _cache_folder(cache_dir) / weights.filename
    if path.is_file() and (not weights.size or path.stat().st_size == weights.size):
        return path
    return None


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    """sha256 of a regular file's content (hex); a FIFO or device is a CheckpointError, never read."""
    from .io import FileReadError, check_regular_file

    try:
        check_regular_file(path, 1 << 44, what="checkpoint")
    except FileReadError as err:
        raise CheckpointError(str(err)) from None
    return sha256_file(path)


def _kept(part: Path) -> str:
    return f" (partial download kept in {part}; run again to resume)" if part.is_file() else ""


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Data goes to ``dest + ".part"`` first; an existing part file is resumed
    with an HTTP Range request. The file is checked against ``size`` and
    ``sha256`` (when given) before being renamed into place, so ``dest``
    never holds partial or unverified data.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)

    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()  # longer than the real file: cannot be a prefix of it
        offset = 0

    request = urllib.request.Request(url, headers={"User-Agent": "audioclip"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    expected_total = size
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            if expected_total is None and length and length.isdigit():
                expected_total = offset + int(length)
            with open(part, "ab" if offset else "wb") as f, tqdm(
                total=expected_total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=None if progress else True,  # None: only on a terminal
            ) as bar:
                # read1 returns what has arrived, so a timeout or reset loses
                # nothing that was already received
                read = getattr(response, "read1", response.read)
                while chunk := read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        # 416: nothing left to send, the part file is (probably) complete
        if not (e.code == 416 and offset):
            raise CheckpointError(f"cannot download {url}: HTTP {e.code} {e.reason}{_kept(part)}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"cannot download {url}: {reason}{_kept(part)}") from e

    got = part.stat().st_size if part.is_file() else 0
    if expected_total is not None and got < expected_total:
        # A dropped connection can end the body early without any exception
        raise CheckpointError(
            f"cannot download {url}: connection closed after {got} of {expected_total} bytes"
            f"{_kept(part)}"
        )
    if size is not None and got != size:
        part.unlink()
        raise CheckpointError(
            f"download of {url} has {got} bytes, expected {size} (the downloaded data was deleted)"
        )
    if sha256 is not None:
        actual = _sha256(part)
        if actual != sha256.lower():
            part.unlink()
            raise CheckpointError(
                f"download of {url} is corrupt: sha256 is {actual}, expected {sha256} "
                "(the downloaded data was deleted)"
            )
    from .io import commit_file

    commit_file(part, dest)  # fsynced, umask permissions, atomic rename
    return dest


# --------------------------------------------------------------------------
# Name resolution
# --------------------------------------------------------------------------


def lookup(name: str, registry: Mapping[str, PretrainedWeights] | None = None) -> PretrainedWeights | None:
    """The registered weights called ``name`` (case-insensitive), or ``None``."""
    registry = REGISTRY if registry is None else registry
    key = name.lower()
    return next((w for n, w in registry.items() if n.lower() == key), None)


def lookup_filename(name: str, registry: Mapping[str, PretrainedWeights] | None = None) -> PretrainedWeights | None:
    """The registered weights whose file is called ``name`` (a bare file name, not a path), or ``None``."""
    registry = REGISTRY if registry is None else registry
    key = Path(name).name.lower()
    if key != name.lower():  # only a bare filename is an alias, not a path
        return None
    return next((w for w in registry.values() if w.filename.lower() == key), None)


def resolve(
    name_or_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: bool = True,
    registry: Mapping[str, PretrainedWeights] | None = None,
    verify: bool = False,
) -> tuple[Path, PretrainedWeights | None]:
    """Turn a registry name or a file path into a local checkpoint file.

    A registry name (case-insensitive) gives its file in the cache folder,
    downloaded first if absent (unless offline). A registry file name such as
    ``"AudioCLIP-Full-Training.pt"`` is accepted as an alias when no such file
    exists. An existing path is returned as is, with ``None`` for the
    weights. ``verify=True`` hashes an already cached file instead of only
    comparing its size.
    """
    registry = REGISTRY if registry is None else registry
    text = os.fspath(name_or_path)
    weights = lookup(text, registry)
    if weights is None:
        path = Path(text).expanduser()
        if path.exists():
            return path, None
        weights = lookup_filename(text, registry)
    if weights is None:
        known = ", ".join(registry) or "(none)"
        raise CheckpointError(
            f"{text!r} is neither an existing file nor a known checkpoint name; known names: {known}"
        )

    folder = _cache_folder(cache_dir)
    target = folder / weights.filename
    cached = cached_path(weights, folder)
    if cached is not None and (not verify or _sha256(cached) == weights.sha256):
        return cached, weights

    url = _weights_url(weights)
    if offline_mode(offline):
        problem = "is not in" if not target.exists() else "is incomplete or corrupt in"
        allow = f"unset {OFFLINE_ENV}" if offline is None else "allow downloads (no --offline)"
        raise CheckpointError(
            f"checkpoint {weights.name!r} ({weights.filename}) {problem} the cache folder {folder} "
            f"and offline mode is on. Download it from {url} into that folder, set {CACHE_ENV} "
            f"to a folder that has it, or {allow}. {TRY_OFFLINE}"
        )
    # A wrong cached file is only replaced once the new download is verified
    try:
        download(url, target, sha256=weights.sha256, size=weights.size or None, progress=progress)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. {TRY_OFFLINE}") from err
    return target, weights


#: how to try the package where weights cannot be downloaded (said by the errors of a failed download)
TRY_OFFLINE = ("To try audioclip without downloading, name an architecture instead of weights "
               "(--checkpoint AudioCLIP-tiny, create_model(\"AudioCLIP-tiny\")): random weights, the same in every "
               "run, whose results mean nothing.")


# --------------------------------------------------------------------------
# Loading, checking and saving state dicts
# --------------------------------------------------------------------------


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

    from .io import atomic_path, atomic_write

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


def checkpoint_id(path: str | os.PathLike, weights: PretrainedWeights | None = None) -> str:
    """A short identity for the weights in ``path``, stored beside embeddings made with them.

    Registry files are named by their registry name and published hash;
    other files by their name and content hash, so renaming a copy does not
    fool the check but retraining does change the id.
    """
    if weights is not None:
        return f"{weights.name}@{weights.sha256[:16]}"
    return f"{Path(path).name}@{file_sha256(path)[:16]}"


_HASH_CACHE = "file-sha256.json"  # in the cache folder: {realpath: {"stat": [...], "sha256": hex}}
_HASH_CACHE_ENTRIES = 256
_RACY_SECONDS = 2.0  # a file changed this recently may change again within its timestamps' granularity


def file_sha256(path: str | os.PathLike, cache: bool = True) -> str:
    """The sha256 of a file's content (hex), remembered across processes while the file is unchanged.

    Hashing a full-size checkpoint reads about 0.5 GB; an index checks its
    checkpoint on every run. The hash is kept in the cache folder
    (``file-sha256.json``) under the file's resolved path with its
    ``(size, mtime_ns, ctime_ns, dev, inode)``: any write to the file changes
    its ctime (which no tool can set back), a replacement its inode, so a
    stale entry is never used. A file changed in the last two seconds is not
    remembered (its next change could keep the same timestamps). Without a
    usable cache folder the file is simply hashed.
    """
    path = Path(path)
    if not cache:
        return _sha256(path)
    try:
        real, st = os.path.realpath(path), os.stat(path)
    except OSError:
        return _sha256(path)  # raises the OSError a plain read would
    key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino]
    try:
        store = _cache_folder(None) / _HASH_CACHE
        from .io import read_text_bounded

        # bounded, regular files only (a FIFO planted in the cache must not hang every command)
        entries = json.loads(read_text_bounded(store, 1 << 22, what="hash cache")) if store.exists() else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError, CheckpointError):
        store, entries = None, {}
    entry = entries.get(real)
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _sha256(path)
    if store is not None and time.time() - st.st_ctime_ns / 1e9 > _RACY_SECONDS and os.stat(path).st_ctime_ns == key[2]:
        from .io import write_text_atomic

        entries.pop(real, None)
        entries[real] = {"stat": key, "sha256": digest}
        kept = dict(list(entries.items())[-_HASH_CACHE_ENTRIES:])  # the most recent ones
        try:
            write_text_atomic(store, json.dumps(kept), encoding="utf-8")
        except OSError:
            pass  # a read-only cache folder: hash again next time
    return digest


def save_model(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as a plain state dict with the original's keys (it loads there too); return the path."""
    return save_state_dict(model.state_dict(), path)
