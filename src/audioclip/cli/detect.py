"""``audioclip detect``: sound events over time, for labels named in words (or a fitted head).

Everything that can be checked is checked before the model loads: labels (no duplicates),
thresholds in [0, 1], ``--hop`` no longer than ``--window``, the output's format, the inputs,
an output another job is writing.
"""

from __future__ import annotations

import argparse
import sys

from .checks import check_inputs, check_output_file, require_extra
from .classify import _labels, _templates, add_label_options, add_template_options
from .model import _add_limit_options, _limits, check_model_options, expand_inputs, load_model
from .options import (
    add_logging_options,
    add_model_options,
    add_output_options,
    number_in,
    positive_int,
    seconds,
    set_command,
)
from .report import EXIT_NOTHING_DONE, STATUS_EPILOG, UsageError, error, exit_status, note, progress_bar, verbose

__all__ = ["register_detect"]

METHODS = ("columns", "windows")  # audioclip.detection.METHODS, spelled out: building the parser imports no torch
FORMATS = ("csv", "parquet", "jsonl", "raven", "audacity")
#: audio modes whose head keeps the feature map before pooling (ESResNeXtFbsp and its subclasses)
COLUMN_AUDIO_MODES = ("default", "plain", "spectrum64")
#: the shortest hop of --method windows
MIN_HOP = 0.1


#: a score or threshold; a duration of smoothing, merging or minimum length
_unit = number_in(float, 0.0, 1.0, "in [0, 1]")
_non_negative_seconds = number_in(float, 0.0, 3600.0, "0 to 3600 seconds")


def add_event_options(events: argparse._ArgumentGroup, *, live: bool = False) -> None:
    """The options that turn scores into events, shared by ``detect``, ``listen`` and ``serve --listen``.

    ``live``: said as it applies to a live source (a median filter and a merge gap delay the report)."""
    events.add_argument("--threshold", type=_unit, default=None,
                        help="score at which a label is active, in [0, 1] (default: the head's calibrated one, "
                        "else 0.5)")
    events.add_argument("--threshold-low", type=_unit, default=None,
                        help="hysteresis: an active stretch goes on while the score stays at or above this")
    events.add_argument("--median-filter", type=_non_negative_seconds, default=0.0, metavar="SECONDS",
                        help="smooth each label's scores with a running median this long "
                        + ("(its half is added to the delay; default: 0)" if live else "(default: 0, none)"))
    events.add_argument("--min-duration", type=_non_negative_seconds, default=0.0, metavar="SECONDS",
                        help="drop events shorter than this (default: 0)")
    events.add_argument("--merge-gap", type=_non_negative_seconds, default=0.0, metavar="SECONDS",
                        help="join events of one label separated by at most this "
                        + ("(an event is reported this much later; default: 0)" if live else "(default: 0)"))
    events.add_argument("--top-k", type=positive_int, default=None,
                        help="only the k best labels of a time step may be active (default: all)")


def check_threshold_low(args: argparse.Namespace, head=None) -> None:
    """``--threshold-low`` at or below the threshold in use: ``--threshold``, else the head's calibrated one, else 0.5."""
    if args.threshold_low is None:
        return
    threshold = args.threshold if args.threshold is not None else getattr(head, "threshold", None)
    if isinstance(threshold, (list, tuple)):
        threshold = min(threshold)
    if threshold is None or threshold <= 0:
        threshold = 0.5
    if args.threshold_low > threshold:
        given = "--threshold" if args.threshold is not None else "the threshold in use"
        raise UsageError(f"--threshold-low {args.threshold_low:g} is above {given} ({threshold:g})")


def _check(args: argparse.Namespace) -> None:
    if args.head is None and not (args.labels or args.labels_file):
        raise UsageError("no labels: give --labels 'dog,rain,siren', --labels-file FILE or --head DIR")
    if args.method == "windows":
        if args.hop > args.window:
            raise UsageError(f"--hop {args.hop:g} is longer than --window {args.window:g}: audio between windows "
                             "would never be scored")
        if args.hop < MIN_HOP:
            raise UsageError(f"--hop {args.hop:g}: the shortest hop is {MIN_HOP:g} s")
    if args.method == "columns" and args.audio_mode not in COLUMN_AUDIO_MODES:
        raise UsageError(f"--audio-mode {args.audio_mode}: --method columns reads the trunk's feature map, which "
                         f"the {', '.join(COLUMN_AUDIO_MODES)} modes keep; use one of them or --method windows")
    from audioclip.detection.writers import FRAME_FORMATS, format_for

    try:
        args.format = format_for(args.output, args.format)
    except ValueError as err:
        raise UsageError(f"-o {err}") from None
    if args.per_file:
        if args.format not in ("raven", "audacity"):
            raise UsageError("--per-file goes with --format raven or --format audacity")
        from audioclip.detection.job import parts_path

        from .checks import check_output_dir

        # tables an earlier run wrote (maybe edited by hand in Raven) are replaced only when asked, or on resuming
        check_output_dir(args.output, overwrite=args.overwrite or parts_path(args.output).exists(),
                         markers=("*.selections.txt", "*.labels.txt"))
    else:
        check_output_file(args.output, overwrite=args.overwrite, resumable=True)
    if args.frames:
        try:
            format_for(args.frames, None, FRAME_FORMATS)
        except ValueError as err:
            raise UsageError(f"--frames {err}") from None
        check_output_file(args.frames, overwrite=args.overwrite, resumable=True)
    if args.plot:
        require_extra("eval", ("matplotlib",))
    from audioclip.detection.job import check_not_locked, parts_path

    check_not_locked(args.output)  # another job writing it: exit 2 before the model loads
    from pathlib import Path

    resuming = parts_path(args.output).exists()
    for option, path in (("-o", None if args.per_file else args.output), ("--frames", args.frames)):
        if path and Path(path).exists() and not resuming and not args.overwrite:
            raise UsageError(f"{option} {path}: exists; --overwrite replaces it")


