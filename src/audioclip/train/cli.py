"""The ``train`` and ``prepare`` commands.

For the ``audioclip`` command: ``add_parser(subparsers)`` / ``run(args)`` make
``audioclip train``, ``add_prepare_parser(subparsers)`` / ``run_prepare(args)``
make ``audioclip prepare`` (``register(subparsers)`` adds both). On its own,
``python -m audioclip.train [train|prepare] ...`` runs them (``train`` is the
default), which is also what ``torchrun`` launches::

    torchrun --nproc_per_node=4 -m audioclip.train --config esc50-audioclip --data-root /data/ESC-50
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["add_parser", "add_prepare_parser", "build_parser", "main", "register", "run", "run_prepare"]

_ORIGINAL_CONVENTIONS = {
    # what the original loaders did to each dataset's audio (see docs/training.md)
    "esc50": ["audio.channels=mono", "audio.amplitude=raw"],
    "us8k": ["audio.channels=stereo", "audio.amplitude=minmax", "audio.max_duration=4.0"],
}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="NAME|FILE",
                        help="a bundled regime (see --list-configs) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set optim.lr=1e-4 (repeatable; values are YAML)")
    parser.add_argument("--data-root", metavar="PATH", help="data.root: the dataset folder (or CSV, or shard folder)")
    parser.add_argument("--test-fold", type=int, metavar="K", help="data.test_fold")
    parser.add_argument("--select-on-test", action="store_true",
                        help="pick the best epoch on the test set, as the original code did "
                             "(data.validation.kind=test; the test score is then optimistic)")
    parser.add_argument("--original-conventions", action="store_true",
                        help="decode audio as the original loader of this dataset did (UrbanSound8K: "
                             "min-max scaled, two channels, first 4 s)")
    parser.add_argument("--list-configs", action="store_true", help="list the bundled configs and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand (sets ``func=run``)."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune AudioCLIP / ESResNeXt-fbsp from a config",
        description="Train or fine-tune from a config (bundled regimes: --list-configs). Runs on CPU, one GPU, "
        "or under torchrun on several GPUs and nodes. See docs/training.md.",
    )
    _fill_train(parser)
    return parser


def _fill_train(parser: argparse.ArgumentParser) -> None:
    _add_config_options(parser)
    parser.add_argument("--output", "-o", metavar="DIR", help="output.dir (default runs/<config name>)")
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--batch-size", type=int, help="train.batch_size (global, over all processes)")
    parser.add_argument("--lr", type=float, help="optim.lr")
    parser.add_argument("--gamma", type=float, help="sched.gamma (exponential decay per epoch)")
    parser.add_argument("--workers", type=int, help="train.num_workers (DataLoader workers per process)")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="train.device")
    parser.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="train.amp (mixed precision on GPU)")
    parser.add_argument("--weights", metavar="NAME|FILE", help="model.weights (starting weights)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from <output>/last.pt (or the given checkpoint)")
    parser.add_argument("--cv", action="store_true", help="cross-validate: one run per fold, then mean ± std")
    parser.add_argument("--folds", metavar="LIST", help="with --cv: the folds to run, e.g. 1,2,3 (default all)")
    parser.set_defaults(func=run)


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prepare`` subcommand (sets ``func=run_prepare``)."""
    parser = subparsers.add_parser(
        "prepare",
        help="extract audio and frames from videos, or write WebDataset shards",
        description="Prepare data for training. 'extract': audio (44.1 kHz FLAC) and the paper's ten equally "
        "spaced frames from video files. 'shards': a config's splits as WebDataset shards for streaming.",
    )
    _fill_prepare(parser)
    return parser


