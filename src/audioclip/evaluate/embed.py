"""Embedding a dataset once: the model, a DataLoader over its items, and an on-disk cache.

Audio is decoded with :func:`audioclip.media.load_audio` and shaped by the
dataset's :class:`~audioclip.evaluate.conventions.AudioConventions` (the paper's
fixed centre crop / pad, not the windowing of :func:`audioclip.embed_files`);
pictures by CLIP's preprocessing. Items that cannot be read are reported and
left out; the rest are batched and encoded.

Vectors are kept in an :class:`EmbeddingStore`, one ``.npz`` file per
(checkpoint, dataset, modality, input conventions), keyed by item and file
identity (path, size, modification time). Any later task, metric or modality
pair on the same data and checkpoint reads them instead of encoding again; a
killed run keeps what it had flushed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..inference import Modality, autocast
from ..media.workers import decoding_workers, die_with_parent
from ..io import atomic_write, write_text_atomic
from ..prompts import text_classifier
from ..media import MediaError, load_audio, load_image, load_video_frames
from ..media.sniff import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .conventions import AudioConventions
from .datasets import EvalItem

__all__ = ["EmbeddingStore", "Encoder", "ItemEmbeddings", "default_store_dir", "embed_items", "load_encoder"]

#: an AudioCLIP model, or a standalone ESResNeXt-fbsp audio classifier
EncoderKind = Literal["audioclip", "classifier"]


# -- the model ------------------------------------------------------------------


@dataclass
class Encoder:
    """A loaded checkpoint and how to run it.

    ``kind`` is ``"audioclip"`` (vectors are L2-normalised embeddings) or
    ``"classifier"`` (a standalone ESResNeXt-fbsp: audio "vectors" are its class
    logits). ``checkpoint_id`` names the weights in caches and reports.
    """

    model: torch.nn.Module
    kind: EncoderKind
    checkpoint: str
    checkpoint_id: str
    device: torch.device
    precision: str = "fp32"

    @property
    def image_size(self) -> int | None:
        visual = getattr(self.model, "visual", None)
        return None if visual is None else int(visual.image_size)

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """A batch of model inputs -> float32 vectors on the CPU."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            if self.kind == "classifier":
                if modality != "audio":
                    raise ValueError("a standalone audio classifier has no image or text head")
                return self.model(batch.to(self.device)).float().cpu()
            encode = self.model.encode_audio if modality == "audio" else self.model.encode_image
            return F.normalize(encode(batch.to(self.device)).float(), dim=-1).cpu()

    def class_vectors(self, texts: Sequence[str], templates: Sequence[str] = ("{}",), chunk: int = 256) -> torch.Tensor:
        """Normalised text vectors ``(len(texts), dim)``: each text in every template, averaged, renormalised.

        Unlike :func:`audioclip.inference.text_classifier`, repeated texts are
        allowed (CLIP's ImageNet names contain two pairs of equal names).
        """
        if self.kind != "audioclip":
            raise ValueError("a standalone audio classifier has no text head")
        with torch.no_grad():  # ordinary tensors, usable with autograd, unlike inference_mode's
            return text_classifier(self.model, texts, templates, batch_size=chunk).cpu()

    def logit_scales(self) -> dict[str, float]:
        if self.kind != "audioclip":
            return {}
        return {k: float(v.detach().cpu()) for k, v in self.model.logit_scales().items()}


def load_encoder(
    checkpoint: str | os.PathLike,
    config: str | None = None,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    audio_mode: str = "default",
) -> Encoder:
    """An AudioCLIP checkpoint (registry name or file), or a standalone ESResNeXt-fbsp classifier, ready to encode.

    Built by :func:`audioclip.create_model`: the architecture is recognised
    from the file unless ``config`` names it; ``audio_mode`` is the inference
    transform of the audio head (``"default"`` is exact).
    """
    from ..factory import checkpoint_id, create_model

    model = create_model(checkpoint, config=config, device=device, cache_dir=cache_dir, offline=offline,
                         audio_mode=audio_mode)
    kind = "audioclip" if hasattr(model, "encode_audio") else "classifier"
    device = next(model.parameters()).device
    return Encoder(model, kind, str(checkpoint), checkpoint_id(model), device, precision)


