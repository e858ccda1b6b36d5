"""The plain engine: :func:`audioclip.inference.embed_files` in this process, into an :class:`EmbeddingWriter`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from ..embeddings_io import EmbeddingWriter, run_settings
from ..inference import DecodeOptions, embed_files
from . import EmbedReport, list_inputs

__all__ = ["embed_plain"]


def embed_plain(
    model,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    fmt: str | None = None,
    options: DecodeOptions | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    audio_mode: str | None = None,
    files_per_part: int = 64,
    overwrite: bool = False,
    on_result: Callable[[str, str | None], None] | None = None,
    workers: int = 0,
) -> EmbedReport:
    """Embed the files of ``inputs`` into ``output`` here (see :func:`audioclip.engines.embed_to`)."""
    start = time.perf_counter()
    options = options or DecodeOptions(image_size=model.visual.image_size)
    paths, ignored = list_inputs(inputs)
    settings = run_settings(model, options, precision=precision, audio_mode=audio_mode, engine="plain")
    report = EmbedReport(output=os.fspath(output), engine="plain", ignored=ignored)
    with EmbeddingWriter(output, fmt=fmt, part_size=files_per_part, settings=settings,
                        overwrite=overwrite) as writer:
        todo = writer.todo(paths)
        report.skipped = len(paths) - len(todo)
        for result in embed_files(model, todo, batch_size=batch_size, workers=workers, precision=precision,
                                  options=options):
            if result.ok:
                writer.add(result)
                report.done += 1
            else:
                report.failed.append((result.path, result.error))
            if on_result is not None:
                on_result(result.path, result.error)
        report.rows = writer.finalize()
    report.failed.sort()
    report.seconds = time.perf_counter() - start
    return report
