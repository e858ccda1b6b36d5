"""What every ``audioclip`` command shares: option groups, argument types, checks, exit codes, errors.

- Option groups: :func:`add_model_options` (``--checkpoint``, ``--device``,
  ``--audio-mode``, ``--precision``, ``--cache-dir``, ``--offline``),
  :func:`add_output_options` (``-o/--output``, ``--overwrite``) and
  :func:`add_logging_options` (``-q``, ``-v``, ``--debug``): the same names,
  defaults and meanings wherever they appear.
- Checks made before a model is loaded (and, except for a CUDA device, before
  torch is imported): :func:`check_checkpoint`, :func:`check_device`,
  :func:`check_inputs`, :func:`check_templates`, :func:`read_list_file`,
  :func:`check_output_file`, :func:`check_output_dir`. They raise
  :class:`UsageError`.
- :func:`require_extra`: a command whose optional dependencies are missing
  stops with the ``pip install "audioclip[...]"`` line to run.
- :func:`run`: runs a parsed command and turns what it raises into exit
  statuses: 0 done, 1 nothing could be processed (or an error), 2 usage error,
  3 some inputs failed; 130 interrupted. An output locked by another job
  (:class:`audioclip.io.LockedError`) is a usage error (2), its holder named. Errors are one line,
  ``audioclip CMD: error: ...``; ``--debug`` adds the traceback.
- :class:`ArgumentParser`: every usage error, argparse's own (``-k abc``) and the
  checks' (:class:`UsageError`), has one shape, :func:`usage_line`:
  ``audioclip CMD: error: ... (see audioclip CMD --help)``, exit status 2.

Nothing here imports torch at module level: building the parser and the
checks that need no model stay fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import traceback
import types
from collections.abc import Iterable, Sequence
from typing import NoReturn
from pathlib import Path

from audioclip.io import FileReadError, LockedError, read_text_bounded
from ..errors import AudioclipError

__all__ = [
    "AUDIO_MODES",
    "ArgumentParser",
    "EXIT_INTERRUPTED",
    "EXIT_NOTHING_DONE",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "EXTRAS",
    "PRECISIONS",
    "STATUS_EPILOG",
    "UsageError",
    "add_logging_options",
    "add_model_options",
    "add_output_options",
    "check_cached",
    "check_checkpoint",
    "check_device",
    "check_inputs",
    "check_list_file",
    "check_output_dir",
    "check_output_file",
    "check_templates",
    "error",
    "exit_status",
    "light_open_clip",
    "note",
    "prefetch_checkpoint",
    "progress_bar",
    "read_list_file",
    "require_extra",
    "run",
    "usage_line",
    "verbose",
]

# -- exit statuses ------------------------------------------------------------------------------

EXIT_OK, EXIT_NOTHING_DONE, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

STATUS_EPILOG = (
    "exit status: 0 done (every input processed); 1 nothing could be processed, or an error; "
    "2 usage error (or the output is being written by another job, named); 3 some inputs failed (each is reported on stderr)"
)


def exit_status(done: int, failed: int) -> int:
    """0 when everything was processed, 3 when some inputs failed, 1 when none could be processed."""
    if done == 0:
        return EXIT_NOTHING_DONE
    return EXIT_SOME_FAILED if failed else EXIT_OK


class UsageError(AudioclipError, ValueError):
    """A command-line mistake found after parsing: reported as one line, exit status 2."""


def usage_line(prog: str, message: object) -> str:
    """The one shape of every usage error: ``audioclip CMD: error: MESSAGE (see audioclip CMD --help)``."""
    return f"{prog}: error: {_one_line(message)} (see {prog} --help)"


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

#: extra -> the modules it provides that its commands cannot run without
EXTRAS: dict[str, tuple[str, ...]] = {
    "index": ("lancedb",),
    "train": ("yaml", "webdataset", "torchmetrics"),
    "eval": ("torchmetrics", "matplotlib"),
    "ray": ("ray",),
}


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


# -- messages -----------------------------------------------------------------------------------


def _prog(args: argparse.Namespace | None) -> str:
    return getattr(args, "prog", None) or "audioclip"


def _one_line(message: object) -> str:
    return " ".join(str(message).split()) or "(no message)"


def error(args: argparse.Namespace | None, message: object) -> None:
    """``audioclip CMD: error: MESSAGE`` on stderr, one line."""
    print(f"{_prog(args)}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def note(args: argparse.Namespace, message: str) -> None:
    """A message on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def verbose(args: argparse.Namespace, message: str) -> None:
    """A message on stderr with ``--verbose`` or ``--debug``."""
    if getattr(args, "verbose", False) or getattr(args, "debug", False):
        print(f"{_prog(args)}: {message}", file=sys.stderr, flush=True)


