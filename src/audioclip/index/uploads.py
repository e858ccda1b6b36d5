"""Query uploads for ``audioclip serve``: decoded in a worker process on a time budget, embedded here in batches.

An uploaded query file is the one input of the page that a stranger controls
byte for byte, and decoders (libsndfile, FFmpeg, Pillow) are large C
libraries. So the server never decodes one itself:

1. :func:`decode_upload` forks a worker (from a fork server that imported
   torch and the decoders once: a worker starts in milliseconds) that decodes
   the file, under the media layer's limits (``DecodeOptions.limits``; the
   server lowers ``max_channels`` for queries, :func:`query_options`),
   into the upload's private folder: the audio windows as one raw array, the
   picture or video frames as another, and ``meta.json``. A worker over its
   time budget is killed; one that crashes is reported, and the server goes
   on. What the worker writes is bounded too (``max_bytes``): a small file
   can decode to a great deal (a 944 kB WAV of 8 channels at 100 Hz for
   590 s is 830 MB of float32 at 44.1 kHz). So the worker first reads the
   header (libsndfile's formats: WAV, FLAC, Ogg...) and refuses a file whose
   stated length and channels decode past the bound before decoding a sample
   ("too large once decoded", 413); while decoding, the writer keeps a
   running count and stops past the bound (a header can lie, or there may
   be none to read); the worker's ``RLIMIT_FSIZE`` stops any single file a
   little past it; and its ``RLIMIT_DATA`` caps its memory at
   :data:`WORKER_MEMORY` beyond what it holds when it starts (a decoder
   that needs more fails, and the upload with it). For a timeline
   (``POST /api/timeline``) the worker writes the whole sound as one array
   instead (``decode_upload(..., audio=True)``), under the same bounds.
2. :func:`embed_upload` embeds the windows here (the model lives here),
   taking ``index.model_lock`` for one batch at a time, so that text
   searches, which take the same lock, are answered between two batches of
   a long recording instead of after all of it. Text searches that are
   waiting go first (:class:`SearchesFirst`): the upload takes the lock for
   its next batch only once no search is waiting.

The query vector is the one :meth:`Index.embed_query` gives for the same file,
bit for bit: the same decoding (:class:`~audioclip.inference.DecodedFiles`),
the same batches (:data:`QUERY_BATCH` windows, as :func:`embed_files`), the
same pooling (:meth:`FileResult.pooled`).

Every message names the file by the name the client gave, never by the path
of the temporary copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import multiprocessing
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import DecodedFiles, Embedding, FileResult, autocast
from ..errors import AudioclipError
from ..media import MediaError, stream_audio
from ..media.files import DecodeOptions

if TYPE_CHECKING:
    from .api import Index

__all__ = ["MAX_QUERY_CHANNELS", "QUERY_BATCH", "WORKER_MEMORY", "DecodedUpload", "SearchesFirst", "UploadError",
           "decode_upload", "decoded_bound", "embed_upload", "query_options", "start_worker_pool"]

QUERY_BATCH = 16  # windows per model call and per hold of the model lock: embed_files' default batch
MAX_QUERY_CHANNELS = 8  # audio channels of an uploaded query (7.1 is 8): a query is a sound, not a session
_WINDOWS, _FRAMES, _AUDIO, _META = "windows.raw", "frames.raw", "audio.raw", "meta.json"
_FRAMES_SLACK = 1_000_000  # bytes beyond the frames' exact share of the bound (headers, rounding)
_FSIZE_SLACK = 1 << 20  # bytes RLIMIT_FSIZE allows past the bound (the running count stops first)
_SEARCH_PRIORITY_WAIT = 5.0  # s at most that an upload's next batch waits for text searches to go first
# Bytes of memory (RLIMIT_DATA) a decode worker may take beyond what it holds at its start (torch, the decoders:
# about 0.9 GB of data mappings). Measured in resident memory: a 600 s stereo FLAC takes about 80 MB more, the
# largest picture the media limits let through (128 megapixels) about 1.45 GB while Pillow converts it.
WORKER_MEMORY = 2 << 30


class UploadError(AudioclipError):
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
    maps of the worker's files, read a batch at a time. Asked for the whole
    sound instead (``decode_upload(..., audio=True)``), ``audio`` is it, at the
    index's sample rate, and there are no windows or frames.
    """

    source: str
    spans: list[tuple[float, float]]  # (start, end) s of each window
    windows: np.ndarray | None
    frames: np.ndarray | None
    audio: np.ndarray | None = None  # (channels, samples): the whole sound, when asked for (a timeline's)


