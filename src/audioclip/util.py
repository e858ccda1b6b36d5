"""Small helpers every layer uses: file hashing, the package version, lazy exports, URI names.

Each job has exactly one implementation here, so that (for example) a checkpoint,
an ONNX graph and an embed output are hashed the same way.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

_BLOCK = 1 << 20  # 1 MiB reads: hashing a 0.5 GB checkpoint stays flat in memory


def sha256_file(path: str | os.PathLike, digest: Any | None = None) -> str:
    """The sha256 of a file's content as 64 hex digits, read in 1 MiB blocks.

    Callers check what the file is (regular file, size bound) before calling:
    this only reads. Pass ``digest`` (a ``hashlib.sha256()``) to continue a
    running hash over several files; its hex digest after this file is returned.
    """
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as f:
        while chunk := f.read(_BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def package_version() -> str:
    """The installed version of ``audioclip``, or ``"unknown"`` when run from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audioclip")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def is_uri(name: str) -> bool:
    """Whether ``name`` is a URI (``s3://...``, ``gs://...``, ``file://...``) rather than a local path."""
    return "://" in name


def lazy_exports(package: str, exports: Mapping[str, str],
                 extra: Iterable[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose public names are imported on first use.

    ``exports`` maps a public name to the module defining it, absolute
    (``"audioclip.factory"``) or relative to ``package`` (``"audio"``). A light
    entry point (``audioclip --help``) then never pays for torch.

        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    """
    import sys

    def __getattr__(name: str) -> Any:
        if name in exports:
            target = exports[name]
            module = importlib.import_module(target if target.startswith("audioclip") else f"{package}.{target}")
            value = getattr(module, name)
            setattr(sys.modules[package], name, value)  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports) | set(extra))

    return __getattr__, __dir__
