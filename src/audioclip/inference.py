"""Inference for people: many files in, embeddings and zero-shot labels out.

:func:`embed_files` decodes files in DataLoader worker processes while the
model embeds the previous batch, batches audio windows and images across
files, and reports unreadable files without stopping. :func:`zero_shot`
turns embeddings into label probabilities.

Embeddings produced here are L2-normalised (cosine similarity is a dot
product). A long recording gets one embedding per window plus a pooled one:
the renormalised mean of its window embeddings.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .media import (
    MediaError,
    MediaLimits,  # noqa: F401 (DecodeOptions' field type, imported from here before)
    load_image,
    load_video_frames,
    sniff_modality,
    stream_audio,
    stream_windows,
)
from . import prompts
from .media.sniff import FileModality
from .media.files import MEDIA_EXTENSIONS, DecodeOptions, expand_paths, shard, shard_files  # noqa: F401 (re-exported)
from .media.workers import MAX_WORKERS, cpu_count, decoding_workers, die_with_parent  # noqa: F401 (re-exported)
from .model import AudioCLIP

PRECISIONS = ("fp32", "bf16", "fp16")

#: the space a file's embedding lies in (a video gives both)
Modality = Literal["audio", "image"]
#: what one embedding of a file covers: an audio window, the whole sound, a picture, a video frame
EmbeddingKind = Literal["window", "pooled", "image", "frame"]


@dataclass
class Embedding:
    """One embedding of a file: an audio window, a pooled clip, an image or a video frame.

    ``modality`` is the embedding's ("audio" or "image"); ``kind`` is
    "window", "pooled", "image" or "frame"; ``start``/``end`` are seconds
    into the file (a frame has ``start == end``; an image has neither).
    """

    modality: Modality
    kind: EmbeddingKind
    start: float | None
    end: float | None
    vector: torch.Tensor  # (embed_dim,), float32, L2-normalised


@dataclass
class FileResult:
    """Everything embedded from one file, or why it could not be."""

    path: str
    source: FileModality | None  # None when unrecognised
    embeddings: list[Embedding] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def pooled(self, modality: Modality) -> torch.Tensor | None:
        """The file's single vector for ``modality``: the pooled audio, or the image / mean frame."""
        kinds = ("pooled",) if modality == "audio" else ("image", "frame")
        vectors = [e.vector for e in self.embeddings if e.modality == modality and e.kind in kinds]
        if not vectors:
            return None
        return F.normalize(torch.stack(vectors).mean(dim=0), dim=-1)


# -- finding files ------------------------------------------------------------

# MEDIA_EXTENSIONS, expand_paths, shard, shard_files and DecodeOptions live in media/files.py (no model
# imports), the decoding processes' helpers in media/workers.py; all are re-exported here.


# -- decoding, in worker processes ---------------------------------------------


#: windows per decoded piece of a long recording: a few of them are in memory at a time
_WINDOWS_PER_PIECE = 8


