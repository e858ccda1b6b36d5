"""The one error of :mod:`audioclip.checkpoints`: a one-line message that names the file or URL."""

from __future__ import annotations

from ..errors import AudioclipError

__all__ = ["CheckpointError"]


class CheckpointError(AudioclipError):
    """A checkpoint could not be found, downloaded, verified, read or matched."""