def progress_bar(args: argparse.Namespace, total: int, unit: str = "file"):
    """A tqdm bar on stderr: shown on a terminal, never with ``--quiet``."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr,
                disable=True if getattr(args, "quiet", False) else None)


# -- checks made before anything heavy ------------------------------------------------------------------


def check_checkpoint(name: str | os.PathLike, *, option: str = "--checkpoint") -> str:
    """What ``name`` is for :func:`audioclip.factory.create_model`: ``"architecture"``, ``"registry"``,
    ``"file"``, ``"folder"`` (a Hub-style model folder) or ``"hub"`` (``hf-hub:ORG/NAME``).

    :func:`audioclip.factory.describe_source`'s answer (told without importing
    torch or downloading); a usage error if ``name`` is none of them.
    """
    from audioclip.checkpoints import CheckpointError
    from audioclip.factory import describe_source

    if not os.fspath(name).strip():
        raise UsageError(f"{option}: an empty name was given (a checkpoint name, file or folder)")
    try:
        return describe_source(name).kind
    except CheckpointError as err:
        raise UsageError(f"{option} {os.fspath(name)}: {_without_name(str(err), os.fspath(name))}") from None


def _without_name(message: str, name: str) -> str:
    for prefix in (f"{name!r} is ", f"{name}: "):
        if message.startswith(prefix):
            return message[len(prefix):] if prefix.endswith(": ") else "is " + message[len(prefix):]
    return message


def check_cached(name: str | os.PathLike, *, cache_dir=None, offline=None) -> None:
    """Registered weights that are neither cached nor downloadable (offline): the load's error, now (exit 1).

    Called after the usage checks: a missing download is not a usage error,
    but it is known before torch is imported.
    """
    from audioclip import checkpoints

    text = os.fspath(name)
    if not checkpoints.offline_mode(offline) or Path(text).expanduser().exists():
        return
    weights = checkpoints.lookup(text) or checkpoints.lookup_filename(text)
    if weights is not None and checkpoints.cached_path(weights, cache_dir) is None:
        checkpoints.resolve(text, cache_dir=cache_dir, offline=offline)  # offline: raises CheckpointError


def prefetch_checkpoint(name: str | os.PathLike, cache_dir=None) -> None:
    """Ask the kernel to start reading a local checkpoint file into the page cache, in the background.

    The file is then read while torch is being imported instead of after it
    (a cold 0.5 GB checkpoint costs seconds of disk reads otherwise). Costs
    nothing when the file is cached already, and is skipped where the
    platform has no ``posix_fadvise``.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    from audioclip import checkpoints

    text = os.fspath(name)
    path = Path(text).expanduser()
    if not path.is_file():
        weights = checkpoints.lookup(text) or checkpoints.lookup_filename(text)
        path = checkpoints.cached_path(weights, cache_dir) if weights is not None else None
    if path is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_device(name: str | None, option: str = "--device") -> None:
    """A CUDA device must exist (this imports torch, but loads no model); auto and cpu always do."""
    if name in (None, "auto", "cpu"):
        return
    from audioclip.factory import resolve_device

    try:
        resolve_device(name)
    except ValueError as err:
        raise UsageError(f"{option} {name}: {err}") from None


