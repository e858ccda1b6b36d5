"""The checks an ``audioclip`` command makes before it loads a model; they raise :class:`~.report.UsageError`.

- Made before torch is imported (except for a CUDA device):
  :func:`check_checkpoint`, :func:`check_device`, :func:`check_inputs`,
  :func:`check_templates`, :func:`read_list_file`, :func:`check_list_file`,
  :func:`check_output_file`, :func:`check_output_dir`; :func:`check_cached`
  (registered weights neither cached nor downloadable: exit 1, not 2).
- :func:`prefetch_checkpoint`: a local checkpoint is read into the page cache
  while torch is imported.
- :func:`require_extra`: a command whose optional dependencies are missing
  stops with the ``pip install "audioclip[...]"`` line to run.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from audioclip.io import FileReadError, read_text_bounded

from .report import UsageError

__all__ = [
    "EXTRAS",
    "check_cached",
    "check_checkpoint",
    "check_device",
    "check_inputs",
    "check_list_file",
    "check_output_dir",
    "check_output_file",
    "check_templates",
    "prefetch_checkpoint",
    "read_list_file",
    "read_templates",
    "require_extra",
]


#: extra -> the modules it provides that its commands cannot run without
EXTRAS: dict[str, tuple[str, ...]] = {
    "index": ("lancedb", "faiss"),
    "milvus": ("pymilvus",),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "train": ("yaml", "webdataset", "torchmetrics"),
    "eval": ("torchmetrics", "matplotlib"),
    "ray": ("ray",),
}


# -- checks made before anything heavy ------------------------------------------------------------------


def check_checkpoint(name: str | os.PathLike, *, option: str = "--checkpoint") -> str:
    """What ``name`` is for :func:`audioclip.factory.create_model`: ``"architecture"``, ``"registry"``,
    ``"file"``, ``"folder"`` (a Hub-style model folder) or ``"hub"`` (``hf-hub:ORG/NAME``).

    :func:`audioclip.factory.describe_source`'s answer (told without importing
    torch or downloading); a usage error if ``name`` is none of them.
    """
    from audioclip.checkpoints import CheckpointError
    from audioclip.factory import describe_source

    if not os.fspath(name).strip():
        raise UsageError(f"{option}: an empty name was given (a checkpoint name, file or folder)")
    try:
        return describe_source(name).kind
    except CheckpointError as err:
        raise UsageError(f"{option} {os.fspath(name)}: {_without_name(str(err), os.fspath(name))}") from None


def _without_name(message: str, name: str) -> str:
    for prefix in (f"{name!r} is ", f"{name}: "):
        if message.startswith(prefix):
            return message[len(prefix):] if prefix.endswith(": ") else "is " + message[len(prefix):]
    return message


def check_cached(name: str | os.PathLike, *, cache_dir=None, offline=None) -> None:
    """Registered weights that are neither cached nor downloadable (offline): the load's error, now (exit 1).

    Called after the usage checks: a missing download is not a usage error,
    but it is known before torch is imported.
    """
    from audioclip import checkpoints

    text = os.fspath(name)
    if not checkpoints.offline_mode(offline) or Path(text).expanduser().exists():
        return
    weights = checkpoints.lookup(text) or checkpoints.lookup_filename(text)
    if weights is not None and checkpoints.cached_path(weights, cache_dir) is None:
        checkpoints.resolve(text, cache_dir=cache_dir, offline=offline)  # offline: raises CheckpointError


def prefetch_checkpoint(name: str | os.PathLike, cache_dir=None) -> None:
    """Ask the kernel to start reading a local checkpoint file into the page cache, in the background.

    The file is then read while torch is being imported instead of after it
    (a cold 0.5 GB checkpoint costs seconds of disk reads otherwise). Costs
    nothing when the file is cached already, and is skipped where the
    platform has no ``posix_fadvise``.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    from audioclip import checkpoints

    text = os.fspath(name)
    path = Path(text).expanduser()
    if not path.is_file():
        weights = checkpoints.lookup(text) or checkpoints.lookup_filename(text)
        path = checkpoints.cached_path(weights, cache_dir) if weights is not None else None
    if path is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_device(name: str | None, option: str = "--device") -> None:
    """A CUDA device must exist (this imports torch, but loads no model); auto and cpu always do."""
    if name in (None, "auto", "cpu"):
        return
    from audioclip.factory import resolve_device

    try:
        resolve_device(name)
    except ValueError as err:
        raise UsageError(f"{option} {name}: {err}") from None


