"""Query uploads for ``audioclip serve``: decoded in a worker process on a time budget, embedded here in batches.

An uploaded query file is the one input of the page that a stranger controls
byte for byte, and decoders (libsndfile, FFmpeg, Pillow) are large C
libraries. So the server never decodes one itself:

1. :func:`decode_upload` forks a worker (from a fork server that imported
   torch and the decoders once: a worker starts in milliseconds) that decodes
   the file, under the media layer's limits (``DecodeOptions.limits``),
   into the upload's private folder: the audio windows as one raw array, the
   picture or video frames as another, and ``meta.json``. A worker over its
   time budget is killed; one that crashes is reported, and the server goes
   on.
2. :func:`embed_upload` embeds the windows here (the model lives here),
   taking ``index._model_lock`` for one batch at a time, so that text
   searches, which take the same lock, are answered between two batches of
   a long recording instead of after all of it.

The query vector is the one :meth:`Index.embed_query` gives for the same file,
bit for bit: the same decoding (:class:`~audioclip.inference._DecodedFiles`),
the same batches (:data:`QUERY_BATCH` windows, as :func:`embed_files`), the
same pooling (:meth:`FileResult.pooled`).

Every message names the file by the name the client gave, never by the path
of the temporary copy.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import DecodeOptions, Embedding, FileResult, _DecodedFiles, autocast

if TYPE_CHECKING:
    from .api import Index

__all__ = ["QUERY_BATCH", "DecodedUpload", "UploadError", "decode_upload", "embed_upload", "start_worker_pool"]

QUERY_BATCH = 16  # windows per model call and per hold of the model lock: embed_files' default batch
_WINDOWS, _FRAMES, _META = "windows.raw", "frames.raw", "meta.json"
_LOCK_GAP = 0.005  # s between two batches with the lock released (see embed_upload)


class UploadError(Exception):
    """An upload that cannot be used as a query: ``status`` (HTTP) and a message fit to show its sender."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class DecodedUpload:
    """What the worker decoded: the file's kind, its audio windows and its pictures, as arrays on disk.

    ``windows`` is ``(n, channels, samples)`` and ``frames`` ``(n, 3, size, size)``
    (a picture gives one frame, a video its chosen frames); both are memory
    maps of the worker's files, read a batch at a time.
    """

    source: str
    spans: list[tuple[float, float]]  # (start, end) s of each window
    windows: np.ndarray | None
    frames: np.ndarray | None


# -- decoding, in a worker process ----------------------------------------------------------