class DecodedFiles(IterableDataset):
    """Files decoded into pieces: ``{"index", "path", "source", "windows", "frames", "error", "final"}``.

    A long recording is streamed (:func:`~audioclip.media.stream_audio`): its
    windows come in pieces of :data:`_WINDOWS_PER_PIECE`, so memory does not
    grow with its length; the last piece of a file has ``final=True``. With
    DataLoader workers, file ``i`` is decoded by worker ``i % workers``;
    pieces of different files interleave, and :func:`embed_decoded` puts them
    back together by ``index``.
    """

    def __init__(self, paths: Sequence[str], options: DecodeOptions):
        self.paths = list(paths)
        self.options = options

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        step, first = (1, 0) if worker is None else (worker.num_workers, worker.id)
        for index in range(first, len(self.paths), step):
            yield from self.pieces(index)

    def pieces(self, index: int) -> Iterator[dict]:
        path = self.paths[index]
        item = {"index": index, "path": path, "source": None, "windows": [], "frames": [], "error": None,
                "final": False}
        try:
            if not os.path.exists(path):
                raise MediaError(path, "no such file or directory")
            item["source"] = source = sniff_modality(path)
            if source is None:
                raise MediaError(path, "not a recognised audio, image or video file")
            if source == "image":
                item["frames"] = [(None, load_image(path, image_size=self.options.image_size,
                                                     limits=self.options.limits))]
            if source == "video":
                item["frames"] = self._video_frames(path)
            if source in ("audio", "video"):
                for window in self._audio_windows(path, optional=source == "video"):
                    item["windows"].append(window)
                    if len(item["windows"]) == _WINDOWS_PER_PIECE:
                        yield item
                        item = {**item, "windows": [], "frames": []}
        except MediaError as err:
            item["error"] = err.reason
        except Exception as err:  # a worker must never die on one file
            item["error"] = f"{type(err).__name__}: {err}"
        item["final"] = True
        yield item

    def _audio_windows(self, path: str, optional: bool) -> Iterator[tuple[float, float, torch.Tensor]]:
        o = self.options
        blocks = stream_audio(path, sample_rate=o.sample_rate, mono=o.mono, limits=o.limits)
        try:
            first = next(blocks)
        except MediaError:
            if optional:  # a video without sound still has pictures
                return
            raise
        for w in stream_windows(itertools.chain([first], blocks), sample_rate=o.sample_rate, window=o.window,
                                hop=o.hop):
            yield w.start, w.end, w.wave

    def _video_frames(self, path: str) -> list[tuple[float | None, torch.Tensor]]:
        frames = load_video_frames(path, which=self.options.video_frames, image_size=self.options.image_size,
                                   limits=self.options.limits)
        return [(None, frame) for frame in frames]




def _keep_as_is(item):
    return item