def _head(args: argparse.Namespace):
    """The head in ``--head DIR``: labels, a calibrated threshold and a scoring function (see
    :func:`audioclip.detection.head_scorer`). Loaded before the model, so that a bad folder is a usage error."""
    try:
        from audioclip.heads import load_head  # provided by the heads module ("audioclip fit")
    except ImportError:
        raise UsageError("--head: this installation has no fitted heads ('audioclip fit'); use --labels") from None
    try:
        return load_head(args.head)
    except (OSError, ValueError) as err:
        raise UsageError(f"--head {args.head}: {err}") from None


def _run_detect(args: argparse.Namespace) -> int:
    labels = _labels(args) if args.head is None else None
    templates = _templates(args)
    _check(args)
    head = _head(args) if args.head is not None else None
    check_threshold_low(args, head)
    check_inputs(args.files)
    check_model_options(args)
    paths, ignored = expand_inputs(args.files)
    for path in ignored:
        verbose(args, f"ignored (not a media file): {path}")
    if not paths:
        error(args, "no audio or video files in the inputs")
        return EXIT_NOTHING_DONE
    if args.format == "audacity" and len(paths) > 1 and not args.per_file:
        raise UsageError(f"-o {args.output}: an Audacity label track is for one recording; {len(paths)} were given "
                         "(give --per-file and a folder)")

    from audioclip.detection import (PostProcessing, _check_head_checkpoint, _tuple, detection_settings, head_scorer,
                                     zero_shot_scorer)
    from audioclip.detection.job import DetectJob
    from audioclip.media.files import DecodeOptions

    model = load_model(args)
    if head is not None:
        try:
            _check_head_checkpoint(model, head)
        except ValueError as err:
            raise UsageError(f"--head {args.head}: {err}") from None
        labels, scorer, calibrated = head_scorer(head)
    else:
        scorer, calibrated = zero_shot_scorer(model, labels, templates), None
    threshold = args.threshold if args.threshold is not None else (calibrated if calibrated is not None else 0.5)
    post = PostProcessing(threshold=_tuple(threshold),
                          threshold_low=args.threshold_low, median_filter_s=args.median_filter,
                          min_duration_s=args.min_duration, merge_gap_s=args.merge_gap, top_k=args.top_k)
    settings = detection_settings(model, labels, method=args.method, window=args.window, hop=args.hop,
                                  postprocess=post, mono=args.mono, scorer="head" if head is not None else "zero-shot",
                                  templates=templates if head is None else None)
    options = DecodeOptions(window=args.window, hop=args.hop, mono=args.mono, limits=_limits(args))

    with progress_bar(args, len(paths)) as bar:
        def on_file(result):
            if not result.ok:
                bar.write(f"audioclip: skipped {result.path}: {result.error}", file=sys.stderr)
            bar.update()

        job = DetectJob(model, paths, labels, scorer, settings, args.output, fmt=args.format, frames_out=args.frames,
                        per_file=args.per_file, overwrite=args.overwrite, method=args.method, window=args.window,
                        hop=args.hop, postprocess=post, options=options, batch_size=args.batch_size,
                        plot_dir=args.plot, plot_format=args.plot_format, on_file=on_file)
        report = job.run()
    if report.skipped:
        note(args, f"resumed: {report.skipped} file(s) were done by an earlier run")
    note(args, f"{report.done + report.skipped} file(s) done, {len(report.failed)} failed; {report.events} event(s) "
         f"in {args.output}")
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return exit_status(report.done + report.skipped, len(report.failed))


