"""The base of every error this package raises on purpose.

An :class:`AudioclipError`'s message is the whole story (a file and what is
wrong with it, a setting out of range): the command line prints it as one line,
where any other exception is a bug and is reported with its type. Each subclass
also derives from the built-in error it refines (``ValueError``, ``OSError``,
...), so ``except ValueError`` written against earlier versions still catches it.
"""

from __future__ import annotations

__all__ = ["AudioclipError"]


class AudioclipError(Exception):
    """An error of this package with a one-line message meant for the user."""
