"""The options every ``audioclip`` command shares: the parser, argument types and option groups.

- :class:`ArgumentParser`: argparse's own usage errors (``-k abc``) have the
  one shape of :func:`audioclip.cli.report.usage_line`, exit status 2.
- Argument types (:func:`positive_int`, :func:`seconds`, :func:`port`,
  :func:`device`, ...): a bad value is a usage error naming the option.
- Option groups: :func:`add_model_options` (``--checkpoint``, ``--device``,
  ``--audio-mode``, ``--precision``, ``--cache-dir``, ``--offline``),
  :func:`add_output_options` (``-o/--output``, ``--overwrite``) and
  :func:`add_logging_options` (``-q``, ``-v``, ``--debug``): the same names,
  defaults and meanings wherever they appear. :func:`set_command` names the
  function that runs a command.

Nothing here imports torch: building the parser stays fast.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

from .report import EXIT_USAGE, usage_line

__all__ = [
    "AUDIO_MODES",
    "MAX_WORKERS",
    "PRECISIONS",
    "ArgumentParser",
    "add_batch_options",
    "add_logging_options",
    "add_model_options",
    "add_output_options",
    "device",
    "non_negative_float",
    "non_negative_int",
    "port",
    "positive_float",
    "positive_int",
    "seconds",
    "set_command",
    "shard",
    "worker_count",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose own usage errors (a bad number, an unknown choice, a missing option) have the
    same one-line shape as the command line's checks (:func:`usage_line`), exit status 2, instead of the usage
    block. Sub-commands made with ``add_subparsers`` are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, usage_line(self.prog, message) + "\n")


# -- values offered on the command line ------------------------------------------------------------

#: ``--audio-mode`` choices: :data:`audioclip.model.transforms.AUDIO_MODES` without ``int8``,
#: which needs calibration waveforms (Python API only). Spelled out so that building the
#: parser imports no torch; a test checks they agree.
AUDIO_MODES = ("default", "fused", "bf16", "plain", "spectrum64")
PRECISIONS = ("fp32", "bf16", "fp16")


# -- argument types ----------------------------------------------------------------------------


#: the largest count any option takes (counts go to C code as 32-bit ints: more overflows there)
MAX_COUNT = 2**31 - 1


def positive_int(text: str) -> int:
    return _count(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _count(text, 0, "0 or more")


def _count(text: str, minimum: int, wording: str) -> int:
    value = _number(int, text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {wording}, got {value}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT}, got {text}")
    return value


#: ``--workers`` at most: :data:`audioclip.inference.MAX_WORKERS`, spelled out so that parsing imports no torch
MAX_WORKERS = 64


def worker_count(text: str) -> int:
    """``--workers``: 0 to :data:`MAX_WORKERS` decoding processes (fewer start when there are fewer CPUs or files)."""
    value = _number(int, text)
    if not 0 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_WORKERS} (decoding processes; fewer start when there "
                                         f"are fewer CPUs or files), got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def port(text: str) -> int:
    value = _number(int, text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {value}")
    return value


def shard(text: str) -> tuple[int, int]:
    """``K/N`` (1-based) -> ``(K - 1, N)``."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N like 1/4, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"need 1 <= K <= N, got {text!r}")
    if n > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"N must be at most {MAX_COUNT}, got {text!r}")
    return k - 1, n


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether the GPU exists is checked later: :func:`check_device`)."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda"):
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None
    if kind is float and math.isinf(value):  # a NaN fails every range check after this
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def number_in(kind, low, high, wording: str):
    """An argument type: a ``kind`` (int or float) from ``low`` to ``high``; out of range: ``must be {wording}``."""
    def parse(text: str):
        value = _number(kind, text)
        if not low <= value <= high:  # a NaN fails here too
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text}")
        return value

    return parse


MAX_SECONDS = 86_400.0  # a window or hop longer than the longest file decoded (a day) means nothing


MIN_SECONDS = 0.01  # 441 samples at 44.1 kHz; a shorter hop only multiplies the work (a day: 8.6 M windows)


