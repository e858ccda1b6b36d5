"""``audioclip evaluate``: the paper's evaluations (the ``eval`` extra: torchmetrics, matplotlib).

Examples::

    audioclip evaluate --task zeroshot --dataset esc50 --root /data/ESC-50 --checkpoint full
    audioclip evaluate --task supervised --dataset us8k --root /data/UrbanSound8K \\
        --checkpoint runs/us8k-audioclip            # holds fold1/model.pt ... fold10/model.pt
    audioclip evaluate --task querying --dataset audioset --root /data/audioset --frames-dir frames
    audioclip evaluate --collect eval-results       # the paper-shaped summary of every run below
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checks import (
    check_cached,
    check_checkpoint,
    check_device,
    check_inputs,
    check_list_file,
    check_output_dir,
    check_templates,
    read_templates,
    require_extra,
)
from .options import MAX_WORKERS, add_logging_options, add_model_options, add_output_options, positive_int, set_command, worker_count
from .report import EXIT_NOTHING_DONE, EXIT_OK, EXIT_SOME_FAILED, UsageError, error, note
from .startup import light_open_clip

__all__ = ["DATASETS", "PAIRS", "TASKS", "fold_checkpoint", "register_evaluate"]

PROMPT_SETS = ("label", "openai-imagenet")
# the same as audioclip.evaluate.datasets.DATASETS / tasks.TASKS / tasks.PAIRS (a test checks),
# spelled out so that building the parser imports neither torch nor the model
DATASETS = ("esc50", "us8k", "audioset", "imagenet", "folder")
TASKS = ("zeroshot", "supervised", "querying")
PAIRS = ("text-image", "text-audio", "audio-image", "image-audio", "audio-audio")
_RESULT_FILES = ("results.json", "summary.md")


def _folds(text: str) -> list[int]:
    try:
        folds = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of fold numbers, got {text!r}") from None
    if not folds:
        raise argparse.ArgumentTypeError("no folds given")
    return folds


def _pairs(text: str) -> list[str]:
    pairs = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        raise argparse.ArgumentTypeError(f"expected pairs among {', '.join(PAIRS)}, got {text!r}")
    return pairs


def register_evaluate(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="the paper's evaluations: zero-shot, fine-tuned (supervised) and querying",
        description="Reproduce the paper's evaluation tables on ESC-50, UrbanSound8K, AudioSet or ImageNet: "
        "prints a table beside the paper's figures and writes results.json, results.csv and plots. "
        "Audio is prepared as the original code did unless --conventions consistent. See docs/reproduction.md.",
        epilog="exit status: 0 done; 1 nothing could be evaluated; 2 usage error; 3 done, but some files "
        "could not be read (each is reported)",
    )
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--task", choices=TASKS + ("detection",),
                      help="zeroshot, supervised (fine-tuned checkpoints), querying, or detection (sound events in "
                      "annotated recordings under --root, events made with detect's defaults: columns, threshold 0.5; docs/detection.md)")
    what.add_argument("--dataset", choices=DATASETS, help="which dataset layout --root holds")
    what.add_argument("--root", metavar="PATH", help="the dataset folder (custom data: a CSV or a folder per class)")
    what.add_argument("--folds", type=_folds, metavar="LIST", help="only these folds, e.g. 1,2 (default: all)")
    what.add_argument("--modality", action="append", choices=("audio", "image", "both"),
                      help="zeroshot: classify by audio, image or both (repeatable; default: all the dataset has)")
    what.add_argument("--pairs", type=_pairs, metavar="LIST",
                      help=f"querying: query-target pairs, e.g. text-audio,audio-image (default: all the dataset "
                      f"allows of {', '.join(PAIRS)})")
    what.add_argument("--relevance", choices=("exact", "overlap"), default="exact",
                      help="querying: a result is relevant when its label set equals the query's (exact, default) "
                      "or shares a label with it (overlap)")
    what.add_argument("--keep-paired", action="store_true",
                      help="querying: let an audio query retrieve its own clip's picture (and vice versa)")
    what.add_argument("--collect", nargs="+", metavar="PATH",
                      help="instead of evaluating: summarise the results.json files under these paths as the "
                      "paper's tables")

    add_model_options(
        parser, checkpoint_help="registered weights or a checkpoint file (default: full). supervised: a folder "
        "with fold<K>/model.pt (the cross-validation output of 'audioclip train --cv'), or a path with {fold} in it")

    prompts = parser.add_argument_group("prompts").add_mutually_exclusive_group()
    prompts.add_argument("--template", action="append", metavar="TEXT",
                         help="prompt with one {} for the label (repeatable: averaged; default: {} — the bare label "
                         "text, as the original's evaluation)")
    prompts.add_argument("--templates-file", metavar="FILE", help="one prompt template per line")
    prompts.add_argument("--prompt-set", choices=PROMPT_SETS,
                         help="label: {}; openai-imagenet: CLIP's 80 ImageNet templates (open_clip)")

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--conventions", choices=("original", "consistent"), default="original",
                        help="audio input conventions: original (default; those the published checkpoints were "
                        "trained and evaluated with) or consistent (this package's own)")
    inputs.add_argument("--audio-length", type=positive_int, metavar="SAMPLES",
                        help="centre crop / pad length (default: the dataset's: ESC-50 220500, UrbanSound8K 176400, "
                        "AudioSet 441000)")
    inputs.add_argument("--pad", choices=("zeros", "edge"),
                        help="padding of short clips (default: edge with --conventions original, as the original "
                        "code; zeros otherwise). Checkpoints fine-tuned with 'audioclip train "
                        "--original-conventions' were padded with zeros")
    inputs.add_argument("--audio-dir", help="ESC-50 / UrbanSound8K audio folder under --root (default: audio)")
    inputs.add_argument("--subset", choices=("esc10",), help="ESC-50: only the ESC-10 classes")
    inputs.add_argument("--split", choices=("eval", "train", "all"), help="AudioSet: which segments (default: eval)")
    inputs.add_argument("--clips-dir", help="AudioSet: folder of clips under --root (default: clips)")
    inputs.add_argument("--frames-dir", help="AudioSet: folder of extracted frames (<YTID>/*.jpg) under --root")
    inputs.add_argument("--class-names", metavar="FILE",
                        help="ImageNet: folder,name rows (default: CLIP's names for the 1000 WordNet-ID folders)")
    inputs.add_argument("--batch-size", type=positive_int, default=16, help="model batch size (default: 16)")
    inputs.add_argument("--workers", type=worker_count, default=0,
                        help=f"decoding processes, 0 to {MAX_WORKERS} (default: 0; at most one per CPU start)")

    out = add_output_options(parser, metavar="DIR",
                             help="results folder (default: eval-results/<task>-<dataset>-<checkpoint>); one "
                             "holding earlier results is refused unless --overwrite",
                             overwrite_help="write over the results already in the output folder")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--embedding-cache", metavar="DIR",
                     help="where embeddings are kept between runs (default: $AUDIOCLIP_CACHE/eval-embeddings)")
    out.add_argument("--no-embedding-cache", action="store_true", help="neither read nor write cached embeddings")
    add_logging_options(parser)
    set_command(parser, run, on_interrupt="embeddings computed so far are kept in the cache")
    return parser


def _templates(args) -> list[str]:
    if args.templates_file:
        return read_templates(args.templates_file)
    if args.prompt_set == "openai-imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    if args.template:
        return check_templates(list(args.template))
    return ["{}"]


def _dataset_options(args) -> dict:
    per_dataset = {
        "esc50": {"audio_dir": args.audio_dir, "subset": args.subset},
        "us8k": {"audio_dir": args.audio_dir},
        "audioset": {"split": args.split, "clips_dir": args.clips_dir, "frames_dir": args.frames_dir},
        "imagenet": {"class_names": args.class_names},
        "folder": {},
    }
    return per_dataset[args.dataset]


def fold_checkpoint(spec: str, fold: int | None) -> str:
    """The checkpoint of ``fold``: ``spec`` with ``{fold}`` filled in, ``spec/fold<K>/model.pt``, or ``spec``."""
    if "{fold}" in spec:
        if fold is None:
            raise UsageError(f"--checkpoint {spec} has {{fold}} but the dataset has no folds")
        return spec.format(fold=fold)
    path = Path(spec)
    if path.is_dir():
        if fold is None:
            raise UsageError(f"--checkpoint {spec} is a folder; the dataset has no folds: give the checkpoint file")
        for name in ("model.pt", "best.pt"):
            candidate = path / f"fold{fold}" / name
            if candidate.is_file():
                return str(candidate)
        raise UsageError(f"--checkpoint {spec}: no fold{fold}/model.pt (the layout 'audioclip train --cv' writes); "
                         "or give --checkpoint with {fold} in the path")
    return spec


def _per_fold(spec: str) -> bool:
    return "{fold}" in spec or Path(spec).is_dir()


def _default_output(args) -> Path:
    spec = args.checkpoint
    name = Path(spec).name if Path(spec).is_dir() else Path(spec.replace("{fold}", "K")).stem
    return Path("eval-results") / f"{args.task}-{args.dataset}-{name}"


def _check(args: argparse.Namespace) -> list[str] | None:
    """Everything that can be checked before the dataset is read; returns the templates (None: a prompt set)."""
    missing = [f"--{n}" for n in ("task", "dataset", "root") if not getattr(args, n)]
    if missing:
        raise UsageError(f"evaluate needs {', '.join(missing)} (or --collect PATH to summarise earlier results)")
    check_inputs([args.root], "--root")
    for option, value in (("--class-names", args.class_names), ("--templates-file", args.templates_file)):
        if value:
            check_inputs([value], option)
    if args.class_names:  # read with the dataset, later: a FIFO or /dev/zero is refused now
        check_list_file(args.class_names, "class names file")
    templates = None if args.prompt_set == "openai-imagenet" else _templates(args)  # a set: open_clip's, later
    if not _per_fold(args.checkpoint):
        check_checkpoint(args.checkpoint)
    elif args.task != "supervised":
        raise UsageError(f"--checkpoint {args.checkpoint}: one checkpoint per fold is for --task supervised")
    out = Path(args.output) if args.output else _default_output(args)
    check_output_dir(out, overwrite=args.overwrite, markers=_RESULT_FILES)
    check_device(args.device)
    if not _per_fold(args.checkpoint):
        check_cached(args.checkpoint, cache_dir=args.cache_dir, offline=args.offline)
    return templates


def _collect(args: argparse.Namespace) -> int:
    check_inputs(args.collect)
    if args.output:
        check_output_dir(args.output, overwrite=args.overwrite, markers=("summary.md",))
    from audioclip.evaluate.collect import collect

    try:
        text = collect(args.collect, output=args.output)
    except ValueError as err:  # no results.json under the paths
        error(args, err)
        return EXIT_NOTHING_DONE
    print(text)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run one evaluation (or ``--collect``); print the table; write the files. Returns the exit status."""
    if args.collect:
        return _collect(args)
    if args.task == "detection":
        from .detect import run_detection_evaluation

        return run_detection_evaluation(args)
    require_extra("eval", ("torchmetrics",) if args.no_plots else None)
    templates = _check(args)

    light_open_clip()
    if templates is None:
        templates = _templates(args)
    from audioclip.evaluate.conventions import conventions_for
    from audioclip.evaluate.datasets import load_eval_set
    from audioclip.evaluate.embed import EmbeddingStore, load_encoder
    from audioclip.evaluate.report import format_report, write_outputs
    from audioclip.evaluate.protocols import RunOptions, run_querying, run_supervised, run_zeroshot

    try:
        data = load_eval_set(args.dataset, args.root, **_dataset_options(args))
    except ValueError as err:  # not the dataset's layout: nothing to evaluate
        error(args, err)
        return EXIT_NOTHING_DONE
    data = data.select_folds(args.folds)
    if not data.items:
        error(args, f"{data.title} at {args.root}: nothing to evaluate")
        return EXIT_NOTHING_DONE
    if args.task == "supervised" and _per_fold(args.checkpoint):
        for fold in (args.folds or data.folds or [None]):  # every fold's checkpoint, before loading any
            check_checkpoint(fold_checkpoint(args.checkpoint, fold))
    conventions = (conventions_for(args.dataset, args.conventions, args.audio_length, args.pad)
                   if "audio" in data.modalities else None)
    options = RunOptions(store=EmbeddingStore(args.embedding_cache, enabled=not args.no_embedding_cache),
                         batch_size=args.batch_size, workers=args.workers, progress=not args.quiet)
    log = lambda text: note(args, text)  # noqa: E731
    log(f"evaluating: {data.summary()}")
    if conventions is not None:
        log(f"audio input: {conventions.describe()}")

    def encoder(spec):
        log(f"loading checkpoint {spec}")
        return load_encoder(spec, device=args.device, precision=args.precision, cache_dir=args.cache_dir,
                            offline=args.offline, audio_mode=args.audio_mode)

    common = dict(templates=templates, conventions=conventions, options=options)
    if args.task == "zeroshot":
        report = run_zeroshot(encoder(args.checkpoint), data, modalities=args.modality, **common)
    elif args.task == "querying":
        report = run_querying(encoder(args.checkpoint), data, pairs=args.pairs, relevance=args.relevance,
                              keep_paired=args.keep_paired, **common)
    else:
        spec = args.checkpoint
        if not _per_fold(spec) and data.folds:
            log(f"warning: the same checkpoint ({spec}) for every fold: a fine-tuned score needs, for each fold, "
                "the checkpoint trained without it (a folder with fold<K>/model.pt, or a path with {fold})")
        report = run_supervised(lambda fold: encoder(fold_checkpoint(spec, fold)), data,
                                folds=args.folds, label=spec, **common)
    print(format_report(report))
    sys.stdout.flush()
    out = Path(args.output) if args.output else _default_output(args)
    files = write_outputs(report, out, plots=not args.no_plots)
    log(f"wrote {len(files)} files to {out}/ (results.json, results.csv, table.txt"
        + (", plots" if not args.no_plots else "") + ")")
    if not report.rows:
        return EXIT_NOTHING_DONE
    return EXIT_SOME_FAILED if report.failures else EXIT_OK