def check_inputs(paths: Iterable[str | os.PathLike], what: str = "input") -> None:
    """Every path exists (a file or a folder); an empty name is refused (``Path("")`` would be the current folder)."""
    paths = [os.fspath(p) for p in paths]
    if any(not p.strip() for p in paths):
        raise UsageError(f"{what}: an empty path was given")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"{what} not found: {missing[0]}{more}")


#: the most a list file (labels, templates, class names) may hold: 1 MB is tens of thousands of lines
MAX_LIST_BYTES = 1_000_000


def read_list_file(path: str | os.PathLike, what: str = "entries", *, max_bytes: int = MAX_LIST_BYTES) -> list[str]:
    """The non-empty lines of a UTF-8 text file, without ``#`` comments; a usage error if none or unreadable.

    Read with :func:`audioclip.io.read_text_bounded`: a regular file of at most
    ``max_bytes``; ``/dev/zero``, a FIFO or a folder is refused at once, in one
    line naming the file.
    """
    try:
        text = read_text_bounded(path, max_bytes, what=f"{what} file" if what != "entries" else "list file")
    except FileReadError as err:
        raise UsageError(str(err)) from None
    items = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not items:
        raise UsageError(f"{path}: no {what} (one per line expected)")
    return items


def check_list_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_LIST_BYTES) -> None:
    """A usage error unless ``path`` is a regular UTF-8 text file of at most ``max_bytes`` (read by a command later)."""
    try:
        read_text_bounded(path, max_bytes, what=what)
    except FileReadError as err:
        raise UsageError(str(err)) from None


def check_templates(templates: Sequence[str], source: str | None = None) -> list[str]:
    """Each template has exactly one bare ``{}`` (:func:`audioclip.prompts.check_template`)."""
    from audioclip.prompts import check_template

    for i, template in enumerate(templates):
        try:
            check_template(template)
        except ValueError as err:
            where = f"{source}, line {i + 1}: " if source else ""
            raise UsageError(f"{where}{err}") from None
    return list(templates)


def check_output_file(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    suffixes: Sequence[str] | None = None,
    resumable: bool = False,
) -> Path:
    """An output file: not a folder, an allowed suffix, and not an existing file unless allowed.

    ``resumable``: an existing output is continued (the command checks it is
    its own); ``overwrite`` lets the command start it over.
    """
    if not os.fspath(path).strip():
        raise UsageError("-o: an empty file name was given")
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"-o {path}: is a folder; give a file name"
                         + (f" ending in {', '.join(suffixes)}" if suffixes else ""))
    if suffixes is not None and out.suffix.lower() not in suffixes:
        got = f"'{out.suffix}'" if out.suffix else "no suffix"
        raise UsageError(f"-o {path}: {got}; the output is one of {', '.join(suffixes)} (or give --format)")
    if out.exists() and not (overwrite or resumable):
        raise UsageError(f"-o {path}: exists; --overwrite replaces it")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"-o {path}: {parent} is not a folder")
    return out


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, markers: Sequence[str] = (),
                     hint: str = "--overwrite replaces it") -> Path:
    """An output folder: not a file; refused when it holds one of ``markers`` (a finished output) unless ``overwrite``."""
    if not os.fspath(path).strip():
        raise UsageError("-o: an empty folder name was given")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {path}: exists and is not a folder")
    if not overwrite and out.is_dir():
        found = [m for m in markers if any(out.glob(m))]
        if found:
            raise UsageError(f"-o {path}: holds an earlier output ({found[0]}); {hint}")
    return out


# -- optional dependencies ------------------------------------------------------------------------------


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(extra: str, modules: Sequence[str] | None = None) -> None:
    """A usage error naming ``pip install "audioclip[extra]"`` unless the extra's modules are installed."""
    needed = EXTRAS[extra] if modules is None else modules
    missing = [m for m in needed if not _importable(m)]
    if missing:
        raise UsageError(f"this command needs the optional dependencies of audioclip[{extra}] "
                         f"({', '.join(missing)} missing): pip install \"audioclip[{extra}]\"")


# -- start-up --------------------------------------------------------------------------------------------


