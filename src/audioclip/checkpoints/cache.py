"""The cache folder of downloaded weights: finding a name's file, downloading it (sha256, resume), file hashes.

A registry name becomes a file in the cache folder (downloaded once, verified
by size and sha256, resumed after a dropped connection); a path is taken as
it is. The sha256 of any other weights file is remembered in the cache folder
while the file is unchanged (:func:`file_sha256`), so that an identity
(:func:`file_checkpoint_id`) costs one hash per file, not one per run.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import platformdirs

from ..util import sha256_file
from .errors import CheckpointError
from .registry import REGISTRY, PretrainedWeights, lookup, lookup_filename

__all__ = ["BASE_URL_ENV", "CACHE_ENV", "OFFLINE_ENV", "TRY_OFFLINE", "cache_dir", "cached_path", "download",
           "file_checkpoint_id", "file_sha256", "offline_mode", "resolve"]

CACHE_ENV = "AUDIOCLIP_CACHE"
OFFLINE_ENV = "AUDIOCLIP_OFFLINE"
BASE_URL_ENV = "AUDIOCLIP_BASE_URL"

_CHUNK = 1 << 20


def _cache_folder(path: str | os.PathLike | None) -> Path:
    if path is None:
        path = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("audioclip")
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create cache folder {folder}: {e.strerror or e}") from e
    return folder


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Return the cache folder (argument, else ``$AUDIOCLIP_CACHE``, else the
    user cache folder), creating it if needed."""
    return _cache_folder(path)


def offline_mode(offline: bool | None = None) -> bool:
    """Return ``offline`` if given, else whether ``$AUDIOCLIP_OFFLINE`` is truthy."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


def _weights_url(weights: PretrainedWeights) -> str:
    base = os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{weights.filename}" if base else weights.url


def cached_path(
    weights: PretrainedWeights, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """Return the cached file of ``weights`` if present with the expected size.

    Only the size is compared: hashing half a gigabyte on every load is too
    slow, and the full sha256 check already happened when it was downloaded.
    """
    path = _cache_folder(cache_dir) / weights.filename
    if path.is_file() and (not weights.size or path.stat().st_size == weights.size):
        return path
    return None


def _sha256(path: Path) -> str:
    """sha256 of a regular file's content (hex); a FIFO or device is a CheckpointError, never read."""
    from ..io import FileReadError, check_regular_file

    try:
        check_regular_file(path, 1 << 44, what="checkpoint")
    except FileReadError as err:
        raise CheckpointError(str(err)) from None
    return sha256_file(path)


