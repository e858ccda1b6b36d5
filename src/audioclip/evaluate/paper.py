"""The paper's published figures, where they could be verified, with their source.

Only four numbers of the AudioCLIP paper (Guzhov et al., arXiv:2106.13043;
ICASSP 2022) could be checked from this project's build environment: those
stated in its abstract (identical in the arXiv version and in the ICASSP
abstract, and repeated in the authors' README). Every other cell of the
paper's result tables (the partial-training rows, ImageNet and AudioSet
zero-shot, the querying scores) is ``None`` here, shown as "see paper": the
full text was not reachable, and no number is filled in from memory.

The abstract does not say which checkpoint (full or partial training) its
zero-shot figures belong to; a third-party leaderboard (Papers with Code)
lists the ESC-50 figure under "partial training", which could not be checked
against the paper itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaperValue", "paper_value"]

ABSTRACT = "paper abstract (arXiv:2106.13043 v1; ICASSP 2022)"


@dataclass(frozen=True)
class PaperValue:
    value: float | None  # a fraction (0.694 for 69.40 %)
    source: str

    def text(self, percent: bool = True) -> str:
        if self.value is None:
            return "see paper"
        return f"{100 * self.value:.2f}" if percent else f"{self.value:.4f}"


_VERIFIED = {
    ("zeroshot", "esc50", "audio", "accuracy"): PaperValue(
        0.6940, f"{ABSTRACT}; which checkpoint row (full or partial training) is not stated there"),
    ("zeroshot", "us8k", "audio", "accuracy"): PaperValue(
        0.6878, f"{ABSTRACT}; which checkpoint row (full or partial training) is not stated there"),
    ("supervised", "esc50", "audio", "accuracy"): PaperValue(0.9715, f"{ABSTRACT}; fine-tuned, 5-fold mean"),
    ("supervised", "us8k", "audio", "accuracy"): PaperValue(0.9007, f"{ABSTRACT}; fine-tuned, 10-fold mean"),
}

_UNVERIFIED = PaperValue(None, "not verified here (paper's full text unavailable offline); see the paper's tables")


def paper_value(task: str, dataset: str, modality: str, metric: str) -> PaperValue:
    """The paper's figure for a cell, or a ``PaperValue`` with ``value=None`` ("see paper")."""
    return _VERIFIED.get((task, dataset, modality, metric), _UNVERIFIED)