# -- the cache --------------------------------------------------------------------


def default_store_dir() -> Path:
    """``$AUDIOCLIP_CACHE/eval-embeddings`` (or the user cache's)."""
    from ..checkpoints import cache_dir

    return Path(cache_dir()) / "eval-embeddings"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", text)


class EmbeddingStore:
    """Vectors by item identity, one ``.npz`` per (checkpoint, dataset, modality, input conventions).

    ``folder=None`` uses :func:`default_store_dir`; ``enabled=False`` keeps
    nothing (every run encodes).
    """

    def __init__(self, folder: str | os.PathLike | None = None, enabled: bool = True):
        self.folder = Path(folder) if folder is not None else default_store_dir()
        self.enabled = enabled

    def path(self, checkpoint_id: str, set_identity: str, modality: str, input_identity: str) -> Path:
        return self.folder / _safe(checkpoint_id) / f"{_safe(set_identity)}-{modality}-{input_identity}.npz"

    def load(self, path: Path) -> dict[str, np.ndarray]:
        if not self.enabled or not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as npz:
                return dict(zip(npz["keys"].tolist(), npz["vectors"]))
        except Exception as e:  # a torn or foreign file: start again rather than fail
            print(f"audioclip: ignoring unreadable embedding cache {path} ({e})", file=sys.stderr)
            return {}

    def save(self, path: Path, vectors: dict[str, np.ndarray], meta: dict) -> None:
        if not self.enabled or not vectors:
            return
        keys = list(vectors)
        with atomic_write(path, "wb") as f:
            np.savez(f, keys=np.array(keys, dtype=str),
                     vectors=np.stack([vectors[k] for k in keys]).astype(np.float32))
        write_text_atomic(path.with_suffix(".json"), json.dumps({**meta, "count": len(keys)}, indent=2))


# -- decoding ------------------------------------------------------------------------


def _source(item: EvalItem, modality: str) -> str | None:
    return item.audio if modality == "audio" else item.image


