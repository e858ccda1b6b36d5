"""``audioclip fit``: a classifier of your own labels on frozen AudioCLIP embeddings.

- :mod:`.data`: the labelled clips (class folders, or a CSV/Parquet table) and their checks;
- :mod:`.folds`: folds that never split a recording, shots drawn per class;
- :mod:`.solver`: scikit-learn's logistic regression, the mixture with zero-shot, the threshold, the evaluation;
- :mod:`.run`: :func:`fit`, from data to a head folder (:mod:`audioclip.heads`).

Embeddings come from :func:`audioclip.engines.embed_to` (the ``embed`` command's
path and output), so this package sits above the engines.
"""

from __future__ import annotations

from ..util import lazy_exports

# imported on first use: reading and checking the data (.data) needs neither torch nor numpy
_EXPORTS = {"BACKGROUND_NAMES": "data", "DataError": "data", "LabelledData": "data", "read_data": "data",
            "parse_shots": "data", "FitReport": "run", "fit": "run", "format_summary": "run"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
