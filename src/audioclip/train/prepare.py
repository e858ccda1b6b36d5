"""``audioclip prepare``: turn raw data into what training reads fastest.

- ``extract``: from video files (AudioSet-style downloads), the audio track as a
  44.1 kHz 16-bit FLAC and the paper's ten equally spaced frames as JPEGs::

      OUT/clips/<name>.flac
      OUT/frames/<name>/00.jpg ... 09.jpg

  which is the layout the AudioSet reader takes (``clips_dir: clips``,
  ``frames_dir: frames``). Files already extracted are skipped, so an
  interrupted run continues; unreadable videos are listed and skipped.
- ``shards``: a config's train / validation / test splits as WebDataset shards
  plus ``manifest.json`` (see :mod:`audioclip.data.shards`); train from them
  with ``data.dataset: shards``, ``data.root: OUT``.
"""

from __future__ import annotations

import json
import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from ..data import AudioCache, ValidationSpec, read_dataset, split_index, write_shards
from ..media.workers import decoding_workers, die_with_parent
from ..io import atomic_path, write_text_atomic
from ..media import CLIP_MEAN, CLIP_STD, MediaError, load_audio, load_video_frames
from ..media.sniff import VIDEO_EXTENSIONS
from ..model import load_model_config

__all__ = ["extract_video", "extract_videos", "prepare_shards"]


def _frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """CLIP-normalised ``(k, 3, S, S)`` -> uint8 ``(k, S, S, 3)``."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    rgb = (frames * std + mean).clamp(0.0, 1.0)
    return (rgb * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def extract_video(video: str | os.PathLike, out: str | os.PathLike, num_frames: int = 10,
                  frame_size: int = 224, sample_rate: int = 44100) -> str | None:
    """Extract one video; returns None, or ``"path: reason"`` when it cannot be read."""
    import soundfile
    from PIL import Image

    video, out = Path(video), Path(out)
    name = video.stem
    audio_path = out / "clips" / f"{name}.flac"
    frame_dir = out / "frames" / name
    try:
        if not audio_path.exists():
            wave = load_audio(video, sample_rate=sample_rate)
            pcm = np.clip(np.round(wave.numpy().T * 32768.0), -32768, 32767).astype(np.int16)
            with atomic_path(audio_path) as tmp:
                soundfile.write(tmp, pcm, sample_rate, format="FLAC", subtype="PCM_16")
        if not (frame_dir / f"{num_frames - 1:02d}.jpg").exists():
            frames = _frames_to_uint8(load_video_frames(video, num_frames, which="all", image_size=frame_size))
            for i, frame in enumerate(frames):
                with atomic_path(frame_dir / f"{i:02d}.jpg") as tmp:
                    Image.fromarray(frame).save(tmp, format="JPEG", quality=95)
    except MediaError as e:
        return str(e)
    return None


def _extract_one(args):
    return extract_video(*args)


def extract_videos(source: str | os.PathLike, out: str | os.PathLike, num_frames: int = 10,
                   frame_size: int = 224, workers: int = 1, progress: bool = True) -> dict:
    """Extract every video under ``source`` into ``out``; returns counts and the unreadable files."""
    from tqdm import tqdm

    source = Path(source)
    videos = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        raise FileNotFoundError(f"no video files under {source}")
    stems: dict[str, Path] = {}
    for v in videos:
        if v.stem in stems:
            raise ValueError(f"two videos share the name {v.stem!r}: {stems[v.stem]} and {v}")
        stems[v.stem] = v
    jobs = [(v, out, num_frames, frame_size) for v in videos]
    bad = []
    bar = tqdm(total=len(jobs), unit="video", desc="extract", disable=not progress)
    workers = decoding_workers(max(1, workers), len(jobs))
    if workers > 1:  # processes that die with this one (a killed job leaves no extractor running)
        with get_context("spawn").Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            for result in pool.imap_unordered(_extract_one, jobs, chunksize=4):
                bar.update(1)
                if result:
                    bad.append(result)
    else:
        for job in jobs:
            result = _extract_one(job)
            bar.update(1)
            if result:
                bad.append(result)
    bar.close()
    return {"videos": len(videos), "extracted": len(videos) - len(bad), "bad": sorted(bad)}


def prepare_shards(cfg: dict, out: str | os.PathLike, max_count: int = 1000, audio_format: str = "flac",
                   frames: int = 0, progress: bool = True) -> dict:
    """Write the config's splits as shards under ``out`` and return the manifest."""
    d, a = cfg["data"], cfg["audio"]
    if d["dataset"] == "shards":
        raise ValueError("the config already reads shards; point it at the raw dataset to prepare")
    out = Path(out)
    index = read_dataset(d["dataset"], d["root"], **(d["options"] or {}))
    validation = ValidationSpec(seed=cfg["train"]["seed"], **(d["validation"] or {"kind": "none"}))
    if validation.kind == "test":
        validation = ValidationSpec(kind="none")  # shards keep val and test apart; select-on-test is a training choice
    splits = split_index(
        index,
        test_fold=d["test_fold"] if index.folds else None,
        test_split=d["test_split"] if any(c.split for c in index.clips) else None,
        validation=validation,
        test_fraction=d["test_fraction"],
    )
    rate = int(load_model_config(cfg["model"]["config"]).get("audio_cfg", {}).get("sample_rate", 44100))
    cache = AudioCache(d["cache_dir"], sample_rate=rate, enabled=d["cache"], dtype=d["cache_dtype"],
                       max_duration=a["max_duration"])
    manifest = {
        "format": "audioclip-shards-v1",
        "source": f"{index.summary()}; {splits.description}",
        "classes": index.classes,
        "multilabel": index.multilabel,
        "sample_rate": rate,
        "splits": {},
    }
    for name, clips in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if clips:
            manifest["splits"][name] = write_shards(clips, out, name, cache, max_count=max_count,
                                                    audio_format=audio_format, frames=frames, progress=progress)
    manifest["longest_samples"] = max(s["longest_samples"] for s in manifest["splits"].values())
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
