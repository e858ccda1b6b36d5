"""The plain engine: :func:`audioclip.inference.embed_files` in this process, into an :class:`EmbeddingWriter`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..embeddings_io import EmbeddingWriter
from ..inference import DecodeOptions, embed_files
from . import EmbedJob, EmbedReport

__all__ = ["PlainOptions", "run"]


@dataclass(frozen=True)
class PlainOptions:
    """The plain engine's own options (``embed_to(..., engine="plain", workers=2)``)."""

    workers: int = 0  # DataLoader workers decoding the files (0: decode in this process)


def run(job: EmbedJob) -> EmbedReport:
    """Embed the files of ``job`` here (see :func:`audioclip.engines.embed_to`)."""
    plain = PlainOptions(**job.engine_options)  # an option of another engine: a TypeError naming it

    def embed(todo: list[str], writer: EmbeddingWriter, settings: dict,
              options: DecodeOptions) -> Iterator[tuple[str, str | None]]:
        for result in embed_files(job.model, todo, batch_size=job.batch_size, workers=plain.workers,
                                  precision=job.precision, options=options):
            if result.ok:
                writer.add(result)
            yield result.path, result.error

    return job.execute("plain", embed)
