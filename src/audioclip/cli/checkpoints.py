"""``audioclip checkpoints`` (the registered weights, and whether they are cached) and ``audioclip download``."""

from __future__ import annotations

import argparse

from .options import add_logging_options, set_command
from .report import EXIT_NOTHING_DONE, EXIT_OK, UsageError, error

__all__ = ["register_checkpoints", "register_download"]


def _run_checkpoints(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    folder = checkpoints.cache_dir(args.cache_dir)
    rows = [("NAME", "FILE", "SIZE (MB)", "CACHED", "KIND")]
    for name, weights in checkpoints.REGISTRY.items():
        cached = checkpoints.cached_path(weights, folder) is not None
        rows.append((name, weights.filename, f"{weights.size / 1e6:.1f}", "yes" if cached else "no", weights.kind))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache folder: {folder}")
    return EXIT_OK


def register_checkpoints(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the known pretrained checkpoints",
                                   description="List the registered weights and whether they are in the cache.")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    add_logging_options(parser)
    set_command(parser, _run_checkpoints, quick_exit=True)


def _run_download(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    if any(not name.strip() for name in args.names):
        raise UsageError("an empty checkpoint name was given (see 'audioclip checkpoints' for the names)")
    status = EXIT_OK
    for name in args.names:
        try:
            path, _ = checkpoints.resolve(name, cache_dir=args.cache_dir, progress=not args.quiet, verify=True,
                                          offline=args.offline)
        except checkpoints.CheckpointError as err:
            error(args, err)  # report it and go on with the other names
            status = EXIT_NOTHING_DONE
        else:
            print(path)
    return status


def register_download(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download", help="download checkpoints into the cache and verify them",
        description="Download named checkpoints into the cache folder (verifying their sha256) "
        "and print their paths. Already cached files are verified again.",
        epilog="exit status: 0 every name downloaded and verified; 1 a name is unknown or could not be downloaded "
        "(each is reported; the others are still downloaded); 2 usage error")
    parser.add_argument("names", nargs="+", metavar="NAME", help="checkpoint name (see 'audioclip checkpoints')")
    parser.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    parser.add_argument("--offline", action="store_true", default=None, help="only verify what is cached")
    add_logging_options(parser)
    set_command(parser, _run_download, quick_exit=True)