# -- decoding, in a worker process ----------------------------------------------------------


def query_options(options: DecodeOptions, max_seconds: float) -> DecodeOptions:
    """The index's decoding options for a query upload: at most ``max_seconds`` of sound and
    :data:`MAX_QUERY_CHANNELS` channels (any number when the index is mono: they are averaged into one)."""
    limits = dataclasses.replace(options.limits, max_duration=max_seconds)
    if not options.mono:
        limits = dataclasses.replace(limits, max_channels=min(limits.max_channels, MAX_QUERY_CHANNELS))
    return dataclasses.replace(options, limits=limits)


def decoded_bound(options: DecodeOptions) -> int:
    """Bytes an upload may decode to: its longest sound (``limits.max_duration``) in stereo (one channel when
    the index is mono) as float32 windows, overlapping ones counted as often as they are written, and the
    frames of a picture or video. A longer recording, or one of more channels, may be refused as too large
    once decoded even though it is within the duration and channel limits."""
    audio = _audio_bytes(options.limits.max_duration, 2, options)
    # a picture is one frame; a video the central frame or ten ("all"), each 3 x size x size float32
    frames = (10 if options.video_frames == "all" else 1) * 3 * options.image_size ** 2 * 4
    return int(audio + options.window * options.sample_rate * (1 if options.mono else 2) * 4) + frames \
        + _FRAMES_SLACK


def _audio_bytes(seconds: float, channels: int, options: DecodeOptions) -> float:
    """Bytes of float32 windows that ``seconds`` of ``channels`` decode to (one channel for a mono index),
    overlapping windows counted as often as they are written."""
    hop = options.hop or options.window
    overlap = max(1.0, options.window / hop) if hop > 0 else 1.0
    return seconds * options.sample_rate * (1 if options.mono else channels) * 4 * overlap


def _stated_too_large(path: str, options: DecodeOptions, max_bytes: int) -> bool:
    """Whether the file's header states a sound that decodes past ``max_bytes`` (False when it states none).

    Only a file within the media limits is judged here: one over them is
    refused by the decoder, with the limit named.
    """
    import soundfile

    try:
        info = soundfile.info(path)
    except Exception:  # noqa: BLE001 (not a format libsndfile reads, or no header: the running count remains)
        return False
    if not (info.samplerate > 0 and info.frames > 0 and info.channels > 0):
        return False
    seconds = info.frames / info.samplerate
    limits = options.limits
    if limits.check_audio(info.channels, info.samplerate, info.frames):
        return False
    return _audio_bytes(seconds, info.channels, options) > max_bytes


class _TooLarge(Exception):
    pass


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


def _limit_file_size(max_bytes: int) -> None:
    """The backstop: no file this process writes grows past ``max_bytes`` (and a little); EFBIG, not SIGXFSZ."""
    try:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        soft = max_bytes + _FSIZE_SLACK
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    except (ImportError, AttributeError, ValueError, OSError):  # not on this system: the running count remains
        pass


def _limit_memory(extra: int) -> None:
    """Cap this process's data (heap and private mappings: ``RLIMIT_DATA``) at what it holds now plus ``extra``."""
    try:
        import resource

        with open("/proc/self/status") as status:
            held = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = held + extra
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    except (ImportError, AttributeError, ValueError, OSError, StopIteration):  # not Linux: the other bounds remain
        pass