def _start_worker(parent: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker dies with the job (:func:`die_with_parent`)."""
    die_with_parent(parent)


# -- embedding -------------------------------------------------------------------


def autocast(device: torch.device, precision: str):
    """A context running the model in ``precision`` ("fp32", "bf16", "fp16")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Batcher:
    """Collects inputs of one modality and shape until a batch is full."""

    def __init__(self, encode, batch_size: int):
        self.encode = encode
        self.batch_size = batch_size
        self.queues: dict[tuple, list[tuple[FileResult, Embedding, torch.Tensor]]] = {}

    def add(self, key: tuple, result: FileResult, slot: Embedding, tensor: torch.Tensor) -> None:
        queue = self.queues.setdefault(key, [])
        queue.append((result, slot, tensor))
        if len(queue) >= self.batch_size:
            self.flush(key)

    def flush(self, key: tuple | None = None) -> None:
        for k in [key] if key is not None else list(self.queues):
            queue = self.queues.pop(k, [])
            if queue:
                self._run(queue)

    def _run(self, queue) -> None:
        try:
            vectors = self.encode(torch.stack([t for _, _, t in queue]))
        except (ValueError, RuntimeError) as err:
            if len(queue) == 1:
                result = queue[0][0]
                result.error = result.error or f"model refused the input: {err}"
                return
            for entry in queue:  # isolate the item that broke the batch
                self._run([entry])
            return
        for (_, slot, _), vector in zip(queue, vectors):
            slot.vector = vector


def embed_files(
    model: AudioCLIP,
    paths: Sequence[str],
    *,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    options: DecodeOptions | None = None,
) -> Iterator[FileResult]:
    """Embed audio, image and video files; yield one :class:`FileResult` per path, in input order.

    Files are decoded in ``workers`` DataLoader processes (0: in this one; at most one per file and per
    CPU, and at most :data:`MAX_WORKERS`), which die with this process.
    Audio is split into windows (``options.window`` seconds); every window is
    embedded and pooled into one clip vector. Videos give their frame(s) and
    their sound track. A file that cannot be read yields a result with
    ``error`` set, and the rest go on.
    """
    options = options or DecodeOptions(image_size=model.visual.image_size)
    workers = decoding_workers(workers, len(paths))
    loader = DataLoader(
        DecodedFiles(paths, options),
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep_as_is,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(_start_worker, os.getpid()) if workers else None,
    )
    return embed_decoded(model, loader, batch_size=batch_size, device=device, precision=precision)


def decode_file(path: str, options: DecodeOptions) -> dict:
    """One file decoded for :func:`embed_decoded`: never raises; a bad file's reason is in ``"error"``.

    ``{"path", "source", "windows": [(start, end, wave)], "frames": [(time, image)], "error"}``:
    what :func:`embed_files` decodes in its workers (the distributed engines decode with it too).
    """
    whole = None
    for piece in DecodedFiles([path], options).pieces(0):
        if whole is None:
            whole = piece
        else:
            whole["windows"] += piece["windows"]
            whole["error"] = whole["error"] or piece["error"]
    whole.pop("index", None)
    whole.pop("final", None)
    return whole


def embed_decoded(
    model: AudioCLIP,
    items: Iterable[dict],
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> Iterator[FileResult]:
    """Embed files already decoded by :func:`decode_file`; one :class:`FileResult` per item, in order.

    Windows and images are batched across files (``batch_size`` per model call).
    """
    device = torch.device(device) if device is not None else model.device
    model.to(device).eval()

    def encoder(encode):
        def run(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast(device, precision):
                return F.normalize(encode(batch.to(device)).float(), dim=-1).cpu()

        return run

    audio = _Batcher(encoder(model.encode_audio), batch_size)
    images = _Batcher(encoder(model.encode_image), batch_size)

    open_files: dict[int, FileResult] = {}  # by input position; pieces of several files interleave
    closed: set[int] = set()
    next_out = count = 0
    for item in items:
        index = item.get("index")
        if index is None:  # a whole file (decode_file): the next position
            index = count
        count = max(count, index + 1)
        result = open_files.get(index)
        if result is None:
            result = open_files[index] = FileResult(item["path"], item["source"], error=item["error"])
        elif item["error"] and result.ok:
            result.error = item["error"]  # found late in a streamed file: what came before is dropped
        if result.ok:
            for time, frame in item["frames"]:
                kind = "image" if result.source == "image" else "frame"
                slot = Embedding("image", kind, time, time, vector=None)
                result.embeddings.append(slot)
                images.add(("image",), result, slot, torch.as_tensor(frame))
            for start, end, wave in item["windows"]:
                slot = Embedding("audio", "window", start, end, vector=None)
                result.embeddings.append(slot)
                wave = torch.as_tensor(wave)
                audio.add(("audio", wave.shape[0]), result, slot, wave)
        if item.get("final", True):
            closed.add(index)
            if result.ok and not result.embeddings:
                result.error = "nothing to embed"
        # Yield finished files in input order; a file waits until its batch ran.
        while next_out in closed and _finished(open_files[next_out]):
            closed.discard(next_out)
            yield _complete(open_files.pop(next_out))
            next_out += 1
    audio.flush()
    images.flush()
    for index in sorted(open_files):
        yield _complete(open_files.pop(index))


def _finished(result: FileResult) -> bool:
    return not result.ok or all(e.vector is not None for e in result.embeddings)


def _complete(result: FileResult) -> FileResult:
    if not result.ok:
        result.embeddings = []
        return result
    windows = [e for e in result.embeddings if e.kind == "window"]
    if windows:
        pooled = F.normalize(torch.stack([w.vector for w in windows]).mean(dim=0), dim=-1)
        start, end = min(w.start for w in windows), max(w.end for w in windows)
        result.embeddings.append(Embedding("audio", "pooled", start, end, pooled))
    return result


# -- zero-shot classification ------------------------------------------------------


def text_classifier(model: AudioCLIP, labels: Sequence[str], templates: str | Sequence[str] = "{}") -> torch.Tensor:
    """Normalised class vectors ``(len(labels), embed_dim)`` on the CPU, for :func:`zero_shot`.

    :func:`audioclip.prompts.text_classifier` (each label in every template,
    ``"{}"`` marking where; the template embeddings averaged and renormalised:
    CLIP's prompt ensembling) for distinct labels, without gradients.
    """
    labels = list(labels)
    if not labels:
        raise ValueError("zero-shot classification needs at least one label")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct")
    # no_grad rather than inference_mode: the vectors stay ordinary tensors that
    # callers may use with autograd (a probe, a fine-tuned head)
    with torch.no_grad():
        # all labels of a template in one call, as this function always did:
        # the batch's composition shows in the last bits of the vectors
        return prompts.text_classifier(model, labels, templates, batch_size=None).cpu()


def zero_shot(
    model: AudioCLIP,
    classes: torch.Tensor,
    audio: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label probabilities ``(batch, labels)`` from normalised embeddings.

    ``classes`` comes from :func:`text_classifier`; ``audio`` and ``image``
    are normalised embeddings ``(batch, embed_dim)``. Given both (row ``i`` of
    each from the same clip, like a video's sound and frame), their logits
    are added before the softmax, i.e. the modalities' evidence is combined
    as independent.
    """
    if audio is None and image is None:
        raise ValueError("zero_shot needs audio or image embeddings")
    if audio is not None and image is not None and audio.shape[0] != image.shape[0]:
        raise ValueError(f"audio and image batches differ: {audio.shape[0]} vs {image.shape[0]}")
    scales = {k: v.detach().cpu() for k, v in model.logit_scales().items()}
    logits = 0
    if audio is not None:
        logits = logits + scales["audio_text"] * audio.float().cpu() @ classes.T
    if image is not None:
        logits = logits + scales["image_text"] * image.float().cpu() @ classes.T
    return logits.softmax(dim=-1)


def classify(
    model: AudioCLIP,
    labels: Sequence[str] | None = None,
    audio: torch.Tensor | Sequence[str | os.PathLike] | None = None,
    image: torch.Tensor | Sequence[str | os.PathLike] | None = None,
    template: str | Sequence[str] = "{}",
    *,
    head=None,
) -> torch.Tensor:
    """Zero-shot label probabilities ``(batch, len(labels))``; rows sum to 1.

    ``audio`` is a waveform batch (as :meth:`AudioCLIP.encode_audio` takes)
    or a list of file paths (long files are windowed and pooled); ``image``
    is an image batch or a list of paths. Either or both (paired row by row).
    Raises ``MediaError`` for a file that cannot be read.

    ``head`` (a folder written by ``audioclip fit``, or a loaded
    :class:`audioclip.heads.Head`) instead of ``labels``: the head's
    probabilities ``(batch, len(head.labels))`` for ``audio``; a head fitted on
    another checkpoint's embeddings is refused.
    """
    if head is not None:
        return _classify_with_head(model, head, labels, audio, image)
    if labels is None:
        raise ValueError("classify needs labels (zero-shot) or a head")
    audio_vectors = _vectors(model, audio, "audio")
    image_vectors = _vectors(model, image, "image")
    return zero_shot(model, text_classifier(model, labels, template), audio_vectors, image_vectors)


def _vectors(model: AudioCLIP, given, modality: Modality, options: DecodeOptions | None = None) -> torch.Tensor | None:
    if given is None:
        return None
    if isinstance(given, torch.Tensor):
        encode = model.encode_audio if modality == "audio" else model.encode_image
        with torch.inference_mode():
            return F.normalize(encode(given).float(), dim=-1).cpu()
    if isinstance(given, (str, os.PathLike)):
        given = [given]
    vectors = []
    for result in embed_files(model, [str(p) for p in given], options=options):
        if not result.ok:
            raise MediaError(result.path, result.error)
        vector = result.pooled(modality)
        if vector is None:
            raise MediaError(result.path, f"has no {modality} to classify")
        vectors.append(vector)
    return torch.stack(vectors)


def load_head_for(model: AudioCLIP, head):
    """``head`` (a folder or a :class:`audioclip.heads.Head`) checked against ``model``'s checkpoint."""
    from .factory import checkpoint_id
    from .heads import Head, load_head

    if not isinstance(head, Head):
        head = load_head(head)
    try:
        ident = checkpoint_id(model)
    except ValueError:  # not made by create_model (an ONNX export): its own id, if it has one
        ident = getattr(model, "checkpoint_id", None)
    head.check_checkpoint(ident if isinstance(ident, str) else None)
    return head


def _classify_with_head(model: AudioCLIP, head, labels, audio, image) -> torch.Tensor:
    if labels is not None:
        raise ValueError("classify takes labels (zero-shot) or a head, not both")
    if image is not None or audio is None:
        raise ValueError("a head classifies audio: give audio=")
    head = load_head_for(model, head)
    return head.probabilities(_vectors(model, audio, "audio", options=head_decode_options(model, head)))


def head_decode_options(model: AudioCLIP, head) -> DecodeOptions:
    """How files are cut for ``head``: the window, hop and down-mixing of the embeddings it was fitted on."""
    info = head.info
    return DecodeOptions(window=float(info.get("window_s", 5.0)), hop=info.get("hop_s"),
                         mono=bool(info.get("mono", False)), image_size=model.visual.image_size)