def _context():
    """Fork server where available: forking this (threaded) server itself could copy a lock held by another thread."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # imported once by the fork server, not once per upload
    return context


def start_worker_pool() -> None:
    """Start the fork server now (it imports torch: seconds), so that the first upload does not wait for it."""
    process = _context().Process(target=_nothing, daemon=True)
    process.start()
    process.join()


def _nothing() -> None:
    pass


def _decode_worker(path: str, options: DecodeOptions, folder: str) -> None:
    """In the worker: decode ``path`` into ``folder`` (raw arrays, then ``meta.json`` last)."""
    torch.set_num_threads(1)  # one core for a query: the server and the other users keep the rest
    meta: dict = {"source": None, "error": None, "spans": [], "window": None, "frame": None}
    with open(os.path.join(folder, _WINDOWS), "wb") as windows, open(os.path.join(folder, _FRAMES), "wb") as frames:
        for piece in _DecodedFiles([path], options).pieces(0):
            meta["source"] = piece["source"]
            meta["error"] = meta["error"] or piece["error"]
            for start, end, wave in piece["windows"]:
                meta["window"] = _append(windows, wave)
                meta["spans"].append((start, end))
            for _, frame in piece["frames"]:
                meta["frame"] = _append(frames, frame)
    partial = os.path.join(folder, _META + ".part")
    with open(partial, "w") as out:
        json.dump(meta, out)
    os.replace(partial, os.path.join(folder, _META))


def _append(out, tensor) -> tuple[list[int], str]:
    array = np.ascontiguousarray(torch.as_tensor(tensor).numpy())
    out.write(array.tobytes())
    return list(array.shape), array.dtype.str


def decode_upload(path: str, name: str, options: DecodeOptions, budget: float) -> DecodedUpload:
    """Decode the uploaded file ``path`` (its sender's name: ``name``) in a worker; raise :class:`UploadError`.

    Blocks for at most ``budget`` seconds (plus the worker's start); the
    arrays are written beside ``path``, in its folder.
    """
    folder = os.path.dirname(path)
    process = _context().Process(target=_decode_worker, args=(path, options, folder), daemon=True)
    process.start()
    process.join(budget)
    if process.is_alive():
        process.kill()
        process.join()
        raise UploadError(422, f"{name}: took too long to decode (over {budget:g} s)")
    try:
        with open(os.path.join(folder, _META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        raise UploadError(422, f"{name}: cannot be decoded (the decoder failed)") from None
    if meta["error"]:
        raise UploadError(400, f"{name}: {_scrub(meta['error'], path, name)}")
    if meta["source"] is None or not (meta["spans"] or meta["frame"]):
        raise UploadError(400, f"{name}: nothing to search with in this file")
    return DecodedUpload(meta["source"], [tuple(s) for s in meta["spans"]],
                         _load(os.path.join(folder, _WINDOWS), meta["window"]),
                         _load(os.path.join(folder, _FRAMES), meta["frame"]))


def _load(path: str, described) -> np.ndarray | None:
    if described is None:
        return None
    shape, dtype = described
    return np.memmap(path, dtype=np.dtype(dtype), mode="r").reshape(-1, *shape)


def _scrub(reason: str, path: str, name: str) -> str:
    """A decoder's reason without the temporary path (libraries quote it), and the server's option named."""
    reason = reason.replace(path, name).replace(os.path.dirname(path), "")
    return reason.replace("(--max-duration)", "(--max-query-seconds)")


# -- embedding, here ------------------------------------------------------------------------


def embed_upload(index: Index, decoded: DecodedUpload, modality: str, name: str,
                 batch: int = QUERY_BATCH) -> np.ndarray:
    """The unit query vector of a decoded upload, as :meth:`Index.embed_query` gives it for the file.

    ``modality`` is "audio" (the recording's windows, pooled) or "image" (the
    picture, or a video's frames, averaged). The model lock is held for one
    batch of ``batch`` windows at a time, then released for a moment: a
    ``threading.Lock`` is not fair, and without the pause this thread would
    take it again before a waiting text search woke up.
    """
    arrays = decoded.windows if modality == "audio" else decoded.frames
    if arrays is None:
        article = "an" if decoded.source[0] in "aeiou" else "a"
        raise UploadError(400, f"{name}: has no {'sound' if modality == 'audio' else 'picture'} "
                               f"(it is {article} {decoded.source} file)")
    model = index.model
    device = model.device
    precision = getattr(index, "_precision", "fp32")
    encode = model.encode_audio if modality == "audio" else model.encode_image
    vectors = []
    for first in range(0, len(arrays), batch):
        inputs = torch.from_numpy(np.array(arrays[first: first + batch]))
        if first:
            time.sleep(_LOCK_GAP)
        with index._model_lock, torch.inference_mode(), autocast(device, precision):
            vectors.extend(F.normalize(encode(inputs.to(device)).float(), dim=-1).cpu())
    # as embed_decoded and _complete put them together, so that FileResult.pooled gives the same vector
    result = FileResult(name, decoded.source)
    if modality == "audio":
        windows = torch.stack(vectors)
        spans = decoded.spans
        result.embeddings.append(Embedding("audio", "pooled", spans[0][0], spans[-1][1],
                                           F.normalize(windows.mean(dim=0), dim=-1)))
    else:
        kind = "image" if decoded.source == "image" else "frame"
        result.embeddings.extend(Embedding("image", kind, None, None, v) for v in vectors)
    return result.pooled(modality).numpy()