def _decode_worker(path: str, options: DecodeOptions, folder: str, max_bytes: int | None = None,
                   memory: int | None = WORKER_MEMORY, audio: bool = False) -> None:
    """In the worker: decode ``path`` into ``folder`` (raw arrays, then ``meta.json`` last), at most
    ``max_bytes`` of them, in at most ``memory`` bytes beyond what the worker holds at its start (None: no cap).
    ``audio``: the whole sound as one ``(samples, channels)`` array instead of windows and frames."""
    torch.set_num_threads(1)  # one core for a query: the server and the other users keep the rest
    if max_bytes is not None:
        _limit_file_size(max_bytes)
    if memory is not None:
        _limit_memory(memory)
    meta: dict = {"source": None, "error": None, "spans": [], "window": None, "frame": None, "audio": None,
                  "too_large": False}
    writer = _Writer(max_bytes)
    try:
        if max_bytes is not None and _stated_too_large(path, options, max_bytes):
            raise _TooLarge
        if audio:
            _decode_sound(path, options, os.path.join(folder, _AUDIO), writer, meta)
        else:
            _decode_pieces(path, options, folder, writer, meta)
    except _TooLarge:
        meta["too_large"] = True
    except MemoryError:  # past RLIMIT_DATA (a decoder that needs more than the worker may have)
        meta["too_large"] = "memory"
    except OSError as err:  # EFBIG: the backstop (or the disk is full)
        meta["too_large"] = err.errno == errno.EFBIG
        meta["error"] = None if meta["too_large"] else "cannot be decoded (no room for it)"
    if str(meta["error"]).startswith("MemoryError"):  # the decoding reports it as the file's error
        meta["too_large"], meta["error"] = "memory", None
    if meta["too_large"]:
        meta["spans"], meta["window"], meta["frame"], meta["audio"] = [], None, None, None
        for name in (_WINDOWS, _FRAMES, _AUDIO):  # free the room now
            with contextlib.suppress(OSError):
                os.truncate(os.path.join(folder, name), 0)
    partial = os.path.join(folder, _META + ".part")
    with open(partial, "w") as out:
        json.dump(meta, out)
    os.replace(partial, os.path.join(folder, _META))


def _decode_pieces(path: str, options: DecodeOptions, folder: str, writer: _Writer, meta: dict) -> None:
    """The windows and frames of ``path``, as :meth:`Index.embed_query` decodes them, into ``folder``."""
    with open(os.path.join(folder, _WINDOWS), "wb") as windows, \
            open(os.path.join(folder, _FRAMES), "wb") as frames:
        for piece in DecodedFiles([path], options).pieces(0):
            meta["source"] = piece["source"]
            meta["error"] = meta["error"] or piece["error"]
            for start, end, wave in piece["windows"]:
                meta["window"] = writer.append(windows, wave)
                meta["spans"].append((start, end))
            for _, frame in piece["frames"]:
                meta["frame"] = writer.append(frames, frame)


def _decode_sound(path: str, options: DecodeOptions, target: str, writer: _Writer, meta: dict) -> None:
    """The whole sound of ``path`` at the index's rate (and channels), as ``(samples, channels)`` rows."""
    meta["source"] = "audio"
    try:
        with open(target, "wb") as out:
            for block in stream_audio(path, sample_rate=options.sample_rate, mono=options.mono,
                                      limits=options.limits):
                shape, dtype = writer.append(out, block.T)
                meta["audio"] = ([shape[1]], dtype)  # rows of one sample each: (samples, channels) once loaded
    except MediaError as err:
        meta["error"], meta["audio"] = err.reason, None


class _Writer:
    """Appends arrays to files, counting the bytes: past ``max_bytes`` (None: no bound), :class:`_TooLarge`."""

    def __init__(self, max_bytes: int | None):
        self.max_bytes, self.written = max_bytes, 0

    def append(self, out, tensor) -> tuple[list[int], str]:
        array = np.ascontiguousarray(torch.as_tensor(tensor).numpy())
        self.written += array.nbytes
        if self.max_bytes is not None and self.written > self.max_bytes:
            raise _TooLarge
        out.write(array.tobytes())
        return list(array.shape), array.dtype.str


