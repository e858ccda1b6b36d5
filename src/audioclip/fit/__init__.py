"""``audioclip fit``: a classifier of your own labels on frozen AudioCLIP embeddings.

- :mod:`.data`: the labelled clips (class folders, or a CSV/Parquet table) and their checks;
- :mod:`.folds`: folds that never split a recording, shots drawn per class;
- :mod:`.solver`: scikit-learn's logistic regression, the mixture with zero-shot, the threshold, the evaluation;
- :mod:`.run`: :func:`fit`, from data to a head folder (:mod:`audioclip.heads`).

Embeddings come from :func:`audioclip.engines.embed_to` (the ``embed`` command's
path and output), so this package sits above the engines.
"""

from __future__ import annotations

from .data import BACKGROUND_NAMES, DataError, LabelledData, read_data
from .run import FitReport, fit, format_summary, parse_shots

__all__ = ["BACKGROUND_NAMES", "DataError", "FitReport", "LabelledData", "fit", "format_summary", "parse_shots",
           "read_data"]