def register_detect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect", help="sound events over time: when each label is heard in long recordings",
        description="Score every recording over time for labels named in words (or a fitted head) and write the "
        "events: one row per event with its start, end and peak score. Formats: .csv, .parquet, .jsonl, Raven "
        "selection tables, Audacity label tracks. See docs/detection.md.", epilog=STATUS_EPILOG)
    parser.add_argument("files", nargs="+", metavar="FILE", help="recordings or folders")
    add_label_options(parser, head="a head fitted with 'audioclip fit' (its labels and threshold)", example="dog barking,chainsaw,glass breaking")
    add_template_options(parser)
    time = parser.add_argument_group("time resolution")
    time.add_argument("--method", choices=METHODS, default="columns",
                      help="columns (default): one pass of the audio head, a score every 0.41 s; windows: a window "
                      "embedded every --hop seconds (slower; each score is classify's on that window)")
    time.add_argument("--window", type=seconds, default=5.0, help="--method windows: window length (default: 5 s)")
    time.add_argument("--hop", type=seconds, default=0.5,
                      help=f"--method windows: seconds between windows, {MIN_HOP:g} to --window (default: 0.5)")
    time.add_argument("--mono", action="store_true", help="down-mix to one channel first")
    time.add_argument("--batch-size", type=positive_int, default=16, help="windows per model call (default: 16)")
    add_event_options(parser.add_argument_group("from scores to events"))
    add_output_options(parser, required=True, metavar="EVENTS",
                       help="the events: .csv, .parquet, .jsonl, or a Raven/Audacity table (--format); with "
                       "--per-file a folder", overwrite_help="replace an existing output (default: refuse it, or "
                       "resume an interrupted run)")
    out = parser.add_argument_group("output format")
    out.add_argument("--format", choices=FORMATS, help="the events' format (default: from the suffix)")
    out.add_argument("--per-file", action="store_true",
                     help="raven/audacity: one table per recording in the folder -o (default: one table; Raven's "
                     "with file offsets)")
    out.add_argument("--frames", metavar="FILE",
                     help="also write the scores: one row per time step and label (.parquet, .csv or .jsonl)")
    out.add_argument("--plot", metavar="DIR", help="one picture per recording: spectrogram, scores and events")
    out.add_argument("--plot-format", choices=("png", "svg"), default="png", help="picture format (default: png)")
    add_model_options(parser, precision=False)  # float32: scores are compared with classify's
    _add_limit_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_detect, quick_exit=True)


# --------------------------------------------------------------------------
# audioclip evaluate --task detection
# --------------------------------------------------------------------------


def run_detection_evaluation(args: argparse.Namespace) -> int:
    """``evaluate --task detection --root DIR``: detect the annotated labels zero-shot, score with sed_eval.

    Labels are those of the annotations (or ``--class-names``); events are made with the
    ``detect`` defaults (columns, threshold 0.5). Prints the table and writes ``results.json``
    and ``events.csv`` to the output folder.
    """
    import json
    from pathlib import Path

    from .checks import check_checkpoint, check_output_dir, read_list_file
    from .report import EXIT_OK, EXIT_SOME_FAILED

    if not args.root:
        raise UsageError("--task detection needs --root DIR: recordings with annotation files")
    check_inputs([args.root], "--root")
    require_extra("eval", ("sed_eval",))
    templates = [t for t in (args.template or ["{}"])]
    if args.templates_file:
        templates = read_list_file(args.templates_file, "templates")
    check_checkpoint(args.checkpoint)
    name = Path(args.checkpoint).stem
    out = Path(args.output) if args.output else Path("eval-results") / f"detection-{name}"
    check_output_dir(out, overwrite=args.overwrite, markers=("results.json",))

    from audioclip.evaluate.detection import find_annotated, format_metrics, score_events

    try:
        annotated = find_annotated(args.root)
    except ValueError as err:  # a bad annotation file: named with its line
        raise UsageError(str(err)) from None
    if not annotated:
        error(args, f"{args.root}: no recordings with annotation files (onset offset label per line)")
        return EXIT_NOTHING_DONE
    labels = (read_list_file(args.class_names, "class names") if args.class_names
              else sorted({e["label"] for _, events in annotated for e in events}))
    args.backend, args.onnx_dir = "pytorch", None
    model = load_model(args)

    from audioclip.detection import detect
    from audioclip.detection.writers import write_events

    found = detect(model, [path for path, _ in annotated], labels=labels, templates=templates,
                   batch_size=args.batch_size)
    reference = dict(annotated)
    estimated = {f.path: f.events for f in found.files if f.ok}
    metrics = score_events({p: r for p, r in reference.items() if p in estimated}, estimated, labels)
    print(format_metrics(metrics, title=f"detection, zero-shot, {args.checkpoint}"))
    sys.stdout.flush()
    out.mkdir(parents=True, exist_ok=True)
    from audioclip.io import write_text_atomic

    write_text_atomic(out / "results.json", json.dumps({"metrics": metrics, "settings": found.settings,
                                                        "failed": found.failed}, indent=1) + "\n", encoding="utf-8")
    write_events(out / "events.csv", found.events, settings=found.settings)
    for path, reason in found.failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    note(args, f"wrote results.json and events.csv to {out}/")
    if not estimated:
        return EXIT_NOTHING_DONE
    return EXIT_SOME_FAILED if found.failed else EXIT_OK