def decode_upload(path: str, name: str, options: DecodeOptions, budget: float,
                  max_bytes: int | None = None, audio: bool = False) -> DecodedUpload:
    """Decode the uploaded file ``path`` (its sender's name: ``name``) in a worker; raise :class:`UploadError`.

    Blocks for at most ``budget`` seconds (plus the worker's start); the
    arrays are written beside ``path``, in its folder, at most ``max_bytes``
    of them (None: :func:`decoded_bound` of ``options``). ``audio``: the
    whole sound in one array (``DecodedUpload.audio``), not windows.
    """
    folder = os.path.dirname(path)
    max_bytes = decoded_bound(options) if max_bytes is None else max_bytes
    process = _context().Process(target=_decode_worker, args=(path, options, folder, max_bytes, WORKER_MEMORY,
                                                              audio), daemon=True)
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
    if meta.get("too_large") == "memory":
        raise UploadError(413, f"{name}: too large to decode (over the {WORKER_MEMORY / 2**30:g} GB of memory a "
                               "query may take)")
    if meta.get("too_large"):
        raise UploadError(413, f"{name}: too large once decoded (over {max_bytes / 1e6:.0f} MB of samples; "
                               "a shorter recording, or one of fewer channels, fits)")
    if meta["error"]:
        raise UploadError(400, f"{name}: {_scrub(meta['error'], path, name)}")
    if audio:
        if meta["audio"] is None:
            raise UploadError(400, f"{name}: has no sound")
        sound = _load(os.path.join(folder, _AUDIO), meta["audio"])
        return DecodedUpload(meta["source"], [], None, None, sound.T)
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
    return reason.replace("(--max-duration)", "(--max-query-seconds)").replace("(--max-channels)", "for a query")


# -- embedding, here ------------------------------------------------------------------------


class SearchesFirst:
    """Text searches before an upload's next batch: the model lock handed over fairly.

    A ``threading.Lock`` is not fair: the upload's thread, releasing it after
    one batch and asking again at once, would mostly get it back before a
    waiting text search woke up. So a text search says it is waiting
    (:meth:`searching`, around the whole of its use of the model), and an
    upload, before it takes the lock for its next batch, waits (:meth:`turn`)
    until no search is waiting; at most ``patience`` seconds, so that a
    steady stream of searches cannot stall an upload for ever. A search that
    arrives while a batch runs waits for that batch only.
    """

    def __init__(self, patience: float = _SEARCH_PRIORITY_WAIT):
        self.patience = patience
        self._changed = threading.Condition()
        self._waiting = 0

    @contextlib.contextmanager
    def searching(self):
        with self._changed:
            self._waiting += 1
        try:
            yield
        finally:
            with self._changed:
                self._waiting -= 1
                if not self._waiting:
                    self._changed.notify_all()

    @property
    def waiting(self) -> int:
        return self._waiting

    def turn(self) -> None:
        """Return once no text search is waiting (or after ``patience`` seconds)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._waiting, self.patience)


def embed_upload(index: Index, decoded: DecodedUpload, modality: str, name: str,
                 batch: int = QUERY_BATCH, turns: SearchesFirst | None = None) -> np.ndarray:
    """The unit query vector of a decoded upload, as :meth:`Index.embed_query` gives it for the file.

    ``modality`` is "audio" (the recording's windows, pooled) or "image" (the
    picture, or a video's frames, averaged). The model lock is held for one
    batch of ``batch`` windows at a time; before each batch, text searches
    waiting in ``turns`` go first.
    """
    arrays = decoded.windows if modality == "audio" else decoded.frames
    if arrays is None:
        article = "an" if decoded.source[0] in "aeiou" else "a"
        raise UploadError(400, f"{name}: has no {'sound' if modality == 'audio' else 'picture'} "
                               f"(it is {article} {decoded.source} file)")
    model = index.model
    device = model.device
    precision = index.precision
    encode = model.encode_audio if modality == "audio" else model.encode_image
    vectors = []
    for first in range(0, len(arrays), batch):
        inputs = torch.from_numpy(np.array(arrays[first: first + batch]))
        if turns is not None:
            turns.turn()
        with index.model_lock, torch.inference_mode(), autocast(device, precision):
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
