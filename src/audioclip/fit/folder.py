"""What a head folder written by ``fit`` holds, and the check that a folder ``fit`` would replace holds nothing else.

``fit`` replaces its output folder whole (:func:`audioclip.heads.head.replace_folder`): whatever else was in it
would be gone. So a folder that holds anything but a head's files is refused before anything is written. This
module imports the standard library only (the command line checks ``-o`` before torch is imported).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFUSION_NAME", "EMBEDDINGS_NAME", "HEAD_FOLDER_FILES", "REPORT_NAME", "head_folder_problem", "stray_entry"]

#: the embed output kept inside a head folder (reused by the next fit there)
EMBEDDINGS_NAME = "embeddings.parquet"
REPORT_NAME = "report.json"
CONFUSION_NAME = "confusion.png"
#: the files of a head folder: the head's two (``heads.head.HEAD_JSON``, ``HEAD_WEIGHTS``) and what fit adds
HEAD_FOLDER_FILES = ("head.json", "head.safetensors", REPORT_NAME, CONFUSION_NAME, EMBEDDINGS_NAME)
# The embed output's side files, while it is written or after a run cut short
# (audioclip.embeddings_io: parts_folder, output_lock): OUT.parts/ and .OUT.lock.
_SIDE_NAMES = (f"{EMBEDDINGS_NAME}.parts", f".{EMBEDDINGS_NAME}.lock")


def _is_head_entry(name: str) -> bool:
    if name in HEAD_FOLDER_FILES or name in _SIDE_NAMES:
        return True
    # an atomic write's temporary file left by a process that was killed (audioclip.io: ``.NAME.XXXX.tmp``)
    return name.endswith(".tmp") and any(name.startswith(f".{known}.") for known in HEAD_FOLDER_FILES)


def stray_entry(folder: str | os.PathLike) -> str | None:
    """The name of an entry of ``folder`` that is no part of a head folder (the first in name order), else None.

    None as well where ``folder`` does not exist or is not a folder (for the caller to judge); a folder that
    cannot be listed is an :class:`OSError` (what it holds is unknown, so it must not be replaced).
    """
    path = Path(folder)
    if not path.is_dir():
        return None
    names = sorted(os.listdir(path))
    return next((name for name in names if not _is_head_entry(name)), None)


def head_folder_problem(out: str | os.PathLike) -> str | None:
    """Why ``out`` cannot be a head folder (``"OUT: ..."``), or None: it is new, or holds only a head's files.

    ``fit`` replaces the folder whole, so a folder holding anything else of the user's is refused.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        return f"{out}: exists and is not a folder"
    stray = stray_entry(path)
    if stray is not None:
        return (f"{out}: holds {stray!r}, which is not part of a head folder (fit replaces the folder whole); "
                "give a new folder or a head folder")
    return None
