"""The settings of a run, stored with its output: what they are, and their Parquet metadata form.

An output says how it was made: the checkpoint and its sha256, the architecture,
window, hop, sample rate, audio mode, package version, creation time and the
rest of :data:`SETTINGS`. A Parquet output holds them in the file's key-value
metadata (``audioclip.KEY`` -> the value as text); an ``.npy`` or ``.jsonl``
output in a sidecar ``OUT.meta.json`` (typed JSON).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..media.files import DecodeOptions
from ..checkpoints import CheckpointError
from ..util import package_version

SCHEMA_VERSION = 2
METADATA_PREFIX = "audioclip."

#: settings key -> type; stored as text (Parquet metadata ``audioclip.KEY``, sidecar JSON values as typed)
SETTINGS: dict[str, type] = {
    "schema_version": int,
    "checkpoint": str,
    "checkpoint_name": str,
    "checkpoint_sha256": str,
    "architecture": str,
    "embedding_dim": int,
    "window_s": float,
    "hop_s": float,
    "sample_rate": int,
    "mono": bool,
    "video_frames": str,
    "image_size": int,
    "audio_mode": str,
    "precision": str,
    "engine": str,
    "package_version": str,
    "created": str,
}
#: settings that change which rows a file gets or what its vectors are: a resumed output must agree on them
ROW_SETTINGS = ("checkpoint", "window_s", "hop_s", "sample_rate", "mono", "video_frames", "image_size")

def _file_sha256(path: str) -> str | None:
    """The checkpoint file's sha256 through the checkpoints' hash cache (hashed once while unchanged)."""
    from ..checkpoints import file_sha256

    try:
        return file_sha256(path)
    except (OSError, CheckpointError):
        return None


def run_settings(
    model,
    options: DecodeOptions | None = None,
    *,
    precision: str = "fp32",
    audio_mode: str | None = None,
    engine: str = "plain",
) -> dict[str, Any]:
    """The settings recorded with an output made by ``model`` (built by :func:`audioclip.create_model`).

    ``audio_mode`` defaults to the one the model was built with.
    """
    from ..factory import checkpoint_id

    info = getattr(model, "pretrained_cfg", None) or {}
    options = options or DecodeOptions(image_size=model.visual.image_size)
    if info.get("weights"):
        name, sha = info["weights"], info.get("sha256")
    elif info.get("file"):
        name, sha = Path(info["file"]).name, _file_sha256(info["file"])
    else:
        name, sha = info.get("architecture"), None  # random weights: the checkpoint id says which
    settings = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": checkpoint_id(model),
        "checkpoint_name": name,
        "checkpoint_sha256": sha,
        "architecture": info.get("architecture"),
        "embedding_dim": getattr(model, "embed_dim", None),
        "window_s": float(options.window),
        "hop_s": float(options.hop if options.hop is not None else options.window),
        "sample_rate": int(options.sample_rate),
        "mono": bool(options.mono),
        "video_frames": options.video_frames,
        "image_size": int(options.image_size),
        "audio_mode": audio_mode if audio_mode is not None else info.get("audio_mode"),
        "precision": precision,
        "engine": engine,
        "package_version": package_version(),
        "created": _now(),
    }
    return {k: v for k, v in settings.items() if v is not None}


def earliest(a: str | None, b: str | None) -> str | None:
    """The earlier of two ``created`` times (ISO 8601 in UTC, to the second, so their text orders them)."""
    return min((t for t in (a, b) if t), default=None)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def settings_metadata(settings: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Parquet key-value metadata: ``audioclip.KEY`` -> the value as text (booleans ``true``/``false``)."""
    out = {}
    for key, value in settings.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out[(METADATA_PREFIX + key).encode()] = text.encode()
    return out


def settings_from_metadata(metadata: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """The settings in Parquet key-value metadata, typed (unknown keys stay text)."""
    settings: dict[str, Any] = {}
    for raw_key, raw_value in (metadata or {}).items():
        key = raw_key.decode("utf-8", "replace")
        if not key.startswith(METADATA_PREFIX):
            continue
        key, text = key[len(METADATA_PREFIX):], raw_value.decode("utf-8", "replace")
        settings[key] = typed(key, text)
    return settings


def typed(key: str, value: Any) -> Any:
    """A setting's value as its :data:`SETTINGS` type (as it is when unknown, or when it does not convert)."""
    kind = SETTINGS.get(key)
    if kind is None or value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            return str(value).lower() in ("true", "1")
        return kind(value)
    except (TypeError, ValueError):
        return value
