"""The ``audioclip`` command line: every subcommand is registered here, in :data:`COMMANDS`.

- :mod:`.options`: the parser, argument types and the shared option groups
  (model, output, messages);
- :mod:`.checks`: the checks made before a model is loaded, and the optional
  dependencies (extras) a command needs;
- :mod:`.report`: exit statuses, messages, and :func:`~.report.run`, which
  turns what a command raises into one line and an exit status;
- :mod:`.startup`: open_clip's model code without its package ``__init__``;
- :mod:`.model`: the model, backend and input options of the commands that
  run the model on files, and loading that model;
- :mod:`.checkpoints`: ``checkpoints``, ``download``;
- :mod:`.classify`, :mod:`.embed`, :mod:`.similarity`: those commands;
- :mod:`.index`: ``index``, ``search``; :mod:`.serve`: ``serve``;
- :mod:`.export`: ``convert`` (.pt <-> .safetensors), ``export hub|onnx``;
- :mod:`.evaluate`: ``evaluate``;
- :mod:`.detect`: ``detect``; :mod:`.fit`: ``fit``;
- :mod:`.train`: ``train``, ``prepare``.

The command line is the top layer: it imports the rest of the package, nothing
below imports it. Building the parser imports neither torch nor the model;
each command imports what it needs after checking its arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import checkpoints, classify, detect, embed, evaluate, export, fit, index, listen, serve, similarity, train
from .checks import require_extra
from .options import ArgumentParser
from .report import EXIT_USAGE, run, usage_line

__all__ = ["COMMANDS", "build_parser", "main"]

#: ``register(subparsers)`` of every subcommand, in the order ``audioclip --help`` lists them
COMMANDS: list[Callable[[argparse._SubParsersAction], object]] = [
    checkpoints.register_checkpoints,
    checkpoints.register_download,
    classify.register_classify,
    embed.register_embed,
    similarity.register_similarity,
    detect.register_detect,
    listen.register_listen,
    export.register_convert,
    export.register_export,
    index.register_index,
    index.register_search,
    serve.register_serve,
    evaluate.register_evaluate,
    fit.register_fit,
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
    status = run(args, _run_command)
    if argv is None and getattr(args, "quick_exit", False):
        import gc

        gc.freeze()
    return status


def _run_command(args: argparse.Namespace) -> int | None:
    """The command's optional dependencies (a usage error naming the ``pip install`` line), then the command."""
    for extra, modules in getattr(args, "extras", ()):
        require_extra(extra, modules)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
