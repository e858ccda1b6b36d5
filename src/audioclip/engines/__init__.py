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

import contextlib
import importlib.util
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..util import is_uri

if TYPE_CHECKING:  # for the annotations only: listing the engines and checking a job's options need no torch
    from ..embeddings_io import EmbeddingWriter
    from ..media.files import DecodeOptions

__all__ = ["ENGINES", "RAY_INSTALL", "EmbedJob", "EmbedReport", "embed_to", "list_inputs", "ray_available"]

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


#: an engine's work on the files left to do: ``embed(todo, writer, settings, options)`` yields
#: ``(path, error)`` for each file as it finishes (``error`` None when it was embedded), with its rows
#: added to ``writer`` or written as parts of ``writer.parts`` before it is yielded
EmbedFiles = Callable[[list[str], "EmbeddingWriter", dict, "DecodeOptions"], Iterator[tuple[str, "str | None"]]]


@dataclass(frozen=True)
class EmbedJob:
    """One embed job, as :func:`embed_to` was asked for it: what every engine's ``run(job)`` takes.

    ``options`` (:class:`audioclip.inference.DecodeOptions`) default to the
    model's image size; ``engine_options`` are the engine's own (``workers``
    for ``plain``; ``address``, ``num_gpus``, ... for ``ray``), checked by it.
    """

    model: Any
    inputs: Sequence[str | os.PathLike]
    output: str | os.PathLike
    fmt: str | None = None
    options: DecodeOptions | None = None
    batch_size: int = 16
    precision: str = "fp32"
    audio_mode: str | None = None
    files_per_part: int = 64
    overwrite: bool = False
    on_result: Callable[[str, str | None], None] | None = None
    engine_options: Mapping[str, Any] = field(default_factory=dict)

    def execute(self, engine: str, embed: EmbedFiles) -> EmbedReport:
        """The steps every engine shares, around its ``embed`` (:data:`EmbedFiles`).

        Lists the inputs, opens the output (locked; an earlier one removed
        with ``overwrite``), skips the files it already holds, lets ``embed``
        do the rest, calls ``on_result`` per file, and merges the output.
        """
        from .. import embeddings_io
        from ..media.files import DecodeOptions

        start = time.perf_counter()
        options = self.options or DecodeOptions(image_size=self.model.visual.image_size)
        paths, ignored = list_inputs(self.inputs)
        settings = embeddings_io.run_settings(self.model, options, precision=self.precision,
                                              audio_mode=self.audio_mode, engine=engine)
        report = EmbedReport(output=os.fspath(self.output), engine=engine, ignored=ignored)
        with embeddings_io.EmbeddingWriter(self.output, fmt=self.fmt, part_size=self.files_per_part,
                                           settings=settings, overwrite=self.overwrite) as writer:
            todo = writer.todo(paths)
            report.skipped = len(paths) - len(todo)
            # closing: a callback that raises stops the engine at once (Ray shut down, the parts kept)
            with contextlib.closing(embed(todo, writer, settings, options)) as finished:
                for path, error in finished:
                    if error is None:
                        report.done += 1
                    else:
                        report.failed.append((path, error))
                    if self.on_result is not None:
                        self.on_result(path, error)
            report.rows = writer.finalize()
        report.failed.sort()
        report.seconds = time.perf_counter() - start
        return report


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
    embedded). ``engine_options`` go to the engine, which refuses any other:
    ``workers`` for ``plain`` (:class:`audioclip.engines.plain.PlainOptions`);
    ``address``, ``num_gpus``, ``concurrency``, ``device`` and the others of
    :class:`audioclip.engines.ray_engine.RayOptions` for ``ray``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    job = EmbedJob(model, inputs, output, fmt=fmt, options=options, batch_size=batch_size, precision=precision,
                   audio_mode=audio_mode, files_per_part=files_per_part, overwrite=overwrite, on_result=on_result,
                   engine_options=engine_options)
    if engine == "plain":
        from .plain import run
    elif not ray_available():
        raise ImportError(f"the ray engine needs Ray Data: {RAY_INSTALL}")
    else:
        from .ray_engine import run
    return run(job)
