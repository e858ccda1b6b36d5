"""The ``audioclip`` command line: every subcommand is registered here, in :data:`COMMANDS`.

- :mod:`.options`: the shared option groups (model, output, messages), argument
  types, the checks made before a model is loaded, exit statuses and error
  reporting;
- :mod:`.inference`: ``classify``, ``embed``, ``similarity``, ``checkpoints``, ``download``;
- :mod:`.index`: ``index``, ``search``, ``serve``;
- :mod:`.export`: ``convert`` (.pt <-> .safetensors), ``export hub|onnx``;
- :mod:`.evaluate`: ``evaluate``;
- :mod:`.train`: ``train``, ``prepare``.

The command line is the top layer: it imports the rest of the package, nothing
below imports it. Building the parser imports neither torch nor the model;
each command imports what it needs after checking its arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import detect, evaluate, export, index, inference, listen, train
from .options import EXIT_USAGE, ArgumentParser, run, usage_line

__all__ = ["COMMANDS", "build_parser", "main"]

#: ``register(subparsers)`` of every subcommand, in the order ``audioclip --help`` lists them
COMMANDS: list[Callable[[argparse._SubParsersAction], object]] = [
    inference.register_checkpoints,
    inference.register_download,
    inference.register_classify,
    inference.register_embed,
    inference.register_similarity,
    detect.register_detect,
    listen.register_listen,
    export.register_convert,
    export.register_export,
    index.register_index,
    index.register_search,
    index.register_serve,
    evaluate.register_evaluate,
    train.register_train,
    train.register_prepare,
]



class _VersionAction(argparse.Action):
    """``--version``, reading the installed version only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from audioclip.util import package_version

        print(f"audioclip {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="audioclip", description="AudioCLIP: text, image and audio in one embedding space.",
        epilog="exit status of every command: 0 done; 1 nothing could be processed, or an error; 2 usage error, or "
        "an output or index that another job is writing; 3 some inputs failed. 'audioclip COMMAND --help' documents each.")
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status.

    Called as the program (``argv=None``: the ``audioclip`` script, ``python -m
    audioclip``), a command that has closed all its outputs lets the process
    exit without the cyclic garbage collector walking every object torch and
    the model made: ``gc.freeze()`` saves about a second of interpreter
    shutdown on 2 cores. Called with an ``argv`` (tests, other programs), it
    leaves the interpreter alone.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)  # argparse's own usage errors exit with status 2
    if unknown:  # named after the command they were given to, not after "audioclip"
        parser.exit(EXIT_USAGE, usage_line(getattr(args, "prog", parser.prog),
                                           f"unrecognized arguments: {' '.join(unknown)}") + "\n")
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    status = run(args)
    if argv is None and getattr(args, "quick_exit", False):
        import gc

        gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(main())
