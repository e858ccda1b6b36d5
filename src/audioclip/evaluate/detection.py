"""Detection on strongly labelled recordings: event-based and segment-based metrics with sed_eval.

A folder of recordings with annotation files (``evaluate --task detection --root DIR``):

- annotations are text files with one event per line, ``onset offset label`` separated by
  tabs or spaces (the URBAN-SED and DCASE layout; a label may hold spaces when tabs
  separate), or CSV files with a header naming ``onset``, ``offset`` and ``label`` (or
  ``event_label``) columns;
- a recording's annotation is the file with its stem and a ``.txt``, ``.tsv``, ``.ann`` or
  ``.csv`` suffix beside it, or at the same place under an ``annotations`` folder where the
  recording is under an ``audio`` folder (URBAN-SED: ``audio/test/x.wav`` and
  ``annotations/test/x.txt``).

Scores are sed_eval's (Mesaros et al., 2016, the DCASE challenges' reference): event-based
F1 and error rate with a 200 ms onset collar (offsets within 200 ms or 20 % of the event's
length), and segment-based F1 and error rate over 1 s segments, micro-averaged over the
labels (``overall``), plus class-wise F1.
"""

from __future__ import annotations

import csv
import io as _io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..io import read_text_bounded
from ..media.files import expand_paths

__all__ = ["ANNOTATION_SUFFIXES", "read_annotations", "find_annotated", "score_events", "format_metrics"]

ANNOTATION_SUFFIXES = (".txt", ".tsv", ".ann", ".csv")
MAX_ANNOTATION_BYTES = 16 << 20
COLLAR_S = 0.2
SEGMENT_S = 1.0


def read_annotations(path: str | os.PathLike) -> list[dict]:
    """The events of one annotation file: ``[{"onset", "offset", "label"}]``; a ValueError naming the line if bad."""
    path = Path(path)
    text = read_text_bounded(path, MAX_ANNOTATION_BYTES, what="annotation file")
    events = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(_io.StringIO(text))
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        label_field = fields.get("label") or fields.get("event_label")
        if not ("onset" in fields and "offset" in fields and label_field):
            raise ValueError(f"{path}: a CSV annotation needs onset, offset and label columns")
        rows = ((i + 2, r[fields["onset"]], r[fields["offset"]], r[label_field]) for i, r in enumerate(reader))
    else:
        def split(line: str):
            parts = line.split("\t") if "\t" in line else line.split(None, 2)
            return [p.strip() for p in parts]

        rows = ((i + 1, *split(line)) for i, line in enumerate(text.splitlines()) if line.strip()
                and not line.lstrip().startswith("#"))
    for row in rows:
        if len(row) != 4:
            raise ValueError(f"{path}, line {row[0]}: expected 'onset offset label'")
        line, onset, offset, label = row
        try:
            onset, offset = float(onset), float(offset)
        except ValueError:
            raise ValueError(f"{path}, line {line}: onset and offset must be seconds") from None
        if not 0 <= onset <= offset or not label:
            raise ValueError(f"{path}, line {line}: needs 0 <= onset <= offset and a label")
        events.append({"onset": onset, "offset": offset, "label": label})
    return events


def _annotation_for(recording: Path, root: Path) -> Path | None:
    candidates = [recording.with_suffix(s) for s in ANNOTATION_SUFFIXES]
    rel = recording.relative_to(root)
    if "audio" in rel.parts:
        i = rel.parts.index("audio")
        mirrored = root.joinpath(*rel.parts[:i], "annotations", *rel.parts[i + 1:])
        candidates += [mirrored.with_suffix(s) for s in ANNOTATION_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def find_annotated(root: str | os.PathLike) -> list[tuple[str, list[dict]]]:
    """``[(recording, events)]`` for every recording under ``root`` that has an annotation file (sorted)."""
    root = Path(root)
    files, _ = expand_paths([root])
    found = []
    for name in files:
        recording = Path(name)
        if recording.suffix.lower() in ANNOTATION_SUFFIXES:
            continue
        annotation = _annotation_for(recording, root)
        if annotation is not None:
            found.append((str(recording), read_annotations(annotation)))
    return found


def score_events(reference: Mapping[str, Sequence[Mapping]], estimated: Mapping[str, Sequence[Mapping]],
                 labels: Sequence[str], *, collar_s: float = COLLAR_S, segment_s: float = SEGMENT_S) -> dict:
    """sed_eval's event-based and segment-based metrics over recordings (``path -> events``).

    Events are ``{"onset", "offset", "label"}`` (or ``start_s``/``end_s``). Returns
    ``{"event": {"f1", "precision", "recall", "error_rate"}, "segment": {...}, "class_f1": {label: event F1}}``.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dcase_util's imports warn about deprecated modules
        import dcase_util
        import sed_eval

    event_metrics = sed_eval.sound_event.EventBasedMetrics(event_label_list=list(labels), t_collar=collar_s,
                                                           percentage_of_length=0.2)
    segment_metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=list(labels),
                                                               time_resolution=segment_s)

    def container(path, events):
        return dcase_util.containers.MetaDataContainer([
            {"filename": path, "event_label": e["label"], "onset": float(e.get("onset", e.get("start_s"))),
             "offset": float(e.get("offset", e.get("end_s")))} for e in events])

    for path, ref in reference.items():
        ref_c, est_c = container(path, ref), container(path, estimated.get(path, []))
        event_metrics.evaluate(reference_event_list=ref_c, estimated_event_list=est_c)
        segment_metrics.evaluate(reference_event_list=ref_c, estimated_event_list=est_c)

    def overall(metrics):
        results = metrics.results_overall_metrics()
        return {"f1": results["f_measure"]["f_measure"], "precision": results["f_measure"]["precision"],
                "recall": results["f_measure"]["recall"], "error_rate": results["error_rate"]["error_rate"]}

    classwise = event_metrics.results_class_wise_metrics()
    return {"event": overall(event_metrics), "segment": overall(segment_metrics),
            "class_f1": {label: classwise[label]["f_measure"]["f_measure"] for label in labels},
            "collar_s": collar_s, "segment_s": segment_s, "recordings": len(reference)}


def format_metrics(metrics: Mapping, title: str = "detection") -> str:
    """A Markdown table of :func:`score_events`' results."""
    def pct(x):
        return "n/a" if x is None or x != x else f"{100 * x:.1f}"

    lines = [f"{title}: {metrics['recordings']} recording(s)", "",
             "| metric | F1 (%) | precision (%) | recall (%) | error rate |", "|---|---|---|---|---|"]
    for key, name in (("event", f"event-based, {metrics['collar_s'] * 1000:.0f} ms collar"),
                      ("segment", f"segment-based, {metrics['segment_s']:g} s segments")):
        m = metrics[key]
        lines.append(f"| {name} | {pct(m['f1'])} | {pct(m['precision'])} | {pct(m['recall'])} | "
                     f"{m['error_rate']:.3f} |")
    lines += ["", "| label | event-based F1 (%) |", "|---|---|"]
    lines += [f"| {label} | {pct(f1)} |" for label, f1 in metrics["class_f1"].items()]
    return "\n".join(lines)