def _kept(part: Path) -> str:
    return f" (partial download kept in {part}; run again to resume)" if part.is_file() else ""


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Data goes to ``dest + ".part"`` first; an existing part file is resumed
    with an HTTP Range request. The file is checked against ``size`` and
    ``sha256`` (when given) before being renamed into place, so ``dest``
    never holds partial or unverified data.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)

    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()  # longer than the real file: cannot be a prefix of it
        offset = 0

    request = urllib.request.Request(url, headers={"User-Agent": "audioclip"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    expected_total = size
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            if expected_total is None and length and length.isdigit():
                expected_total = offset + int(length)
            with open(part, "ab" if offset else "wb") as f, tqdm(
                total=expected_total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=None if progress else True,  # None: only on a terminal
            ) as bar:
                # read1 returns what has arrived, so a timeout or reset loses
                # nothing that was already received
                read = getattr(response, "read1", response.read)
                while chunk := read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        # 416: nothing left to send, the part file is (probably) complete
        if not (e.code == 416 and offset):
            raise CheckpointError(f"cannot download {url}: HTTP {e.code} {e.reason}{_kept(part)}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"cannot download {url}: {reason}{_kept(part)}") from e

    got = part.stat().st_size if part.is_file() else 0
    if expected_total is not None and got < expected_total:
        # A dropped connection can end the body early without any exception
        raise CheckpointError(
            f"cannot download {url}: connection closed after {got} of {expected_total} bytes"
            f"{_kept(part)}"
        )
    if size is not None and got != size:
        part.unlink()
        raise CheckpointError(
            f"download of {url} has {got} bytes, expected {size} (the downloaded data was deleted)"
        )
    if sha256 is not None:
        actual = _sha256(part)
        if actual != sha256.lower():
            part.unlink()
            raise CheckpointError(
                f"download of {url} is corrupt: sha256 is {actual}, expected {sha256} "
                "(the downloaded data was deleted)"
            )
    from ..io import commit_file

    commit_file(part, dest)  # fsynced, umask permissions, atomic rename
    return dest


def resolve(
    name_or_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: bool = True,
    registry: Mapping[str, PretrainedWeights] | None = None,
    verify: bool = False,
) -> tuple[Path, PretrainedWeights | None]:
    """Turn a registry name or a file path into a local checkpoint file.

    A registry name (case-insensitive) gives its file in the cache folder,
    downloaded first if absent (unless offline). A registry file name such as
    ``"AudioCLIP-Full-Training.pt"`` is accepted as an alias when no such file
    exists. An existing path is returned as is, with ``None`` for the
    weights. ``verify=True`` hashes an already cached file instead of only
    comparing its size.
    """
    registry = REGISTRY if registry is None else registry
    text = os.fspath(name_or_path)
    weights = lookup(text, registry)
    if weights is None:
        path = Path(text).expanduser()
        if path.exists():
            return path, None
        weights = lookup_filename(text, registry)
    if weights is None:
        known = ", ".join(registry) or "(none)"
        raise CheckpointError(
            f"{text!r} is neither an existing file nor a known checkpoint name; known names: {known}"
        )

    folder = _cache_folder(cache_dir)
    target = folder / weights.filename
    cached = cached_path(weights, folder)
    if cached is not None and (not verify or _sha256(cached) == weights.sha256):
        return cached, weights

    url = _weights_url(weights)
    if offline_mode(offline):
        problem = "is not in" if not target.exists() else "is incomplete or corrupt in"
        allow = f"unset {OFFLINE_ENV}" if offline is None else "allow downloads (no --offline)"
        raise CheckpointError(
            f"checkpoint {weights.name!r} ({weights.filename}) {problem} the cache folder {folder} "
            f"and offline mode is on. Download it from {url} into that folder, set {CACHE_ENV} "
            f"to a folder that has it, or {allow}. {TRY_OFFLINE}"
        )
    # A wrong cached file is only replaced once the new download is verified
    try:
        download(url, target, sha256=weights.sha256, size=weights.size or None, progress=progress)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. {TRY_OFFLINE}") from err
    return target, weights


#: how to try the package where weights cannot be downloaded (said by the errors of a failed download)
TRY_OFFLINE = ("To try audioclip without downloading, name an architecture instead of weights "
               "(--checkpoint AudioCLIP-tiny, create_model(\"AudioCLIP-tiny\")): random weights, the same in every "
               "run, whose results mean nothing.")


def file_checkpoint_id(path: str | os.PathLike, weights: PretrainedWeights | None = None) -> str:
    """A short identity of the weights *file* ``path`` (or of registered ``weights``), told without loading it.

    Registry files are named by their registry name and published hash
    (``full@2441d35b353352c8``); other files by their name and content hash,
    so renaming a copy does not fool the check but retraining does change the
    id. The identity of a built *model* (random or mixed weights too) is
    :func:`audioclip.factory.checkpoint_id`, which uses this for files.
    """
    if weights is not None:
        return f"{weights.name}@{weights.sha256[:16]}"
    return f"{Path(path).name}@{file_sha256(path)[:16]}"


_HASH_CACHE = "file-sha256.json"  # in the cache folder: {realpath: {"stat": [...], "sha256": hex}}
_HASH_CACHE_ENTRIES = 256
_RACY_SECONDS = 2.0  # a file changed this recently may change again within its timestamps' granularity


def file_sha256(path: str | os.PathLike, cache: bool = True) -> str:
    """The sha256 of a file's content (hex), remembered across processes while the file is unchanged.

    Hashing a full-size checkpoint reads about 0.5 GB; an index checks its
    checkpoint on every run. The hash is kept in the cache folder
    (``file-sha256.json``) under the file's resolved path with its
    ``(size, mtime_ns, ctime_ns, dev, inode)``: any write to the file changes
    its ctime (which no tool can set back), a replacement its inode, so a
    stale entry is never used. A file changed in the last two seconds is not
    remembered (its next change could keep the same timestamps). Without a
    usable cache folder the file is simply hashed.
    """
    path = Path(path)
    if not cache:
        return _sha256(path)
    try:
        real, st = os.path.realpath(path), os.stat(path)
    except OSError:
        return _sha256(path)  # raises the OSError a plain read would
    key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino]
    try:
        store = _cache_folder(None) / _HASH_CACHE
        from ..io import read_text_bounded

        # bounded, regular files only (a FIFO planted in the cache must not hang every command)
        entries = json.loads(read_text_bounded(store, 1 << 22, what="hash cache")) if store.exists() else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError, CheckpointError):
        store, entries = None, {}
    entry = entries.get(real)
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _sha256(path)
    if store is not None and time.time() - st.st_ctime_ns / 1e9 > _RACY_SECONDS and os.stat(path).st_ctime_ns == key[2]:
        from ..io import write_text_atomic

        entries.pop(real, None)
        entries[real] = {"stat": key, "sha256": digest}
        kept = dict(list(entries.items())[-_HASH_CACHE_ENTRIES:])  # the most recent ones
        try:
            write_text_atomic(store, json.dumps(kept), encoding="utf-8")
        except OSError:
            pass  # a read-only cache folder: hash again next time
    return digest


