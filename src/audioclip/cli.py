"""The ``audioclip`` command line.

Each subcommand is a ``register`` function that adds its parser and sets
``func``; add new ones to :data:`COMMANDS`. Heavy modules (torch, the model)
are imported inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("audioclip")
    except metadata.PackageNotFoundError:
        return "unknown"


def _error(message: object) -> None:
    print(f"audioclip: error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------
# audioclip checkpoints
# --------------------------------------------------------------------------


def _run_checkpoints(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    folder = checkpoints.cache_dir(args.cache_dir)
    rows = [("NAME", "FILE", "SIZE (MB)", "CACHED", "KIND")]
    for name, weights in checkpoints.REGISTRY.items():
        cached = checkpoints.cached_path(weights, folder) is not None
        size_mb = f"{weights.size / 1e6:.1f}"
        rows.append((name, weights.filename, size_mb, "yes" if cached else "no", weights.kind))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache folder: {folder}")
    return 0


def _register_checkpoints(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the known pretrained checkpoints")
    parser.add_argument("--cache-dir", help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    parser.set_defaults(func=_run_checkpoints)


# --------------------------------------------------------------------------
# audioclip download
# --------------------------------------------------------------------------


def _run_download(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    status = 0
    for name in args.names:
        try:
            path, _ = checkpoints.resolve(
                name, cache_dir=args.cache_dir, progress=not args.quiet, verify=True
            )
        except checkpoints.CheckpointError as e:
            # report it and go on with the other names
            _error(e)
            status = 1
        else:
            print(path)
    return status


def _register_download(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download checkpoints into the cache and verify them",
        description="Download named checkpoints into the cache folder (verifying their sha256) "
        "and print their paths. Already cached files are verified again.",
    )
    parser.add_argument(
        "names", nargs="+", metavar="NAME", help="checkpoint name (see 'audioclip checkpoints')"
    )
    parser.add_argument("--cache-dir", help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_download)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_checkpoints,
    _register_download,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioclip", description="AudioCLIP: text, image and audio in one embedding space."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2

    from audioclip.checkpoints import CheckpointError

    try:
        return args.func(args)
    except CheckpointError as e:
        _error(e)
        return 1
    except KeyboardInterrupt:
        print("audioclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
