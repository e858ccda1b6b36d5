"""Engines that run an ``embed`` job from inputs to an output: here (``plain``) or on Ray Data (``ray``).

:func:`embed_to` is the Python form of ``audioclip embed``: it lists the
inputs, skips the files the output already holds, embeds the rest and writes
the output (:mod:`audioclip.embeddings_io`), returning an :class:`EmbedReport`.
Both engines give the same rows and vectors (to float32 rounding) and report
bad files the same way.

- ``plain`` (:mod:`audioclip.engines.plain`): :func:`audioclip.inference.embed_files`
  in this process, decoding in DataLoader workers. Needs nothing more.
- ``ray`` (:mod:`audioclip.engines.ray_engine`): a Ray Data pipeline (decode
  in CPU tasks, embed in an actor pool that holds the model once per actor,
  Parquet parts written by the actors as they go), on a local Ray instance or
  a cluster. Needs the ``ray`` extra: ``pip install "audioclip[ray]"``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..util import is_uri

__all__ = ["ENGINES", "RAY_INSTALL", "EmbedReport", "embed_to", "list_inputs", "ray_available"]

ENGINES = ("plain", "ray")
RAY_INSTALL = 'pip install "audioclip[ray]"'


def ray_available() -> bool:
    """Whether Ray Data can be imported (the ``ray`` extra is installed); imports nothing."""
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None


@dataclass
class EmbedReport:
    """What an embed job did."""

    output: str
    engine: str
    done: int = 0  # files embedded by this run
    skipped: int = 0  # files the output already held
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), sorted by path
    ignored: list[str] = field(default_factory=list)  # non-media files found in folders
    rows: int = 0  # rows in the output afterwards
    seconds: float = 0.0


def list_inputs(inputs: Iterable[str | os.PathLike], *, resolve: bool = True) -> tuple[list[str], list[str]]:
    """Files to embed, and the non-media files ignored: :func:`audioclip.inference.expand_paths`.

    Local files are named by their resolved absolute paths (a file named two
    ways, or through a link, is one file: one set of rows in the output);
    ``resolve=False`` names them as found under the inputs.

    Inputs may also be object-store URIs (``s3://bucket/sounds/``, any
    :mod:`pyarrow.fs` scheme): a folder is listed recursively there too. Only
    the ``ray`` engine reads such files (each decode task fetches its file).
    """
    from ..inference import MEDIA_EXTENSIONS, expand_paths

    local, remote = [], []
    for item in inputs:
        text = os.fspath(item)
        (remote if is_uri(text) and not text.startswith("file://") else local).append(
            text[len("file://"):] if text.startswith("file://") else text)
    files, ignored = expand_paths(local, resolve=resolve)
    if remote:
        from pyarrow import fs as pafs

        for uri in remote:
            filesystem, root = pafs.FileSystem.from_uri(uri)
            scheme = uri.split("://", 1)[0]
            info = filesystem.get_file_info(root)
            if info.type == pafs.FileType.Directory:
                found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
                for entry in sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path):
                    target = files if os.path.splitext(entry.path)[1].lower() in MEDIA_EXTENSIONS else ignored
                    target.append(f"{scheme}://{entry.path}")
            else:
                files.append(uri)
        files = list(dict.fromkeys(files))
    return files, ignored


def embed_to(
    model,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    engine: str = "plain",
    fmt: str | None = None,
    options=None,
    batch_size: int = 16,
    precision: str = "fp32",
    audio_mode: str | None = None,
    files_per_part: int = 64,
    overwrite: bool = False,
    on_result: Callable[[str, str | None], None] | None = None,
    **engine_options,
) -> EmbedReport:
    """Embed ``inputs`` (files, folders, URIs for ``ray``) into ``output`` with ``engine``; resumable.

    ``model`` comes from :func:`audioclip.create_model`. ``options``:
    :class:`audioclip.inference.DecodeOptions`. ``on_result(path, error)`` is
    called for every file as it finishes (``error`` is None when it was
    embedded). ``engine_options`` go to the engine: ``workers`` for
    ``plain``; ``address``, ``num_gpus``, ``concurrency``, ``device`` and
    the others of :func:`audioclip.engines.ray_engine.embed_with_ray` for ``ray``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    common = dict(fmt=fmt, options=options, batch_size=batch_size, precision=precision, audio_mode=audio_mode,
                  files_per_part=files_per_part, overwrite=overwrite, on_result=on_result)
    if engine == "plain":
        from .plain import embed_plain

        return embed_plain(model, inputs, output, **common, **engine_options)
    if not ray_available():
        raise ImportError(f"the ray engine needs Ray Data: {RAY_INSTALL}")
    from .ray_engine import embed_with_ray

    return embed_with_ray(model, inputs, output, **common, **engine_options)