class _OnDemandPackage(types.ModuleType):
    """A package whose ``__init__`` runs only when a name it defines is first asked for.

    Its submodules import as usual (``import open_clip.model`` loads
    ``open_clip/model.py`` and what that imports, nothing else).
    """

    def __getattr__(self, name: str):
        state = self.__dict__
        if name.startswith("__") or state.get("_initialised"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        state["_initialised"] = True
        self.__spec__.loader.exec_module(self)  # the real __init__, into this module
        return getattr(self, name)


def light_open_clip() -> None:
    """Let the model import ``open_clip.model`` and ``open_clip.tokenizer`` without open_clip's whole package.

    ``import open_clip.model`` runs ``open_clip/__init__.py`` first, which
    imports every model family, the Hugging Face hub client and timm: about
    0.6-1 s of a command's start-up, for code AudioCLIP never runs (its text
    and image heads are open_clip's plain CLIP). Here the package's
    ``__init__`` is deferred until a name from it is used, and timm is left
    out of ``open_clip.model`` (open_clip treats it as optional: only timm
    towers need it). Done only by the command line, for its own process, and
    only when open_clip is not imported yet; a later ``import open_clip``
    still gets the whole package. Commands call it after their checks, just
    before they import the model (it imports torch).
    """
    if "open_clip" in sys.modules:
        return
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    package.__class__ = _OnDemandPackage
    sys.modules["open_clip"] = package
    blocked = "timm" not in sys.modules
    if blocked:
        sys.modules["timm"] = None  # type: ignore[assignment]  # "import timm" raises ImportError
    try:
        importlib.import_module("open_clip.model")
    except ImportError:  # an open_clip that needs timm after all: import it as it is
        for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
            del sys.modules[name]
    finally:
        if blocked:
            del sys.modules["timm"]


# -- running a command --------------------------------------------------------------------------------------


def _plain_error(err: BaseException) -> bool:
    """Errors whose message is the whole story: this package's own, files, media, checkpoints."""
    return isinstance(err, (AudioclipError, OSError))


def run(args: argparse.Namespace) -> int:
    """Run ``args.func(args)`` and return its exit status, reporting errors and warnings as one line each."""
    import warnings

    shown = warnings.showwarning
    if not getattr(args, "debug", False):  # a warning is one line too (no source line of the library)
        def one_line(message, category, filename, lineno, file=None, line=None):
            print(f"{_prog(args)}: warning: {_one_line(message)}", file=sys.stderr if file is None else file)

        warnings.showwarning = one_line
    # A file name that is not UTF-8 (its odd bytes are surrogates in Python) is printed with them as
    # escapes, as stderr always does, instead of failing the command with a UnicodeEncodeError.
    stdout, errors = sys.stdout, getattr(sys.stdout, "errors", None)
    if errors == "strict" and hasattr(stdout, "reconfigure"):
        stdout.reconfigure(errors="backslashreplace")
    try:
        return _run(args)
    finally:
        warnings.showwarning = shown
        if errors == "strict" and hasattr(stdout, "reconfigure"):
            stdout.reconfigure(errors=errors)


def _run(args: argparse.Namespace) -> int:
    try:
        for extra, modules in getattr(args, "extras", ()):
            require_extra(extra, modules)
        status = args.func(args)
        return EXIT_OK if status is None else int(status)
    except UsageError as err:
        print(usage_line(_prog(args), err), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except LockedError as err:  # another job writes the same output: nothing was done, try later
        error(args, err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        what = getattr(args, "on_interrupt", None)
        print(f"{_prog(args)}: interrupted" + (f" ({what})" if what else ""), file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 (the command line's last resort: one line, not a traceback)
        if getattr(args, "debug", False):
            traceback.print_exc(file=sys.stderr)
        if _plain_error(err):
            error(args, err)
        else:
            hint = "" if getattr(args, "debug", False) else " (--debug shows the traceback)"
            error(args, f"{type(err).__name__}: {_one_line(err)}{hint}")
        return EXIT_NOTHING_DONE
