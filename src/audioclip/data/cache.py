"""Decoded audio kept on disk, so that only the first epoch decodes.

Each file is decoded once with :func:`audioclip.media.load_audio` (all
channels, 44.1 kHz, float in [-1, 1]) and stored as ``<key>.npy`` under the
cache folder. The key hashes the file's absolute path, size and modification
time and the sample rate: editing or replacing a file makes a new entry, the
old one is simply never read again. Writes go through
:func:`audioclip.io.atomic_write`, so concurrent workers and ranks never see
half a file. A file that fails to decode leaves a ``<key>.bad`` note with the
reason, so it is not retried every epoch (delete the note, or touch the file,
to retry).

Nothing is held in memory: a 50 000-clip dataset costs disk space (about
176 kB per mono second as float32; ``dtype="float16"`` halves it), not RAM.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write, write_bytes_atomic
from ..media import MediaError, load_audio

__all__ = ["AudioCache", "default_cache_dir"]

_VERSION = "v1"


def default_cache_dir() -> Path:
    """``$AUDIOCLIP_CACHE/decoded-audio``, or the user cache's ``audioclip/decoded-audio``."""
    from ..checkpoints import cache_dir

    return Path(cache_dir()) / "decoded-audio"


class AudioCache:
    """``cache.load(path) -> float32 tensor (channels, samples)``, decoding at most once per file version.

    ``folder=None`` uses :func:`default_cache_dir`; ``enabled=False`` decodes every
    time (bad files are then still remembered for the life of this object).
    ``max_duration`` (seconds) limits how much of each file is decoded.
    """

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        sample_rate: int = 44100,
        enabled: bool = True,
        dtype: str = "float32",
        max_duration: float | None = None,
    ):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"cache dtype must be float32 or float16, got {dtype!r}")
        self.enabled = enabled
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.sample_rate = int(sample_rate)
        self.dtype = dtype
        self.max_duration = max_duration
        self.decoded = 0  # files decoded by this object (in this process)
        self._bad: dict[str, str] = {}

    def __getstate__(self):  # DataLoader workers get a copy; counters are per process
        return dict(self.__dict__)

    def key(self, path: str | os.PathLike) -> str:
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
            version = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            version = "missing"
        text = f"{_VERSION}|{path}|{version}|{self.sample_rate}|{self.max_duration}|{self.dtype}"
        return hashlib.sha1(text.encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        sub = self.folder / key[:2]
        return sub / f"{key}.npy", sub / f"{key}.bad"

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """The decoded file; raises :class:`MediaError` for a file that cannot be decoded."""
        path = str(path)
        if path in self._bad:
            raise MediaError(path, self._bad[path])
        if not self.enabled:
            return self._decode(path)
        key = self.key(path)
        npy, bad = self._paths(key)
        if npy.exists():
            try:
                array = np.load(npy, allow_pickle=False)
                return torch.from_numpy(np.asarray(array, dtype=np.float32))
            except (OSError, ValueError):
                pass  # unreadable entry (disk trouble): decode again and rewrite it
        if bad.exists():
            reason = bad.read_text().strip() or "could not be decoded"
            self._bad[path] = reason
            raise MediaError(path, reason)
        try:
            wave = self._decode(path)
        except MediaError as e:
            write_bytes_atomic(bad, e.reason.encode())
            raise
        with atomic_write(npy, "wb") as f:
            np.save(f, wave.numpy().astype(self.dtype), allow_pickle=False)
        return wave

    def _decode(self, path: str) -> torch.Tensor:
        try:
            wave = load_audio(path, sample_rate=self.sample_rate, mono=False, max_duration=self.max_duration)
        except MediaError as e:
            self._bad[path] = e.reason
            raise
        self.decoded += 1
        if self.dtype == "float16":  # what a cached copy would give back
            wave = wave.half().float()
        return wave
