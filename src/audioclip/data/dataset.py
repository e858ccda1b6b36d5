"""Clips -> training samples: decode (through the cache), convention, augmentation, image.

A sample is a dict::

    index   position of the clip in the dataset
    audio   float32 (channels, length) in [-1, 1] at 44.1 kHz
    target  int class (single-label) or float multi-hot (num_classes,) (multi-label)
    text    the label texts in the prompt, joined with ", " (the original's way)
    weight  sample weight (AudioSet class weighting; 1 otherwise)
    image   float32 (3, S, S), CLIP-normalised, when images are asked for

A clip that cannot be decoded gives ``None``; :func:`collate` drops it and
reports it in the batch (``skipped``, ``bad``), so an epoch goes on.

Conventions, chosen once for every dataset (``channels``, ``amplitude``):

- ``channels="mono"`` (default) averages the channels; ``"stereo"`` repeats a mono
  clip into two channels and keeps the first two otherwise (the original
  UrbanSound8K loader); ``"keep"`` keeps them as decoded (a batch then needs
  clips with equal channel counts).
- ``amplitude="raw"`` (default) keeps the file's own level, decoded to [-1, 1];
  ``"minmax"`` stretches each clip so that its minimum and maximum reach the ends
  of the 16-bit range, as the original UrbanSound8K loader did (a silent clip stays
  silent instead of dividing by zero).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch.utils.data import DataLoader, Dataset

from ..media import MediaError, load_image, load_video_frames
from ..media.sniff import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .augment import AudioAugment, sample_generator
from .cache import AudioCache
from .cliplist import Clip

__all__ = ["Amplitude", "Channels", "ClipDataset", "SampleMaker", "apply_conventions", "collate", "measure_longest"]

#: how a clip's channels are made uniform (see the module's docstring)
Channels = Literal["mono", "stereo", "keep"]
#: whether a clip keeps its level or is stretched to the 16-bit range
Amplitude = Literal["raw", "minmax"]
CHANNELS: tuple[Channels, ...] = get_args(Channels)
AMPLITUDES: tuple[Amplitude, ...] = get_args(Amplitude)
_INT16_TOP = 32767.0 / 32768.0


def apply_conventions(wave: torch.Tensor, channels: Channels = "mono", amplitude: Amplitude = "raw") -> torch.Tensor:
    """Apply the channel and amplitude conventions to a decoded ``(channels, samples)`` clip."""
    if channels == "mono":
        if wave.shape[0] > 1:
            wave = wave.mean(dim=0, keepdim=True)
    elif channels == "stereo":
        wave = wave.repeat(2, 1) if wave.shape[0] == 1 else wave[:2]
    elif channels != "keep":
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if amplitude == "minmax":
        lo, hi = wave.min(), wave.max()
        if hi > lo:
            wave = (wave - lo) * ((1.0 + _INT16_TOP) / (hi - lo)) - 1.0
        else:
            wave = torch.zeros_like(wave)
    elif amplitude != "raw":
        raise ValueError(f"amplitude must be one of {AMPLITUDES}, got {amplitude!r}")
    return wave.contiguous()


class SampleMaker:
    """How a decoded clip becomes a sample; shared by :class:`ClipDataset` and :class:`~.shards.ShardStream`.

    ``num_classes`` and ``multilabel`` shape the target (a class index, or a
    multi-hot vector); ``augment`` and ``seed`` the audio; ``channels`` and
    ``amplitude`` are the conventions of :func:`apply_conventions`; ``prompt``
    formats each label text; ``image`` adds a picture of ``image_size`` pixels.
    """

    def __init__(
        self,
        num_classes: int,
        augment: AudioAugment,
        *,
        multilabel: bool = False,
        seed: int = 0,
        channels: Channels = "mono",
        amplitude: Amplitude = "raw",
        prompt: str = "{}",
        image: bool = False,
        image_size: int = 224,
    ):
        if channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
        if amplitude not in AMPLITUDES:
            raise ValueError(f"amplitude must be one of {AMPLITUDES}, got {amplitude!r}")
        self.num_classes = num_classes
        self.augment = augment
        self.multilabel = multilabel
        self.seed = seed
        self.channels = channels
        self.amplitude = amplitude
        self.prompt = prompt
        self.image = image
        self.image_size = image_size

    def conventions(self, wave: torch.Tensor) -> torch.Tensor:
        return apply_conventions(wave, self.channels, self.amplitude)

    def target_of(self, targets: Sequence[int]):
        """A class index (single-label) or a float multi-hot ``(num_classes,)`` (multi-label)."""
        if not self.multilabel:
            return targets[0]
        hot = torch.zeros(self.num_classes)
        hot[list(targets)] = 1.0
        return hot

    def text_of(self, labels: Sequence[str]) -> str:
        return ", ".join(self.prompt.format(label) for label in labels)


class ClipDataset(SampleMaker, Dataset):
    """A map-style dataset over ``clips``; index it with ``i`` or ``(epoch, i)``.

    The epoch takes part in seeding the augmentation of sample ``i`` (see
    :func:`audioclip.data.augment.sample_generator`), so samplers pass it along.
    ``settings`` are :class:`SampleMaker`'s; ``num_frames`` the frames looked
    at when a clip's picture comes from its video.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        num_classes: int,
        augment: AudioAugment,
        cache: AudioCache,
        *,
        num_frames: int = 10,
        **settings,
    ):
        super().__init__(num_classes, augment, **settings)
        self.clips = list(clips)
        self.cache = cache
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        clip = self.clips[i]
        g = sample_generator(self.seed, epoch, i) if self.augment.train else None
        try:
            wave = self.conventions(self.cache.load(clip.path))
            item = {
                "index": i,
                "audio": self.augment(wave, g),
                "target": self.target_of(clip.targets),
                "text": self.text_of(clip.labels),
                "weight": clip.weight,
            }
            if self.image:
                item["image"] = self.load_picture(clip, g)
        except MediaError as e:
            return {"index": i, "bad": str(e)}
        return item

    def load_picture(self, clip: Clip, g: torch.Generator | None) -> torch.Tensor:
        """One picture for the clip: a random one of its frames in training, the central one otherwise."""
        source = clip.image
        if source is None:
            if os.path.splitext(clip.path)[1].lower() in VIDEO_EXTENSIONS:
                which = "random" if g is not None else "central"
                frames = load_video_frames(
                    clip.path, self.num_frames, which=which, image_size=self.image_size, generator=g
                )
                return frames[0]
            raise MediaError(clip.path, "no picture for this clip (no frames found and not a video)")
        if os.path.isdir(source):
            names = sorted(n for n in os.listdir(source) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
            if not names:
                raise MediaError(source, "frame folder holds no pictures")
            pick = int(torch.randint(len(names), (), generator=g)) if g is not None else len(names) // 2
            source = os.path.join(source, names[pick])
        return load_image(source, image_size=self.image_size)


def collate(items: Sequence[dict]) -> dict:
    """Stack good samples; count and describe the bad ones (``skipped``, ``bad``)."""
    good = [x for x in items if "bad" not in x]
    bad = [x["bad"] for x in items if "bad" in x]
    batch: dict = {"skipped": len(bad), "bad": bad, "size": len(good)}
    if not good:
        return batch
    channels = {x["audio"].shape[0] for x in good}
    if len(channels) > 1:
        raise ValueError(
            f"clips with different channel counts {sorted(channels)} in one batch; "
            "use audio.channels: mono or stereo"
        )
    batch["index"] = torch.tensor([x["index"] for x in good])
    batch["audio"] = torch.stack([x["audio"] for x in good])
    first = good[0]
    if isinstance(first["target"], torch.Tensor):
        batch["target"] = torch.stack([x["target"] for x in good])
    else:
        batch["target"] = torch.tensor([x["target"] for x in good])
    batch["text"] = [x["text"] for x in good]
    batch["weight"] = torch.tensor([x["weight"] for x in good], dtype=torch.float32)
    if "image" in first:
        batch["image"] = torch.stack([x["image"] for x in good])
    if "key" in first:
        batch["key"] = [x["key"] for x in good]
    return batch


class _Lengths(Dataset):
    def __init__(self, clips: Sequence[Clip], cache: AudioCache):
        self.clips, self.cache = clips, cache

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        try:
            return self.cache.load(self.clips[i].path).shape[-1]
        except MediaError:
            return 0


def measure_longest(clips: Sequence[Clip], cache: AudioCache, num_workers: int = 0) -> int:
    """The longest clip in samples, decoding (and so caching) every clip once."""
    loader = DataLoader(_Lengths(clips, cache), batch_size=16, num_workers=num_workers, collate_fn=list)
    return max((n for batch in loader for n in batch), default=0)
