"""Decoding processes: how many to start, and that none outlives the job that started it.

Used by every job that decodes in DataLoader workers (embedding, evaluation,
training, shard preparation); re-exported by :mod:`audioclip.inference`.
"""

from __future__ import annotations

import os

__all__ = ["MAX_WORKERS", "cpu_count", "decoding_workers", "die_with_parent"]


#: the most decoding processes one job may ask for (``--workers``); fewer start when there are fewer CPUs or files
MAX_WORKERS = 64


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def decoding_workers(requested: int, files: int) -> int:
    """The decoding processes to start for ``files`` files: ``requested``, but never more than the files or CPUs.

    ``requested`` above :data:`MAX_WORKERS` is a ValueError (the command line refuses it as a usage error):
    each worker is a process with its own copy of the decoders, hundreds of megabytes.
    """
    if not 0 <= requested <= MAX_WORKERS:
        raise ValueError(f"workers must be 0 to {MAX_WORKERS}, got {requested}")
    return min(requested, files, cpu_count())


def die_with_parent(parent: int) -> None:
    """Make this process (a decoding worker) end when the process ``parent`` does, however it ends (``kill -9``).

    On Linux the kernel kills the worker the moment its parent exits
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): a worker deep in a decoder's C code
    cannot notice anything itself, and it holds nothing that needs a clean exit
    (the parent writes every output). ``parent`` is the job's process; the
    worker's own parent may be a fork server between them, which exits with
    the job. (For the kernel the parent is the thread that started the worker:
    a DataLoader starts its workers in the thread that iterates it, which
    outlives them.) Elsewhere, or if ``prctl`` is unavailable, a daemon thread checks
    every second that ``parent`` still exists and ends the worker if not.
    Either way a worker started after its parent already died ends at once.
    """
    import signal
    import sys

    def gone() -> bool:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # the number now belongs to another user's process
            return True
        return False

    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if gone():  # it died before the signal was armed: nobody will read what this worker decodes
        os._exit(0)
    if armed:
        return
    import threading
    import time

    def watch() -> None:
        while not gone():
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="audioclip-parent-watch", daemon=True).start()
