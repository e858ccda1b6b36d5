"""Exit statuses, messages and running a command: how every ``audioclip`` command reports.

- Exit statuses: 0 done, 1 nothing could be processed (or an error), 2 usage
  error, 3 some inputs failed; 130 interrupted. :func:`exit_status` picks one
  from the counts of a batch.
- :class:`UsageError` and :func:`usage_line`: every usage error has one shape,
  ``audioclip CMD: error: ... (see audioclip CMD --help)``, exit status 2.
- Messages on stderr: :func:`error` (one line), :func:`note` (not with
  ``--quiet``), :func:`verbose` (with ``--verbose``), :func:`progress_bar`.
- :func:`run`: runs a parsed command and turns what it raises into an exit
  status. Any :class:`audioclip.errors.AudioclipError` or :class:`OSError` is
  one line, ``audioclip CMD: error: ...``; an output locked by another job
  (:class:`audioclip.io.LockedError`) is a usage error (2), its holder named;
  anything else is one line with its type, and ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from audioclip.errors import AudioclipError
from audioclip.io import LockedError

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_NOTHING_DONE",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "STATUS_EPILOG",
    "UsageError",
    "error",
    "exit_status",
    "note",
    "progress_bar",
    "run",
    "usage_line",
    "verbose",
]


# -- exit statuses ------------------------------------------------------------------------------

EXIT_OK, EXIT_NOTHING_DONE, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

STATUS_EPILOG = (
    "exit status: 0 done (every input processed); 1 nothing could be processed, or an error; "
    "2 usage error (or the output is being written by another job, named); 3 some inputs failed (each is reported on stderr); "
    "130 interrupted (Ctrl-C)"
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


# -- running a command --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: Callable[[argparse.Namespace], int | None] | None = None) -> int:
    """Run ``command(args)`` (default: ``args.func(args)``) and return its exit status, reporting errors and
    warnings as one line each."""
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
        return _run(args, command or args.func)
    finally:
        warnings.showwarning = shown
        if errors == "strict" and hasattr(stdout, "reconfigure"):
            stdout.reconfigure(errors=errors)


def _run(args: argparse.Namespace, command: Callable[[argparse.Namespace], int | None]) -> int:
    try:
        status = command(args)
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
        if isinstance(err, (AudioclipError, OSError)):  # the package's own errors, files: the message says it all
            error(args, err)
        else:
            hint = "" if getattr(args, "debug", False) else " (--debug shows the traceback)"
            error(args, f"{type(err).__name__}: {_one_line(err)}{hint}")
        return EXIT_NOTHING_DONE