def check_inputs(paths: Iterable[str | os.PathLike], what: str = "input") -> None:
    """Every path exists (a file or a folder); an empty name is refused (``Path("")`` would be the current folder)."""
    paths = [os.fspath(p) for p in paths]
    if any(not p.strip() for p in paths):
        raise UsageError(f"{what}: an empty path was given")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"{what} not found: {missing[0]}{more}")


#: the most a list file (labels, templates, class names) may hold: 1 MB is tens of thousands of lines
MAX_LIST_BYTES = 1_000_000


def read_list_file(path: str | os.PathLike, what: str = "entries", *, max_bytes: int = MAX_LIST_BYTES) -> list[str]:
    """The non-empty lines of a UTF-8 text file, without ``#`` comments; a usage error if none or unreadable.

    Read with :func:`audioclip.io.read_text_bounded`: a regular file of at most
    ``max_bytes``; ``/dev/zero``, a FIFO or a folder is refused at once, in one
    line naming the file.
    """
    try:
        text = read_text_bounded(path, max_bytes, what=f"{what} file" if what != "entries" else "list file")
    except FileReadError as err:
        raise UsageError(str(err)) from None
    items = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not items:
        raise UsageError(f"{path}: no {what} (one per line expected)")
    return items


def check_list_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_LIST_BYTES) -> None:
    """A usage error unless ``path`` is a regular UTF-8 text file of at most ``max_bytes`` (read by a command later)."""
    try:
        read_text_bounded(path, max_bytes, what=what)
    except FileReadError as err:
        raise UsageError(str(err)) from None


def check_templates(templates: Sequence[str], source: str | None = None) -> list[str]:
    """Each template has exactly one bare ``{}`` (:func:`audioclip.prompts.check_template`)."""
    from audioclip.prompts import check_template

    for i, template in enumerate(templates):
        try:
            check_template(template)
        except ValueError as err:
            where = f"{source}, line {i + 1}: " if source else ""
            raise UsageError(f"{where}{err}") from None
    return list(templates)


def read_templates(path: str | os.PathLike) -> list[str]:
    """The prompt templates of a ``--templates-file``, one a line, each checked (:func:`check_templates`)."""
    return check_templates(read_list_file(path, "templates"), source=os.fspath(path))


def check_output_file(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    suffixes: Sequence[str] | None = None,
    resumable: bool = False,
) -> Path:
    """An output file: not a folder, an allowed suffix, and not an existing file unless allowed.

    ``resumable``: an existing output is continued (the command checks it is
    its own); ``overwrite`` lets the command start it over.
    """
    if not os.fspath(path).strip():
        raise UsageError("-o: an empty file name was given")
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"-o {path}: is a folder; give a file name"
                         + (f" ending in {', '.join(suffixes)}" if suffixes else ""))
    if suffixes is not None and out.suffix.lower() not in suffixes:
        got = f"'{out.suffix}'" if out.suffix else "no suffix"
        raise UsageError(f"-o {path}: {got}; the output is one of {', '.join(suffixes)} (or give --format)")
    if out.exists() and not (overwrite or resumable):
        raise UsageError(f"-o {path}: exists; --overwrite replaces it")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"-o {path}: {parent} is not a folder")
    return out


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, markers: Sequence[str] = (),
                     hint: str = "--overwrite replaces it") -> Path:
    """An output folder: not a file; refused when it holds one of ``markers`` (a finished output) unless ``overwrite``."""
    if not os.fspath(path).strip():
        raise UsageError("-o: an empty folder name was given")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {path}: exists and is not a folder")
    if not overwrite and out.is_dir():
        found = [m for m in markers if any(out.glob(m))]
        if found:
            raise UsageError(f"-o {path}: holds an earlier output ({found[0]}); {hint}")
    return out


# -- optional dependencies ------------------------------------------------------------------------------


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(extra: str, modules: Sequence[str] | None = None) -> None:
    """A usage error naming ``pip install "audioclip[extra]"`` unless the extra's modules are installed."""
    needed = EXTRAS[extra] if modules is None else modules
    missing = [m for m in needed if not _importable(m)]
    if missing:
        raise UsageError(f"this command needs the optional dependencies of audioclip[{extra}] "
                         f"({', '.join(missing)} missing): pip install \"audioclip[{extra}]\"")
