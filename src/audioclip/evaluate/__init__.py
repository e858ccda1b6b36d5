"""The paper's evaluation (section 5): zero-shot, fine-tuned (supervised) and querying.

- :func:`load_eval_set`: ESC-50, UrbanSound8K, AudioSet, ImageNet (validation
  folder layout) or a custom folder, as items with audio and/or picture.
- :func:`conventions_for`: how each dataset's audio is prepared; by default as
  the original code did, since the published checkpoints saw that.
- :func:`load_encoder`, :func:`embed_items`, :class:`EmbeddingStore`: embeddings
  computed once per (checkpoint, dataset, modality) and cached on disk.
- :func:`run_zeroshot`, :func:`run_supervised`, :func:`run_querying` -> :class:`Report`;
  :func:`format_report` / :func:`write_outputs`: table, JSON, CSV, plots.
- :mod:`audioclip.metrics`: the metrics and their exact definitions (shared with training).
- ``audioclip evaluate`` (:mod:`audioclip.cli.evaluate`) runs them from the command line.

See docs/reproduction.md for the commands that regenerate the paper's tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audioclip.util import lazy_exports

# Public name -> defining submodule, imported on first use: `audioclip --help` registers the
# `evaluate` command without importing torch.
_EXPORTS = {
    **dict.fromkeys(("AudioConventions", "conventions_for"), "conventions"),
    **dict.fromkeys(("EvalItem", "EvalSet", "load_eval_set", "read_imagenet"), "datasets"),
    **dict.fromkeys(("EmbeddingStore", "ItemEmbeddings", "Encoder", "embed_items", "load_encoder"), "embed"),
    **dict.fromkeys(("format_report", "write_outputs"), "report"),
    **dict.fromkeys(("Report", "RunOptions", "run_querying", "run_supervised", "run_zeroshot"), "protocols"),
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .conventions import AudioConventions, conventions_for
    from .datasets import EvalItem, EvalSet, load_eval_set, read_imagenet
    from .embed import EmbeddingStore, Encoder, ItemEmbeddings, embed_items, load_encoder
    from .protocols import Report, RunOptions, run_querying, run_supervised, run_zeroshot
    from .report import format_report, write_outputs


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
