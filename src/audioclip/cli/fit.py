"""``audioclip fit DATA -o HEAD_DIR``: a classifier of your own labels on frozen embeddings.

Everything about the data (classes, files, shots) and the options is checked
before torch is imported and the model loads: those problems exit 2 and embed
nothing. Clips left out (a missing file, a class of one clip, a clip that
cannot be decoded) are reported one line each; the head is still fitted on
the rest and the exit status is 3.
"""

from __future__ import annotations

import argparse
import json
import sys

from .checks import check_inputs
from .classify import _templates, add_template_options
from .model import _add_input_options, check_model_options, decode_options, load_model
from .options import add_logging_options, add_model_options, positive_int, set_command
from .report import EXIT_OK, EXIT_SOME_FAILED, STATUS_EPILOG, UsageError, error, note, progress_bar

__all__ = ["register_fit"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _numbers(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers, e.g. 1,10,100")
    return values


def _check_out(out: str) -> None:
    """HEAD_DIR is new, or a head folder (a re-fit replaces its head and reuses its embeddings).

    The folder is replaced whole when the head is ready, so one that holds anything but a head's files (a file
    of the user's) is refused: nothing in it is touched.
    """
    from audioclip.fit.folder import head_folder_problem  # the standard library only: no torch yet

    if not out.strip():
        raise UsageError("-o: an empty folder name was given")
    problem = head_folder_problem(out)
    if problem is not None:
        raise UsageError(f"-o {problem}")


def _run_fit(args: argparse.Namespace) -> int:
    from audioclip.fit.data import DataError, check_shots, parse_shots, read_data  # no torch: checked first

    check_inputs([args.data], what="DATA")
    _check_out(args.output)
    if args.embeddings is not None:
        check_inputs([args.embeddings], what="--embeddings")
    templates = _templates(args)
    try:
        shots = parse_shots(args.shots)
        data = read_data(args.data, background=args.background)
        check_shots(data, shots)
    except (DataError, ValueError) as err:
        raise UsageError(str(err)) from None
    for problem in data.problems:
        error(args, problem)
    counts = data.counts()
    note(args, f"{len(data.examples)} clips in {len(data.classes)} classes ("
         + ", ".join(f"{c} {counts.get(c, 0)}" for c in data.classes)
         + (f"; background class {data.background!r}" if data.background else "") + ")")
    check_model_options(args)
    model = load_model(args)

    from audioclip.fit import fit, format_summary

    reported = set(data.problems)
    with progress_bar(args, len(data.examples)) as bar:
        def on_result(path, reason):
            if reason:
                line = f"{path}: {reason}; left out"
                reported.add(line)
                bar.write(f"{args.prog}: error: {line}", file=sys.stderr)
            bar.update()

        result = fit(model, data, args.output, embeddings=args.embeddings, templates=templates, shots=shots,
                     seeds=args.seeds, Cs=args.C, alpha=args.alpha, max_false_positives=args.max_false_positives,
                     n_folds=args.folds, options=decode_options(args, model), batch_size=args.batch_size,
                     workers=args.workers, precision=args.precision, plot=not args.no_plot, on_result=on_result)
    for problem in result.problems:
        if problem not in reported:
            error(args, problem)
    if args.json:
        print(json.dumps(result.report, default=str))
    else:
        print(format_summary(result.report))
    vectors = (f"vectors from {args.embeddings}" if args.embeddings else
               f"embedded {result.embedded} clip(s), {result.reused} reused")
    note(args, f"head written to {result.folder} ({len(result.head.labels)} classes; {vectors}; "
         f"fitting took {result.seconds_fitting:.1f} s)")
    return EXIT_SOME_FAILED if result.problems else EXIT_OK


def register_fit(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit a classifier of your own labels on frozen embeddings (a head for classify --head)",
        description="Fit a linear head on AudioCLIP embeddings of labelled clips, mixed with the zero-shot "
        "classifier of the class names by a weight chosen on validation folds, and evaluate it honestly. DATA is a "
        "folder with one sub-folder per class, or a .csv/.parquet table with columns path,label and optional "
        "fold,group (label may hold several labels separated by ';'). A class named background, noise or other "
        "(or --background NAME) holds clips that are none of the classes. The clips are embedded once into "
        "HEAD_DIR/embeddings.parquet; a second fit into the same folder reuses them.",
        epilog=STATUS_EPILOG)
    parser.add_argument("data", metavar="DATA", help="a folder of class folders, or a .csv/.parquet table")
    parser.add_argument("-o", "--output", required=True, metavar="HEAD_DIR",
                        help="the head folder (head.safetensors, head.json, report.json, confusion.png); an "
                        "existing head there is replaced when the new one is ready")
    parser.add_argument("--embeddings", metavar="FILE",
                        help="vectors from 'audioclip embed' (same checkpoint) instead of embedding the clips")
    parser.add_argument("--background", metavar="NAME", help="the class of clips that are none of the classes")
    group = parser.add_argument_group("fitting and evaluation")
    group.add_argument("--shots", default="all", metavar="LIST",
                       help="clips per class to fit on in the evaluation, e.g. 1,5,10,all (default: all)")
    group.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                       help="draws of the shots per count; mean ± std is reported (default: 1)")
    group.add_argument("--folds", type=positive_int, default=5, metavar="N",
                       help="grouped folds made when the data has no fold column (default: 5)")
    group.add_argument("--C", type=_numbers, default=[1.0, 10.0, 100.0], metavar="LIST",
                       help="inverse regularisation strengths tried on the validation folds (default: 1,10,100)")
    group.add_argument("--alpha", type=_fraction, metavar="A",
                       help="fix the mixing weight (0: zero-shot only, 1: trained only) instead of choosing it")
    group.add_argument("--max-false-positives", type=_fraction, default=0.05, metavar="RATE",
                       help="with a background class: the share of background clips the threshold may let through "
                       "on the validation folds (default: 0.05)")
    add_template_options(parser, what="the class name (the zero-shot partner's prompts)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--no-plot", action="store_true", help="write no confusion-matrix picture")
    add_model_options(parser)
    _add_input_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_fit, quick_exit=True, extras=[("fit", ("sklearn",))])
