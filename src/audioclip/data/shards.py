"""AudioSet-scale data as WebDataset shards: written once by ``audioclip prepare shards``, streamed in training.

A shard is a plain tar file (WebDataset's format) of samples, each made of

    <key>.flac    the decoded audio at 44.1 kHz, all channels, 16-bit (or <key>.npy, float32)
    <key>.json    {"labels": [...], "targets": [...], "weight": w, "key": ..., "source": path}
    <key>.f00.jpg ... optional frames that go with the clip

and ``manifest.json`` next to the shards lists the splits, their shards and
sizes, the classes and the longest clip. Reading needs no random access: each
process and each DataLoader worker streams its own share of the shards.

In training every process yields the same number of batches per epoch (the
size of the training split divided by the global batch size), cycling through
its shards when they run short, which keeps DDP processes in step. Shard order
and the shuffle buffer are seeded by (seed, epoch), augmentations by (seed,
epoch, sample key).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..io import atomic_write
from ..media import MediaError
from ..media.sniff import IMAGE_EXTENSIONS
from .augment import AudioAugment, sample_generator
from .cache import AudioCache
from .dataset import SampleMaker
from .cliplist import Clip

__all__ = ["MANIFEST", "ShardStream", "read_manifest", "write_shards"]

MANIFEST = "manifest.json"
FORMAT = "audioclip-shards-v1"


# -- writing ------------------------------------------------------------------


def _encode_audio(wave: torch.Tensor, audio_format: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if audio_format == "flac":
        pcm = np.clip(np.round(wave.numpy().T * 32768.0), -32768, 32767).astype(np.int16)
        soundfile.write(buf, pcm, 44100, format="FLAC", subtype="PCM_16")
        return "flac", buf.getvalue()
    if audio_format == "npy":
        np.save(buf, wave.numpy().astype(np.float32), allow_pickle=False)
        return "npy", buf.getvalue()
    raise ValueError(f"audio format must be flac or npy, got {audio_format!r}")


def _frame_files(clip: Clip, limit: int) -> list[str]:
    if clip.image is None:
        return []
    if os.path.isdir(clip.image):
        names = sorted(n for n in os.listdir(clip.image) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
        return [os.path.join(clip.image, n) for n in names][:limit]
    return [clip.image]


def write_shards(
    clips: Sequence[Clip],
    folder: str | os.PathLike,
    split: str,
    cache: AudioCache,
    *,
    max_count: int = 1000,
    audio_format: str = "flac",
    frames: int = 0,
    progress: bool = False,
) -> dict:
    """Write ``clips`` as ``<folder>/<split>-NNNNNN.tar``; returns the split's manifest entry.

    Audio is decoded through ``cache`` (its sample rate, all channels). Clips that
    fail to decode are left out and listed under ``"bad"``. ``frames > 0`` stores
    up to that many of each clip's pictures (as found in ``clip.image``).
    """
    import webdataset as wds
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{split}-*.tar"):
        old.unlink()
    pattern = str(folder / f"{split}-%06d.tar")
    bad: list[str] = []
    count = 0
    longest = 0
    # Each shard is written through atomic_write: ShardWriter opens a shard with
    # ``opener`` and reports it finished with ``post``, which publishes it. A
    # failure discards the shard being written instead of leaving it torn
    # (ShardWriter's own ``with`` would close it as if finished).
    shard = contextlib.ExitStack()

    def opener(name: str):
        return shard.enter_context(atomic_write(name, "wb"))

    def post(name: str) -> None:
        shard.close()

    sink = None
    try:
        sink = wds.ShardWriter(pattern, maxcount=max_count, verbose=0, opener=opener, post=post)
        for i, clip in enumerate(tqdm(clips, desc=f"shards {split}", disable=not progress, unit="clip")):
            try:
                wave = cache.load(clip.path)
            except MediaError as e:
                bad.append(str(e))
                continue
            ext, data = _encode_audio(wave, audio_format)
            sample = {
                "__key__": f"{split}{i:09d}",
                ext: data,
                "json": json.dumps(
                    {
                        "labels": list(clip.labels),
                        "targets": list(clip.targets),
                        "weight": clip.weight,
                        "key": clip.key,
                        "group": clip.group,
                        "source": clip.path,
                    }
                ).encode(),
            }
            for j, frame in enumerate(_frame_files(clip, frames)):
                sample[f"f{j:02d}{os.path.splitext(frame)[1].lower()}"] = Path(frame).read_bytes()
            sink.write(sample)
            count += 1
            longest = max(longest, wave.shape[-1])
        sink.close()
    except BaseException:
        tar = getattr(sink, "tarstream", None)
        if tar is not None:  # end the tar stream now, into the file about to be discarded, not at garbage collection
            with contextlib.suppress(Exception):
                tar.close()
        shard.__exit__(*sys.exc_info())
        raise
    shards = sorted(p.name for p in folder.glob(f"{split}-*.tar"))
    return {"shards": shards, "count": count, "longest_samples": longest, "bad": bad}


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a shard folder (run 'audioclip prepare shards' first)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


# -- reading -------------------------------------------------------------------


def _decode_audio(sample: dict) -> torch.Tensor:
    if "flac" in sample:
        pcm, _ = soundfile.read(io.BytesIO(sample["flac"]), dtype="int16", always_2d=True)
        return torch.from_numpy(pcm.T.astype(np.float32) / 32768.0)
    if "npy" in sample:
        return torch.from_numpy(np.load(io.BytesIO(sample["npy"]), allow_pickle=False))
    raise ValueError("sample has no .flac or .npy audio")


class ShardStream(SampleMaker, IterableDataset):
    """Stream samples (the dicts of :mod:`audioclip.data.dataset`) from shards.

    Training (``batches_per_rank`` given): a shuffled, endless pass over this
    process's shards, cut after exactly ``batches_per_rank * local_batch``
    samples per process. Evaluation: one pass in order, every sample once
    across all processes and workers. ``settings`` are :class:`~.dataset.SampleMaker`'s.
    """

    def __init__(
        self,
        shards: Sequence[str],
        num_classes: int,
        augment: AudioAugment,
        *,
        rank: int = 0,
        world: int = 1,
        batches_per_rank: int | None = None,
        local_batch: int = 1,
        shuffle_buffer: int = 1000,
        **settings,
    ):
        if not shards:
            raise ValueError("no shards to read")
        super().__init__(num_classes, augment, **settings)
        self.shards = list(shards)
        self.rank, self.world = rank, world
        self.batches_per_rank = batches_per_rank
        self.local_batch = local_batch
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def train(self) -> bool:
        return self.batches_per_rank is not None

    def __len__(self) -> int:  # samples this process yields (training), for progress bars
        if self.train:
            return self.batches_per_rank * self.local_batch
        raise TypeError("an evaluation stream has no fixed length")

    # which shards / samples belong to this process and worker
    def _plan(self) -> tuple[list[str], int, int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        slots, slot = self.world * nw, self.rank * nw + wid
        shards = list(self.shards)
        if self.train:
            random.Random(f"{self.seed}:{self.epoch}:order").shuffle(shards)
        if len(shards) >= slots:
            return shards[slot::slots], 1, 0, wid
        return shards, slots, slot, wid  # fewer shards than readers: split by sample

    def _raw(self, shards: list[str], stride: int, offset: int, passes: int | None) -> Iterator[dict]:
        import webdataset as wds

        n = 0
        cycle = 0
        while passes is None or cycle < passes:
            order = list(shards)
            if self.train and cycle:
                random.Random(f"{self.seed}:{self.epoch}:{cycle}").shuffle(order)
            for sample in wds.tarfile_samples([{"url": s} for s in order]):
                if n % stride == offset:
                    yield sample
                n += 1
            cycle += 1
            if n == 0:
                return

    def __iter__(self) -> Iterator[dict]:
        shards, stride, offset, wid = self._plan()
        if not self.train:
            for sample in self._raw(shards, stride, offset, passes=1):
                yield self._item(sample)
            return
        info = get_worker_info()
        nw = info.num_workers if info is not None else 1
        batches = self.batches_per_rank // nw + (wid < self.batches_per_rank % nw)
        quota = batches * self.local_batch
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{wid}:buffer")
        buffer: list[dict] = []
        produced = 0
        for sample in self._raw(shards, stride, offset, passes=None):
            if produced >= quota:
                break
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            j = rng.randrange(len(buffer))
            buffer[j], sample = sample, buffer[j]
            yield self._item(sample)
            produced += 1
        rng.shuffle(buffer)
        while produced < quota and buffer:
            yield self._item(buffer.pop())
            produced += 1

    def _item(self, sample: dict) -> dict:
        key = sample["__key__"]
        meta = json.loads(sample["json"])
        g = sample_generator(self.seed, self.epoch, zlib.crc32(key.encode())) if self.augment.train else None
        try:
            wave = self.conventions(_decode_audio(sample))
        except Exception as e:  # a damaged sample must not end the epoch
            return {"index": -1, "bad": f"{sample.get('__url__', '?')}:{key}: {e}"}
        item = {
            "index": -1,
            "key": meta.get("key") or key,
            "audio": self.augment(wave, g),
            "target": self.target_of(meta["targets"]),
            "text": self.text_of(meta["labels"]),
            "weight": float(meta.get("weight", 1.0)),
        }
        if self.image:
            frames = sorted(k for k in sample if k.startswith("f") and k[1:3].isdigit())
            if not frames:
                return {"index": -1, "bad": f"{key}: no frames stored (prepare with --frames)"}
            pick = int(torch.randint(len(frames), (), generator=g)) if g is not None else len(frames) // 2
            try:
                item["image"] = _image_from_bytes(sample[frames[pick]], f"{key}.{frames[pick]}", self.image_size)
            except MediaError as e:
                return {"index": -1, "bad": str(e)}
        return item


def _image_from_bytes(data: bytes, name: str, image_size: int) -> torch.Tensor:
    """A stored frame -> CLIP-normalised tensor, preprocessed as :func:`audioclip.media.load_image` does."""
    from PIL import Image, ImageOps

    from ..media import clip_preprocess, to_rgb

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except Exception as e:  # Pillow's many ways of saying "broken"
        raise MediaError(name, f"stored frame cannot be read ({e})") from e
    return clip_preprocess(rgb, image_size)