def seconds(text: str) -> float:
    """A duration in seconds from :data:`MIN_SECONDS` to :data:`MAX_SECONDS` (``--window``, ``--hop``)."""
    value = positive_float(text)
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be {MIN_SECONDS:g} to {MAX_SECONDS:g} seconds, got {text}")
    return value


# -- option groups -----------------------------------------------------------------------------


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    checkpoint_default: str | None = "full",
    checkpoint_help: str | None = None,
    title: str = "model",
    precision: bool = True,
    audio_mode: bool = True,
    cache: bool = True,
) -> argparse._ArgumentGroup:
    """``--checkpoint``, ``--device``, ``--audio-mode``, ``--precision``, ``--cache-dir``, ``--offline``.

    ``checkpoint_default=None`` where the default comes from elsewhere (an
    index's own checkpoint, a training config's starting weights).
    """
    group = parser.add_argument_group(title)
    group.add_argument(
        "--checkpoint", default=checkpoint_default, metavar="NAME|PATH",
        help=checkpoint_help or "registered weights (see 'audioclip checkpoints'), an architecture (random "
        f"weights) or a checkpoint file, whose architecture is recognised from it (default: {checkpoint_default})")
    group.add_argument(
        "--device", default="auto", type=device, metavar="DEVICE",
        help="auto (default: cuda if available, else cpu), cpu, cuda or cuda:N")
    if audio_mode:
        group.add_argument(
            "--audio-mode", default="default", choices=AUDIO_MODES,
            help="how the audio head computes (docs/performance.md): default (exact to float32 rounding), "
            "fused (BatchNorm folded, float32, within the equivalence tolerances), bf16 (bfloat16 trunk: fast "
            "on GPUs and CPUs with AMX/AVX512-BF16, less exact), plain (the original's computation, slow), "
            "spectrum64 (the front end's spectrum in float64: a clip's vector varies far less between CPUs; "
            "close to default, not equal); int8 is in the Python API (it needs "
            "calibration clips)")
    if precision:
        group.add_argument("--precision", default="fp32", choices=PRECISIONS,
                           help="fp32 (default) is exact; bf16/fp16 are faster on a GPU")
    if cache:
        group.add_argument("--cache-dir", metavar="DIR",
                           help="checkpoint cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
        group.add_argument("--offline", action="store_true", default=None,
                           help="never download (also: AUDIOCLIP_OFFLINE=1)")
    return group


def add_output_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    metavar: str = "FILE",
    help: str,
    overwrite_help: str = "replace an existing output (default: refuse it)",
) -> argparse._ArgumentGroup:
    """``-o/--output`` and ``--overwrite``."""
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--output", required=required, metavar=metavar, help=help)
    group.add_argument("--overwrite", action="store_true", help=overwrite_help)
    return group


def add_batch_options(group: argparse._ArgumentGroup) -> None:
    """``--batch-size`` (model batch, default 16) and ``--workers`` (decoding processes, default 0) of a command
    that decodes files and runs the model on them."""
    group.add_argument("--batch-size", type=positive_int, default=16, help="model batch size (default: 16)")
    group.add_argument("--workers", type=worker_count, default=0,
                       help=f"decoding processes, 0 to {MAX_WORKERS} (default: 0, decode in the main process; at most "
                       "one per CPU and per file start)")


def add_logging_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``-q/--quiet``, ``-v/--verbose``, ``--debug``."""
    group = parser.add_argument_group("messages")
    both = group.add_mutually_exclusive_group()
    both.add_argument("-q", "--quiet", action="store_true",
                      help="only results and errors: no progress bars, notes or summaries")
    both.add_argument("-v", "--verbose", action="store_true", help="also say what is loaded and how long it took")
    group.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return group


def set_command(parser: argparse.ArgumentParser, func, **defaults) -> None:
    """``func(args) -> int`` runs the command; ``args.prog`` names it in messages."""
    defaults.setdefault("prog", parser.prog)
    parser.set_defaults(func=func, **defaults)