def _fill_prepare(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = sub.add_parser("extract", help="videos -> OUT/clips/<name>.flac and OUT/frames/<name>/00..09.jpg")
    ex.add_argument("source", help="folder of video files (searched recursively)")
    ex.add_argument("out", help="output folder")
    ex.add_argument("--frames", type=int, default=10, help="equally spaced frames per video (default 10)")
    ex.add_argument("--frame-size", type=int, default=224, help="frame side in pixels (default 224)")
    ex.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    ex.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sh = sub.add_parser("shards", help="a config's train/val/test splits -> WebDataset shards + manifest.json")
    _add_config_options(sh)
    sh.add_argument("out", help="output folder for the shards")
    sh.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    sh.add_argument("--format", choices=["flac", "npy"], default="flac",
                    help="audio in the shards: 16-bit FLAC (default) or float32 .npy")
    sh.add_argument("--frames", type=int, default=0, help="store up to this many frames per clip (default 0)")
    sh.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_prepare)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add both ``train`` and ``prepare``."""
    add_parser(subparsers)
    add_prepare_parser(subparsers)


# -- running -------------------------------------------------------------------


def _config_from_args(args: argparse.Namespace) -> dict:
    from .config import ConfigError, load_config

    if not args.config:
        raise ConfigError("--config is required (a bundled name from --list-configs, or a YAML file)")
    overrides = list(args.overrides)
    flags = {
        "data_root": "data.root", "test_fold": "data.test_fold", "output": "output.dir", "epochs": "train.epochs",
        "batch_size": "train.batch_size", "lr": "optim.lr", "gamma": "sched.gamma", "workers": "train.num_workers",
        "seed": "train.seed", "device": "train.device", "amp": "train.amp", "weights": "model.weights",
    }
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.select_on_test:
        overrides.append("data.validation={kind: test}")
    cfg = load_config(args.config)
    if args.original_conventions:
        dataset = cfg["data"]["dataset"]
        if dataset not in _ORIGINAL_CONVENTIONS:
            raise ConfigError(f"--original-conventions: the original code had no loader for {dataset!r}")
        overrides = _ORIGINAL_CONVENTIONS[dataset] + overrides
    return load_config(args.config, overrides)


def _list_configs() -> int:
    from .config import list_configs, load_config

    for name in list_configs():
        text = " ".join(load_config(name)["description"].split())
        print(f"{name:22s} {text.split('. ')[0].rstrip('.')}")
    return 0


def _errors():
    from ..checkpoints import CheckpointError
    from ..media import MediaError
    from .config import ConfigError

    return (ConfigError, CheckpointError, MediaError, FileNotFoundError, ValueError)


def run(args: argparse.Namespace) -> int:
    """Run ``train``; returns the exit status."""
    if args.list_configs:
        return _list_configs()
    try:
        cfg = _config_from_args(args)
    except _errors() as e:
        print(f"audioclip train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from .config import dump

        print(dump(cfg), end="")
        return 0

    from .cv import run_cross_validation
    from .distributed import setup_distributed
    from .engine import Trainer

    dist = setup_distributed(cfg["train"]["device"])
    try:
        if args.cv:
            folds = [int(x) for x in args.folds.split(",")] if args.folds else None
            run_cross_validation(cfg, dist, folds=folds, resume=bool(args.resume))
        else:
            Trainer(cfg, dist=dist, resume=args.resume).run()
    except _errors() as e:
        print(f"audioclip train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("audioclip train: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        dist.close()
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``prepare``; returns the exit status."""
    import json

    from .prepare import extract_videos, prepare_shards

    try:
        if args.action == "extract":
            report = extract_videos(args.source, args.out, num_frames=args.frames, frame_size=args.frame_size,
                                    workers=args.workers, progress=not args.quiet)
            for line in report["bad"]:
                print(f"skipped: {line}", file=sys.stderr)
            print(f"extracted {report['extracted']} of {report['videos']} videos into {args.out}")
            return 0 if report["extracted"] else 1
        if args.list_configs:
            return _list_configs()
        cfg = _config_from_args(args)
        manifest = prepare_shards(cfg, args.out, max_count=args.max_count, audio_format=args.format,
                                  frames=args.frames, progress=not args.quiet)
        for split, entry in manifest["splits"].items():
            for line in entry["bad"]:
                print(f"skipped: {line}", file=sys.stderr)
            print(f"{split}: {entry['count']} clips in {len(entry['shards'])} shards")
        print(json.dumps({"manifest": str(args.out) + "/manifest.json"}))
        return 0
    except _errors() as e:
        print(f"audioclip prepare: error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audioclip.train",
                                     description="AudioCLIP training (train is the default command).")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "prepare", "-h", "--help"):
        argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    return args.func(args)