def file_identity(path: str) -> str:
    """Path, size and modification time: a changed file is embedded again."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{os.path.realpath(path)}|missing"
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def load_picture(source: str, image_size: int) -> torch.Tensor:
    """One picture: an image file, the central frame of a folder of frames, or a video's central frame."""
    if os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
        if not names:
            raise MediaError(source, "frame folder holds no pictures")
        return load_image(os.path.join(source, names[len(names) // 2]), image_size=image_size)
    if os.path.splitext(source)[1].lower() in VIDEO_EXTENSIONS:
        return load_video_frames(source, which="central", image_size=image_size)[0]
    return load_image(source, image_size=image_size)


class _Inputs(Dataset):
    def __init__(self, sources: list[str], modality: str, conventions: AudioConventions | None, image_size: int | None):
        self.sources, self.modality = sources, modality
        self.conventions, self.image_size = conventions, image_size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict:
        source = self.sources[i]
        try:
            if self.modality == "audio":
                c = self.conventions
                wave = load_audio(source, sample_rate=c.sample_rate, mono=False, max_duration=c.max_duration)
                x = c.apply(wave)
            else:
                x = load_picture(source, self.image_size)
        except MediaError as e:
            return {"i": i, "error": e.reason}
        except Exception as e:  # a worker must not die on one file
            return {"i": i, "error": f"{type(e).__name__}: {e}"}
        return {"i": i, "x": x}


def _one_thread(parent: int, worker_id: int) -> None:
    torch.set_num_threads(1)
    die_with_parent(parent)


def _as_list(batch):
    return batch


# -- embedding -------------------------------------------------------------------------


@dataclass
class ItemEmbeddings:
    """Vectors of ``items`` for one modality, in the items' order; failed rows are NaN and ``ok`` False."""

    modality: Modality
    vectors: np.ndarray
    ok: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    computed: int = 0
    cached: int = 0


def embed_items(
    encoder: Encoder,
    items: Sequence[EvalItem],
    modality: str,
    *,
    set_identity: str,
    conventions: AudioConventions | None = None,
    store: EmbeddingStore | None = None,
    batch_size: int = 16,
    workers: int = 0,
    flush_every: int = 2048,
    progress: bool = True,
) -> ItemEmbeddings:
    """Embed the ``modality`` ("audio" or "image") of every item that has one; reuse cached vectors.

    Items without that modality get ``ok=False`` and no failure entry; files
    that cannot be decoded (or that the model refuses) are listed in
    ``failures``.
    """
    if modality == "audio" and conventions is None:
        raise ValueError("audio embedding needs the dataset's conventions")
    store = store or EmbeddingStore(enabled=False)
    input_identity = conventions.identity() if modality == "audio" else f"image{encoder.image_size}-central"
    cache_path = store.path(encoder.checkpoint_id, set_identity, modality, input_identity)
    cache = store.load(cache_path)
    meta = {"checkpoint": encoder.checkpoint_id, "dataset": set_identity, "modality": modality,
            "inputs": conventions.describe() if modality == "audio" else f"CLIP preprocessing, {encoder.image_size} px"}

    n = len(items)
    ids = [file_identity(_source(it, modality)) if _source(it, modality) else None for it in items]
    found = [cache.get(k) if k is not None else None for k in ids]
    dim = next((v.shape[0] for v in found if v is not None), None)
    todo = [i for i in range(n) if ids[i] is not None and found[i] is None]
    result = ItemEmbeddings(modality, np.zeros((0, 0), np.float32), np.zeros(n, bool),
                        cached=sum(v is not None for v in found))
    new: dict[int, np.ndarray] = {}

    if todo:
        workers = decoding_workers(workers, len(todo))
        loader = DataLoader(
            _Inputs([_source(items[i], modality) for i in todo], modality, conventions, encoder.image_size),
            batch_size=batch_size, num_workers=workers, collate_fn=_as_list,
            worker_init_fn=functools.partial(_one_thread, os.getpid()) if workers else None,
            prefetch_factor=2 if workers else None,
        )
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="clip" if modality == "audio" else "image", dynamic_ncols=True,
                   disable=None if progress else True, file=sys.stderr, desc=f"embedding {modality}")
        since_flush = 0
        try:
            for batch in loader:
                good = []
                for entry in batch:
                    item_index = todo[entry["i"]]
                    if "error" in entry:
                        result.failures.append((_source(items[item_index], modality), entry["error"]))
                    else:
                        good.append((item_index, entry["x"]))
                for group in _by_shape(good):
                    for item_index, vector in _encode_isolating(encoder, modality, group, result, items):
                        new[item_index] = vector
                        cache[ids[item_index]] = vector
                        since_flush += 1
                bar.update(len(batch))
                if since_flush >= flush_every:
                    store.save(cache_path, cache, meta)
                    since_flush = 0
        finally:
            bar.close()
            if since_flush:
                store.save(cache_path, cache, meta)
        result.computed = len(new)
        if dim is None and new:
            dim = next(iter(new.values())).shape[0]

    dim = dim or 1
    vectors = np.full((n, dim), np.nan, np.float32)
    for i in range(n):
        v = new.get(i) if found[i] is None else found[i]
        if v is not None:
            vectors[i] = v
            result.ok[i] = True
    result.vectors = vectors
    for path, reason in result.failures:
        print(f"audioclip: skipped {path}: {reason}", file=sys.stderr)
    return result


def _by_shape(entries: list[tuple[int, torch.Tensor]]) -> list[list[tuple[int, torch.Tensor]]]:
    groups: dict[tuple, list] = {}
    for entry in entries:
        groups.setdefault(tuple(entry[1].shape), []).append(entry)
    return list(groups.values())


def _encode_isolating(encoder: Encoder, modality: str, group, result: ItemEmbeddings, items):
    """Encode a same-shape group; if the model refuses the batch, find the item(s) it refuses."""
    try:
        vectors = encoder.encode(modality, torch.stack([x for _, x in group]))
    except (ValueError, RuntimeError) as err:
        if len(group) == 1:
            result.failures.append((_source(items[group[0][0]], modality), f"model refused the input: {err}"))
            return []
        out = []
        for entry in group:
            out += _encode_isolating(encoder, modality, [entry], result, items)
        return out
    return [(i, v.numpy()) for (i, _), v in zip(group, vectors)]
