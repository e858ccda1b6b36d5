"""Datasets: readers on generated trees with the official layouts, the real shared metadata, splits,
the decoding cache, bad files, conventions, samplers and WebDataset shards."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audioclip.data import (
    AudioAugment,
    AudioCache,
    ClipDataset,
    EvalBatchSampler,
    GlobalBatchSampler,
    ShardStream,
    ValidationSpec,
    apply_conventions,
    collate,
    read_audioset,
    read_dataset,
    read_esc50,
    read_folder,
    read_manifest,
    read_us8k,
    split_index,
    write_shards,
)
from audioclip.media import MediaError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ESC50_SHARED = SHARED / "esc50"
US8K_SHARED = SHARED / "us8k"


def write_wav(path: Path, seconds: float = 0.1, rate: int = 44100, channels: int = 1, freq: float = 440.0,
              amplitude: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = amplitude * np.sin(2 * np.pi * freq * t)
    data = np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), rate, subtype="PCM_16")
    return path


# -- ESC-50 --------------------------------------------------------------------------

ESC_CLASSES = {0: "dog", 1: "rooster", 20: "crying_baby", 41: "chainsaw"}


def make_esc50(root: Path, ext: str = ".wav", drop: tuple[str, ...] = ()) -> Path:
    """5 folds x 4 classes x 2 clips (takes A and B of one recording), official columns."""
    rows = []
    for fold in range(1, 6):
        for target, category in ESC_CLASSES.items():
            src = 1000 * fold + target
            for take in "AB":
                name = f"{fold}-{src}-{take}-{target}.wav"
                rows.append([name, fold, target, category, str(target in (0, 1, 41)), src, take])
                if name not in drop:
                    write_wav(root / "audio" / (Path(name).stem + ext), freq=200 + 10 * target)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def test_esc50_reader_folds_labels_and_groups(tmp_path):
    root = make_esc50(tmp_path / "ESC-50", drop=("3-3001-A-1.wav",))
    index = read_esc50(root)
    assert index.classes[0] == "dog" and "crying baby" in index.classes  # underscores -> spaces
    assert index.folds == [1, 2, 3, 4, 5] and index.max_duration == 5.0
    assert len(index.clips) == 39 and index.missing == [str(root / "audio" / "3-3001-A-1.wav")]
    clip = next(c for c in index.clips if c.key == "2-2020-B-20")
    assert clip.labels == ("crying baby",) and clip.targets == (index.classes.index("crying baby"),)
    assert clip.fold == 2 and clip.group == "esc50:2020"


def test_esc50_targets_follow_the_metadata(tmp_path):
    # classes are indexed by the metadata's target column, here 0, 1, 20, 41 -> 4 names in order
    index = read_esc50(make_esc50(tmp_path / "e"))
    assert index.classes == ["dog", "rooster", "crying baby", "chainsaw"]


def test_esc50_finds_other_extensions_and_esc10_subset(tmp_path):
    root = make_esc50(tmp_path / "e", ext=".flac")
    index = read_esc50(root, subset="esc10")
    assert index.name == "ESC-10" and index.classes == ["dog", "rooster", "chainsaw"]
    assert len(index.clips) == 30 and not index.missing
    assert all(c.path.endswith(".flac") for c in index.clips)
    assert {c.targets[0] for c in index.clips} == {0, 1, 2}  # renumbered
    chainsaw = [c for c in index.clips if c.labels == ("chainsaw",)]
    assert chainsaw and all(c.targets == (2,) for c in chainsaw)


def test_split_test_fold_and_validation_from_training_folds(tmp_path):
    index = read_esc50(make_esc50(tmp_path / "e"))
    s = split_index(index, test_fold=2, validation=ValidationSpec(fraction=0.25, seed=3))
    assert {c.fold for c in s.test} == {2} and len(s.test) == 8
    assert 2 not in {c.fold for c in s.train + s.val}
    keys = [c.key for c in s.train + s.val + s.test]
    assert len(keys) == len(set(keys)) == 40  # disjoint, complete
    # whole recordings on one side only, and every class both in training and validation
    assert not {c.group for c in s.train} & {c.group for c in s.val}
    assert {c.targets for c in s.val} == {c.targets for c in s.train}
    assert 6 <= len(s.val) <= 10  # about 25 % of 32, whole pairs
    assert not s.val_is_test


def test_split_validation_fold_and_select_on_test(tmp_path):
    index = read_esc50(make_esc50(tmp_path / "e"))
    s = split_index(index, test_fold=5, validation=ValidationSpec(kind="fold"))
    assert {c.fold for c in s.val} == {1} and {c.fold for c in s.train} == {2, 3, 4}
    s = split_index(index, test_fold=2, validation=ValidationSpec(kind="fold"))
    assert {c.fold for c in s.val} == {3}
    s = split_index(index, test_fold=1, validation=ValidationSpec(kind="test"))
    assert s.val_is_test and s.val == s.test and {c.fold for c in s.train} == {2, 3, 4, 5}
    assert "optimistic" in s.description
    with pytest.raises(ValueError, match="no fold 9"):
        split_index(index, test_fold=9)


def test_split_is_seeded(tmp_path):
    index = read_esc50(make_esc50(tmp_path / "e"))
    a = split_index(index, test_fold=1, validation=ValidationSpec(seed=1))
    b = split_index(index, test_fold=1, validation=ValidationSpec(seed=1))
    c = split_index(index, test_fold=1, validation=ValidationSpec(seed=2))
    assert [x.key for x in a.val] == [x.key for x in b.val]
    assert [x.key for x in a.val] != [x.key for x in c.val]


# -- UrbanSound8K ------------------------------------------------------------------------

US8K_CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark"]


def make_us8k(root: Path) -> Path:
    rows = []
    for fold in range(1, 11):
        for cid, name in enumerate(US8K_CLASSES):
            fsid = 100 * fold + cid
            for k in range(2):
                fn = f"{fsid}-{cid}-0-{k}.wav"
                rate = (22050, 48000, 44100, 16000)[cid]
                channels = 2 if (fold + k) % 2 else 1
                write_wav(root / "audio" / f"fold{fold}" / fn, seconds=0.05, rate=rate, channels=channels)
                rows.append([fn, fsid, 1.0 * k, 1.0 * k + (4.000000001 if k else 0.5), 1 + k, fold, cid, name])
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows)
    return root


def test_us8k_reader_and_mixed_formats(tmp_path):
    root = make_us8k(tmp_path / "UrbanSound8K")
    index = read_us8k(root)
    assert index.folds == list(range(1, 11)) and len(index.clips) == 80
    assert index.classes == ["air conditioner", "car horn", "children playing", "dog bark"]
    assert index.max_duration == 4.0
    s = split_index(index, test_fold=10, validation=ValidationSpec(kind="fold"))
    assert {c.fold for c in s.test} == {10} and {c.fold for c in s.val} == {1}
    assert not {c.group for c in s.train} & {c.group for c in s.test}
    # every file, whatever its rate and channel count, comes out at 44.1 kHz mono
    cache = AudioCache(tmp_path / "cache")
    ds = ClipDataset(index.clips, 4, AudioAugment(4410, train=False), cache)
    for i in range(8):
        item = ds[i]
        assert item["audio"].shape == (1, 4410) and item["audio"].dtype == torch.float32
        assert 0.05 < float(item["audio"].abs().max()) <= 1.0
    stereo = ClipDataset(index.clips, 4, AudioAugment(4410, train=False), cache, channels="stereo")
    assert stereo[0]["audio"].shape == (2, 4410)


# -- AudioSet -------------------------------------------------------------------------------

AS_LABELS = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"), ("/m/0jbk", "Animal"),
             ("/m/0bt9lr", "Dog")]


def make_audioset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        f.write("index,mid,display_name\n")
        for i, (mid, name) in enumerate(AS_LABELS):
            f.write(f'{i},{mid},"{name}"\n')
    train = [("--PJHxphWEs", "/m/09x0r,/m/05zppz"), ("-0Gj8-vB1q4", "/m/0jbk,/m/0bt9lr"),
             ("Y_abcdefghi", "/m/0bt9lr"), ("missingVid0", "/m/09x0r"), ("abc_def-123", "/m/0jbk,/m/xxxx")]
    evals = [("evalclip001", "/m/0bt9lr,/m/0jbk"), ("evalclip002", "/m/09x0r")]
    for name, rows in (("balanced_train_segments.csv", train), ("eval_segments.csv", evals)):
        with open(root / name, "w") as f:
            f.write("# Segments csv created Sun Mar  5 10:54:25 2017\n# num_ytids=5, num_segs=5\n")
            f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
            for ytid, labels in rows:
                f.write(f'{ytid}, 30.000, 40.000, "{labels}"\n')
    clips = root / "clips"
    write_wav(clips / "--PJHxphWEs.wav")
    write_wav(clips / "sub" / "-0Gj8-vB1q4_30.000_40.000.flac")
    write_wav(clips / "YY_abcdefghi.wav")  # the "Y" prefix some downloads use
    write_wav(clips / "abc_def-123_30.wav")
    write_wav(clips / "evalclip001.wav")
    write_wav(clips / "evalclip002.wav")
    return root


def test_audioset_reader_multilabel_text_and_weights(tmp_path):
    root = make_audioset(tmp_path / "audioset")
    index = read_audioset(root)
    assert index.multilabel and index.classes[1] == "Male speech, man speaking"
    assert index.missing == ["missingVid0"] and index.max_duration == 10.0
    by_key = {c.key: c for c in index.clips}
    assert set(by_key) == {"--PJHxphWEs", "-0Gj8-vB1q4", "Y_abcdefghi", "abc_def-123", "evalclip001", "evalclip002"}
    speech = by_key["--PJHxphWEs"]
    assert speech.text == "Speech, Male speech, man speaking"  # joined as the original does
    assert by_key["abc_def-123"].labels == ("Animal",)  # the unknown mid is dropped ...
    assert any("not in class_labels_indices.csv" in n for n in index.notes)  # ... and reported
    assert by_key["evalclip001"].split == "eval" and speech.split == "train"
    # inverse class frequency on the training split; sample weight = sum over the clip's classes
    # train counts: Speech 1, Male speech 1, Animal 2, Dog 2 -> mean 1.5 -> weights 1.5, 1.5, 0.75, 0.75
    assert speech.weight == pytest.approx(3.0)
    assert by_key["-0Gj8-vB1q4"].weight == pytest.approx(1.5)
    assert by_key["Y_abcdefghi"].weight == pytest.approx(0.75)
    flat = read_audioset(root, class_weights="none")
    assert all(c.weight == 1.0 for c in flat.clips)
    s = split_index(index, test_split="eval", validation=ValidationSpec(kind="none"))
    assert {c.key for c in s.test} == {"evalclip001", "evalclip002"} and len(s.train) == 4


def test_audioset_frames_and_multi_hot_targets(tmp_path):
    from PIL import Image

    root = make_audioset(tmp_path / "audioset")
    for i in range(3):
        frames = root / "frames" / "--PJHxphWEs"
        frames.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (80 * i, 0, 0)).save(frames / f"{i:02d}.jpg")
    index = read_audioset(root, frames_dir="frames")
    clip = next(c for c in index.clips if c.key == "--PJHxphWEs")
    assert clip.image == str(root / "frames" / "--PJHxphWEs")
    ds = ClipDataset([clip], 4, AudioAugment(2000, train=True), AudioCache(tmp_path / "c"), multilabel=True,
                     image=True, image_size=32)
    item = ds[(0, 0)]
    assert item["target"].tolist() == [1.0, 1.0, 0.0, 0.0] and item["image"].shape == (3, 32, 32)
    assert item["text"] == "Speech, Male speech, man speaking"
    batch = collate([item, ds[(1, 0)]])
    assert batch["target"].shape == (2, 4) and batch["image"].shape == (2, 3, 32, 32)


# -- custom folders ------------------------------------------------------------------------------


def test_folder_tree(tmp_path):
    for cls in ("dog_bark", "rain"):
        for i in range(3):
            write_wav(tmp_path / "sounds" / cls / ("deep" if i == 2 else "") / f"{i}.wav")
    (tmp_path / "sounds" / "rain" / "notes.txt").write_text("not audio")
    index = read_folder(tmp_path / "sounds")
    assert index.classes == ["dog bark", "rain"] and len(index.clips) == 6 and not index.folds
    assert {c.labels for c in index.clips} == {("dog bark",), ("rain",)}
    s = split_index(index, test_fraction=0.34, validation=ValidationSpec(kind="none"))
    assert len(s.test) == 2 and {c.targets for c in s.test} == {(0,), (1,)}  # a share of every class


def test_folder_csv_with_header_folds_and_multilabel(tmp_path):
    for name in ("a.wav", "b.wav", "c.wav", "d.flac"):
        write_wav(tmp_path / "data" / name)
    (tmp_path / "data" / "list.csv").write_text(
        "path,label,fold\n"
        "a.wav,dog,1\n"
        f"{tmp_path / 'data' / 'b.wav'},cat,2\n"
        "c.wav,dog;cat,1\n"
        "d.flac,bird,2\n"
        "gone.wav,bird,1\n"
    )
    index = read_folder(tmp_path / "data" / "list.csv")
    assert index.classes == ["bird", "cat", "dog"] and index.folds == [1, 2] and index.multilabel
    assert len(index.clips) == 4 and index.missing == [str(tmp_path / "data" / "gone.wav")]
    both = next(c for c in index.clips if c.key == "c.wav")
    assert both.labels == ("dog", "cat") and both.targets == (2, 1) and both.text == "dog, cat"
    s = split_index(index, test_fold=2, validation=ValidationSpec(kind="none"))
    assert {c.key for c in s.test} == {str(tmp_path / "data" / "b.wav"), "d.flac"}


def test_folder_csv_without_header(tmp_path):
    write_wav(tmp_path / "x.wav")
    (tmp_path / "l.csv").write_text("x.wav,siren\n")
    index = read_dataset("folder", tmp_path / "l.csv")
    assert index.classes == ["siren"] and index.clips[0].fold is None


# -- the real metadata in shared/ -------------------------------------------------------------


@pytest.mark.skipif(not (ESC50_SHARED / "meta" / "esc50.csv").is_file(),
                    reason="shared ESC-50 sample (../shared/data/esc50) not present")
def test_real_esc50_metadata():
    with open(ESC50_SHARED / "meta" / "esc50.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2000
    index = read_esc50(ESC50_SHARED, audio_dir="audio_16k", subset="esc10")
    assert len(index.clips) == 400 and not index.missing
    assert index.classes == ["dog", "rooster", "rain", "sea waves", "crackling fire", "crying baby",
                             "sneezing", "clock tick", "helicopter", "chainsaw"]
    counts = np.zeros((5, 10), dtype=int)
    for c in index.clips:
        counts[c.fold - 1, c.targets[0]] += 1
    assert (counts == 8).all()  # 8 clips per class per fold, as the dataset is built
    s = split_index(index, test_fold=1)
    assert len(s.test) == 80 and not {c.group for c in s.train} & {c.group for c in s.val}
    full = read_esc50(ESC50_SHARED)  # the 44.1 kHz folder has 83 ESC-10 clips; the rest are reported missing
    assert len(full.classes) == 50 and len(full.clips) == 83 and len(full.missing) == 1917


@pytest.mark.skipif(not (US8K_SHARED / "metadata" / "UrbanSound8K.csv").is_file(),
                    reason="shared UrbanSound8K sample (../shared/data/us8k) not present")
def test_real_us8k_metadata_and_audio(tmp_path):
    index = read_us8k(US8K_SHARED)
    assert len(index.clips) == 50 and len(index.missing) == 8732 - 50
    assert {c.fold for c in index.clips} == {1} and index.max_duration == 4.0
    assert index.classes[3] == "dog bark"
    clip = next(c for c in index.clips if c.key == "118101-3-0-0")
    assert clip.labels == ("dog bark",) and clip.group == "us8k:118101"
    ds = ClipDataset([clip], 10, AudioAugment(4 * 44100, train=False), AudioCache(tmp_path / "c"))
    audio = ds[0]["audio"]
    assert audio.shape == (1, 4 * 44100) and float(audio.abs().max()) > 0.01


# -- cache, bad files, conventions -----------------------------------------------------------


def test_cache_decodes_once_and_follows_file_changes(tmp_path, monkeypatch):
    import audioclip.data.cache as cache_mod

    calls = []
    real = cache_mod.load_audio
    monkeypatch.setattr(cache_mod, "load_audio", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    path = write_wav(tmp_path / "a.wav", rate=22050)
    cache = AudioCache(tmp_path / "cache")
    first = cache.load(path)
    assert first.shape == (1, 4410) and len(calls) == 1
    again = AudioCache(tmp_path / "cache").load(path)  # a new process: served from disk
    assert torch.equal(first, again) and len(calls) == 1
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    write_wav(path, seconds=0.2, rate=22050)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.load(path).shape == (1, 8820) and len(calls) == 2  # changed file: decoded again
    off = AudioCache(tmp_path / "cache", enabled=False)
    off.load(path)
    off.load(path)
    assert len(calls) == 4


def test_bad_files_are_skipped_and_reported(tmp_path):
    good = write_wav(tmp_path / "good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    index = read_folder(_csv(tmp_path, [(good, "a"), (bad, "b")]))
    cache = AudioCache(tmp_path / "cache")
    ds = ClipDataset(index.clips, 2, AudioAugment(1000, train=True), cache)
    items = [ds[(0, i)] for i in range(2)]
    assert "bad" in items[1] and items[1]["bad"].startswith(str(bad))
    batch = collate(items)
    assert batch["size"] == 1 and batch["skipped"] == 1 and batch["audio"].shape == (1, 1, 1000)
    assert batch["bad"] == [items[1]["bad"]]
    assert list((tmp_path / "cache").rglob("*.bad"))  # remembered: not decoded again next epoch
    with pytest.raises(MediaError):
        AudioCache(tmp_path / "cache").load(bad)
    assert collate([items[1]])["size"] == 0


def _csv(folder: Path, rows) -> Path:
    path = folder / "list.csv"
    path.write_text("".join(f"{p},{label}\n" for p, label in rows))
    return path


def test_amplitude_and_channel_conventions():
    wave = torch.tensor([[0.1, -0.2, 0.05], [0.3, 0.0, -0.1]])
    mono = apply_conventions(wave, "mono", "raw")
    assert torch.allclose(mono, wave.mean(0, keepdim=True))
    mm = apply_conventions(wave, "keep", "minmax")
    assert float(mm.min()) == pytest.approx(-1.0) and float(mm.max()) == pytest.approx(32767 / 32768)
    silent = apply_conventions(torch.zeros(1, 5), "stereo", "minmax")  # no division by zero
    assert silent.shape == (2, 5) and torch.equal(silent, torch.zeros(2, 5))
    with pytest.raises(ValueError):
        apply_conventions(wave, "surround", "raw")


# -- samplers ---------------------------------------------------------------------------------------


def test_global_batches_split_over_ranks_equal_one_process():
    single = list(GlobalBatchSampler(50, 8, seed=3))
    parts = [list(GlobalBatchSampler(50, 8, rank=r, world=4, seed=3)) for r in range(4)]
    assert len(single) == 6 and all(len(p) == 6 for p in parts)
    for b, batch in enumerate(single):
        assert sum((p[b] for p in parts), []) == batch  # rank order rebuilds the global batch
    s = GlobalBatchSampler(50, 8, seed=3)
    s.set_epoch(1)
    assert list(s) != single and all(k[0] == 1 for batch in s for k in batch)
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(50, 8, world=3)


def test_eval_sampler_covers_every_clip_once():
    seen = [i for r in range(3) for batch in EvalBatchSampler(10, 4, r, 3) for _, i in batch]
    assert sorted(seen) == list(range(10))


# -- shards -------------------------------------------------------------------------------------------


def _tone_clips(tmp_path, n=10):
    rows = []
    for i in range(n):
        rows.append((write_wav(tmp_path / "src" / f"{i}.wav", seconds=0.05 + 0.01 * i, freq=300 + 50 * i,
                               channels=1 + i % 2), ("x", "y")[i % 2]))
    return read_folder(_csv(tmp_path, rows))


def test_shards_round_trip_and_split_over_ranks(tmp_path):
    index = _tone_clips(tmp_path)
    cache = AudioCache(tmp_path / "cache")
    entry = write_shards(index.clips, tmp_path / "shards", "train", cache, max_count=3)
    assert entry["count"] == 10 and len(entry["shards"]) == 4 and not entry["bad"]
    shards = [str(tmp_path / "shards" / s) for s in entry["shards"]]
    aug = AudioAugment(4410, train=False)
    # evaluation: every clip exactly once over 2 ranks, audio as decoded (16-bit)
    got = {}
    for rank in range(2):
        for item in ShardStream(shards, 2, aug, rank=rank, world=2, channels="keep"):
            got[item["key"]] = item
    assert len(got) == 10
    for clip in index.clips:
        item = got[clip.key]
        want = aug(cache.load(clip.path))
        assert item["audio"].shape == want.shape
        assert float((item["audio"] - want).abs().max()) <= 1 / 32768 + 1e-7
        assert item["target"] == clip.targets[0] and item["text"] == clip.labels[0]
    # training: equal numbers of samples per rank, whatever the shard sizes
    train_aug = AudioAugment(4410, train=True)
    counts = []
    for rank in range(2):
        stream = ShardStream(shards, 2, train_aug, rank=rank, world=2, batches_per_rank=2, local_batch=3,
                             shuffle_buffer=4)
        stream.set_epoch(1)
        items = list(stream)
        counts.append(len(items))
        assert all(x["audio"].shape == (1, 4410) for x in items)
    assert counts == [6, 6]


def test_shards_with_workers_and_a_loader(tmp_path):
    from torch.utils.data import DataLoader

    index = _tone_clips(tmp_path, n=12)
    entry = write_shards(index.clips, tmp_path / "sh", "train", AudioCache(tmp_path / "c"), max_count=2,
                         audio_format="npy")
    shards = [str(tmp_path / "sh" / s) for s in entry["shards"]]
    stream = ShardStream(shards, 2, AudioAugment(2205, train=True), batches_per_rank=3, local_batch=2)
    loader = DataLoader(stream, batch_size=2, num_workers=2, collate_fn=collate, drop_last=True)
    batches = list(loader)
    assert len(batches) == 3 and all(b["audio"].shape == (2, 1, 2205) for b in batches)
    ev = ShardStream(shards, 2, AudioAugment(2205, train=False))
    keys = [k for b in DataLoader(ev, batch_size=5, num_workers=2, collate_fn=collate) for k in b["key"]]
    assert sorted(keys) == sorted(c.key for c in index.clips)


def test_prepare_shards_from_a_config(tmp_path):
    from audioclip.train.config import load_config
    from audioclip.train.prepare import prepare_shards

    root = make_esc50(tmp_path / "esc")
    cfg = load_config("esc50-audioclip", [f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}",
                                          "data.validation.kind=fold"])
    manifest = prepare_shards(cfg, tmp_path / "shards", max_count=8, progress=False)
    assert read_manifest(tmp_path / "shards") == json.loads(json.dumps(manifest))
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 24, "val": 8, "test": 8}
    assert manifest["classes"] == ["dog", "rooster", "crying baby", "chainsaw"]
    assert manifest["longest_samples"] == 4410
