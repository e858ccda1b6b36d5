"""``audioclip train`` and ``audioclip prepare`` (the ``train`` extra: PyYAML, WebDataset, TensorBoard).

Under torchrun every process runs the same command line::

    torchrun --nproc_per_node=4 -m audioclip train --config esc50-audioclip --data-root /data/ESC-50
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .checks import check_cached, check_checkpoint, check_device, check_inputs, check_output_dir
from .options import MAX_WORKERS, add_logging_options, add_model_options, add_output_options, positive_int, set_command, worker_count
from .report import EXIT_NOTHING_DONE, EXIT_OK, EXIT_SOME_FAILED, UsageError, error, exit_status, note
from .startup import light_open_clip

__all__ = ["register_prepare", "register_train"]

_ORIGINAL_CONVENTIONS = {
    # what the original loaders did to each dataset's audio (see docs/training.md)
    "esc50": ["audio.channels=mono", "audio.amplitude=raw"],
    "us8k": ["audio.channels=stereo", "audio.amplitude=minmax", "audio.max_duration=4.0"],
}
# files a finished or interrupted run leaves in its output folder
_RUN_FILES = ("last.pt", "results.json", "fold*/last.pt", "fold*/results.json")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config")
    group.add_argument("--config", "-c", metavar="NAME|FILE",
                       help="a bundled regime (see --list-configs) or a YAML file")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config value, e.g. --set optim.lr=1e-4 (repeatable; values are YAML)")
    group.add_argument("--data-root", metavar="PATH", help="data.root: the dataset folder (or CSV, or shard folder)")
    group.add_argument("--test-fold", type=int, metavar="K", help="data.test_fold")
    group.add_argument("--select-on-test", action="store_true",
                       help="pick the best epoch on the test set, as the original code did "
                            "(data.validation.kind=test; the test score is then optimistic)")
    group.add_argument("--original-conventions", action="store_true",
                       help="decode audio as the original loader of this dataset did (UrbanSound8K: "
                            "min-max scaled, two channels, first 4 s)")
    group.add_argument("--list-configs", action="store_true", help="list the bundled configs and exit")
    group.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def register_train(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune AudioCLIP / ESResNeXt-fbsp from a config",
        description="Train or fine-tune from a config (bundled regimes: --list-configs). Runs on CPU, one GPU, "
        "or under torchrun ('torchrun ... -m audioclip train ...') on several GPUs and nodes. See docs/training.md.",
        epilog="exit status: 0 done; 1 the run failed; 2 usage error (bad config, missing data, existing output)",
    )
    _add_config_options(parser)
    group = add_model_options(
        parser, checkpoint_default=None, audio_mode=False, precision=False,
        checkpoint_help="model.weights: the starting weights, registered or a file (default: the config's)")
    group.add_argument("--weights", dest="checkpoint", metavar="NAME|FILE", help=argparse.SUPPRESS)
    group.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="train.amp (mixed precision on GPU)")
    out = add_output_options(parser, metavar="DIR",
                             help="output.dir (default: runs/<config name>); a folder holding an earlier run is "
                             "refused unless --resume or --overwrite",
                             overwrite_help="start afresh in an output folder that holds an earlier run")
    out.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                     help="continue from <output>/last.pt (or the given checkpoint)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--epochs", type=positive_int, help="train.epochs")
    run_group.add_argument("--batch-size", type=positive_int, help="train.batch_size (global, over all processes)")
    run_group.add_argument("--lr", type=float, help="optim.lr")
    run_group.add_argument("--gamma", type=float, help="sched.gamma (exponential decay per epoch)")
    run_group.add_argument("--workers", type=worker_count,
                           help=f"train.num_workers (DataLoader workers per process, 0 to {MAX_WORKERS})")
    run_group.add_argument("--seed", type=int, help="train.seed")
    run_group.add_argument("--cv", action="store_true", help="cross-validate: one run per fold, then mean ± std")
    run_group.add_argument("--folds", metavar="LIST", help="with --cv: the folds to run, e.g. 1,2,3 (default all)")
    add_logging_options(parser)
    set_command(parser, run_train, extras=[("train", None)], on_interrupt="resume with --resume")
    return parser


def register_prepare(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare",
        help="extract audio and frames from videos, or write WebDataset shards",
        description="Prepare data for training. 'extract': audio (44.1 kHz FLAC) and the paper's ten equally "
        "spaced frames from video files. 'shards': a config's splits as WebDataset shards for streaming.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = sub.add_parser("extract", help="videos -> OUT/clips/<name>.flac and OUT/frames/<name>/00..09.jpg",
                        epilog="exit status: 0 every video extracted; 1 none could be; 2 usage error; "
                        "3 some videos could not be read (each is reported)")
    ex.add_argument("source", help="folder of video files (searched recursively)")
    ex.add_argument("out", help="output folder")
    ex.add_argument("--frames", type=positive_int, default=10, help="equally spaced frames per video (default 10)")
    ex.add_argument("--frame-size", type=positive_int, default=224, help="frame side in pixels (default 224)")
    ex.add_argument("--workers", type=worker_count, default=1,
                    help=f"parallel processes, up to {MAX_WORKERS} (default 1; 0 is 1)")
    add_logging_options(ex)
    set_command(ex, run_prepare, prog=parser.prog)
    sh = sub.add_parser("shards", help="a config's train/val/test splits -> WebDataset shards + manifest.json",
                        epilog="exit status: 0 done; 1 failed; 2 usage error (bad config, existing shards)")
    _add_config_options(sh)
    sh.add_argument("out", help="output folder for the shards")
    sh.add_argument("--max-count", type=positive_int, default=1000, help="samples per shard (default 1000)")
    sh.add_argument("--format", choices=["flac", "npy"], default="flac",
                    help="audio in the shards: 16-bit FLAC (default) or float32 .npy")
    sh.add_argument("--frames", type=int, default=0, help="store up to this many frames per clip (default 0)")
    sh.add_argument("--overwrite", action="store_true", help="write over shards already in the output folder")
    add_logging_options(sh)
    set_command(sh, run_prepare, prog=parser.prog, extras=[("train", None)])
    return parser


# -- running -------------------------------------------------------------------


def _config_from_args(args: argparse.Namespace) -> dict:
    """The resolved config; a usage error if it cannot be made."""
    from audioclip.train.config import ConfigError, load_config

    if not args.config:
        raise UsageError("--config is required (a bundled name from --list-configs, or a YAML file)")
    overrides = list(args.overrides)
    flags = {
        "data_root": "data.root", "test_fold": "data.test_fold", "output": "output.dir", "epochs": "train.epochs",
        "batch_size": "train.batch_size", "lr": "optim.lr", "gamma": "sched.gamma", "workers": "train.num_workers",
        "seed": "train.seed", "device": "train.device", "amp": "train.amp", "checkpoint": "model.weights",
    }
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if attr == "device" and value == "auto":
            continue  # the config's (auto unless it says otherwise)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.select_on_test:
        overrides.append("data.validation={kind: test}")
    try:
        cfg = load_config(args.config)
        if args.original_conventions:
            dataset = cfg["data"]["dataset"]
            if dataset not in _ORIGINAL_CONVENTIONS:
                raise ConfigError(f"--original-conventions: the original code had no loader for {dataset!r}")
            overrides = _ORIGINAL_CONVENTIONS[dataset] + overrides
        return load_config(args.config, overrides)
    except ConfigError as err:
        raise UsageError(err) from None


def _list_configs() -> int:
    from audioclip.train.config import list_configs, load_config

    for name in list_configs():
        text = " ".join(load_config(name)["description"].split())
        print(f"{name:22s} {text.split('. ')[0].rstrip('.')}")
    return EXIT_OK


def _output_dir(cfg: dict) -> Path:
    """Where the run writes (as ``audioclip.train.engine.output_dir``, without importing torch)."""
    return Path(cfg["output"]["dir"] or Path("runs") / cfg["name"])


def _check_train(args: argparse.Namespace, cfg: dict) -> None:
    root = cfg["data"].get("root")
    if root:
        check_inputs([root], "data.root (--data-root)")
    device = str(cfg["train"]["device"])  # auto, cpu or cuda (the config checks): a GPU per torchrun process
    weights = cfg["model"].get("weights")
    if weights:
        check_checkpoint(weights, option="model.weights (--checkpoint)")
    if isinstance(args.resume, str):
        check_inputs([args.resume], "--resume checkpoint")
    elif not args.resume:
        check_output_dir(_output_dir(cfg), overwrite=args.overwrite, markers=_RUN_FILES,
                         hint="--resume continues it, --overwrite starts afresh")
    check_device(device)
    if weights:
        check_cached(weights)


def run_train(args: argparse.Namespace) -> int:
    """Run ``train``; returns the exit status."""
    if args.list_configs:
        return _list_configs()
    if args.cache_dir:
        os.environ["AUDIOCLIP_CACHE"] = str(args.cache_dir)  # for the starting weights, in every process
    if args.offline:
        os.environ["AUDIOCLIP_OFFLINE"] = "1"
    cfg = _config_from_args(args)
    if args.print_config:
        from audioclip.train.config import dump

        print(dump(cfg), end="")
        return EXIT_OK
    _check_train(args, cfg)
    folds = None
    if args.cv and args.folds:
        try:
            folds = [int(x) for x in args.folds.split(",")]
        except ValueError:
            raise UsageError(f"--folds {args.folds}: expected fold numbers like 1,2,3") from None

    light_open_clip()
    from audioclip.train.cv import run_cross_validation
    from audioclip.train.distributed import setup_distributed
    from audioclip.train.engine import Trainer

    dist = setup_distributed(cfg["train"]["device"])
    try:
        if args.cv:
            run_cross_validation(cfg, dist, folds=folds, resume=bool(args.resume))
        else:
            Trainer(cfg, dist=dist, resume=args.resume).run()
    finally:
        dist.close()
    return EXIT_OK


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``prepare``; returns the exit status."""
    if args.action == "extract":
        check_inputs([args.source], "source folder")
        from audioclip.train.prepare import extract_videos

        report = extract_videos(args.source, args.out, num_frames=args.frames, frame_size=args.frame_size,
                                workers=args.workers, progress=not args.quiet)
        for line in report["bad"]:
            error(args, f"skipped {line}")
        note(args, f"extracted {report['extracted']} of {report['videos']} videos into {args.out}")
        if not report["videos"]:
            return EXIT_NOTHING_DONE
        return exit_status(report["extracted"], len(report["bad"]))
    if args.list_configs:
        return _list_configs()
    cfg = _config_from_args(args)
    check_output_dir(args.out, overwrite=args.overwrite, markers=("manifest.json",))
    root = cfg["data"].get("root")
    if root:
        check_inputs([root], "data.root (--data-root)")

    from audioclip.train.prepare import prepare_shards

    manifest = prepare_shards(cfg, args.out, max_count=args.max_count, audio_format=args.format,
                              frames=args.frames, progress=not args.quiet)
    bad = 0
    for split, entry in manifest["splits"].items():
        for line in entry["bad"]:
            error(args, f"skipped {line}")
            bad += 1
        note(args, f"{split}: {entry['count']} clips in {len(entry['shards'])} shards")
    print(json.dumps({"manifest": str(args.out) + "/manifest.json"}))
    return EXIT_SOME_FAILED if bad else EXIT_OK
