"""``audioclip evaluate`` end to end on real clips with a tiny random model (numbers meaningless, pipeline real).

Data: the project's shared ESC-10 clips, UrbanSound8K sample and photos
(``../shared/data``), arranged in temporary trees with the official layouts:
ESC-50 (real metadata, a few real clips, one corrupt file), a small AudioSet
(segment CSVs, clips, frame folders, multi-label) and an ImageNet validation
folder layout.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ESC = SHARED / "esc50"
US8K = SHARED / "us8k"
IMAGES = SHARED / "images"

needs_esc = pytest.mark.skipif(not (ESC / "meta" / "esc50.csv").is_file(),
                               reason=f"shared ESC-50 clips not found at {ESC}")
needs_images = pytest.mark.skipif(not (IMAGES / "labels.csv").is_file(),
                                  reason=f"shared photos not found at {IMAGES}")
needs_us8k = pytest.mark.skipif(not (US8K / "metadata" / "UrbanSound8K.csv").is_file(),
                                reason=f"shared UrbanSound8K sample not found at {US8K}")

# real ESC-10 clips at 44.1 kHz: six of fold 4, one of fold 3, one of fold 5
ESC_CLIPS = ["4-182395-A-0", "4-164021-A-1", "4-160999-A-10", "4-167063-A-11", "4-164661-A-12",
             "4-125929-A-40", "3-132852-A-10", "5-151085-A-20"]
CORRUPT = "4-149294-A-41"  # listed in the metadata; the file here is garbage


def _evaluate(*argv) -> int:
    from audioclip.cli import main

    return main(["evaluate", *(str(a) for a in argv)])


def _is_png(path: Path) -> bool:
    from PIL import Image

    if path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random AudioCLIPs saved in the official format (three different seeds)."""
    from audioclip import AudioCLIP, save_model

    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, seed in (("tiny", 0), ("fold3", 3), ("fold4", 4)):
        torch.manual_seed(seed)
        paths[name] = save_model(AudioCLIP("AudioCLIP-tiny"), folder / f"{name}.pt")
    runs = folder / "runs"
    for fold in (3, 4):
        (runs / f"fold{fold}").mkdir(parents=True)
        shutil.copy(paths[f"fold{fold}"], runs / f"fold{fold}" / "model.pt")
    paths["runs"] = runs
    return paths


@pytest.fixture(scope="module")
def esc_root(tmp_path_factory) -> Path:
    if not (ESC / "meta" / "esc50.csv").is_file():
        pytest.skip(f"shared ESC-50 clips not found at {ESC}")
    root = tmp_path_factory.mktemp("ESC-50")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").symlink_to(ESC / "meta" / "esc50.csv")
    (root / "audio").mkdir()
    for stem in ESC_CLIPS:
        (root / "audio" / f"{stem}.flac").symlink_to(ESC / "audio" / f"{stem}.flac")
    (root / "audio" / f"{CORRUPT}.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    return root


@pytest.fixture
def count_encodes(monkeypatch) -> dict[str, int]:
    """Counts the items the model encodes, per modality."""
    from audioclip.evaluate.embed import Encoder

    counts = {"audio": 0, "image": 0}
    original = Encoder.encode

    def encode(self, modality, batch):
        counts[modality] += batch.shape[0]
        return original(self, modality, batch)

    monkeypatch.setattr(Encoder, "encode", encode)
    return counts


def _model_args(ckpt: Path, cache: Path) -> list:
    return ["--checkpoint", ckpt, "--device", "cpu", "--embedding-cache", cache, "-q"]


# -- ESC-10: zero-shot, then querying from the cache ------------------------------------------


@needs_esc
def test_zeroshot_then_querying_on_real_esc10_clips(esc_root, checkpoints, tmp_path, capsys, count_encodes):
    cache, out = tmp_path / "cache", tmp_path / "zs"
    status = _evaluate("--task", "zeroshot", "--dataset", "esc50", "--subset", "esc10", "--root", esc_root,
                       "--output", out, *_model_args(checkpoints["tiny"], cache))
    printed = capsys.readouterr()
    assert status == 3, printed.err  # done, but one file could not be read
    assert f"skipped {esc_root / 'audio' / (CORRUPT + '.flac')}" in printed.err
    table = printed.out
    assert "Zero-shot classification — ESC-10: 9 items, 10 classes, fold(s) 3, 4, 5" in table
    assert "audio input: original" in table and "220500 samples" in table  # the conventions are stated
    assert "fold 3" in table and "fold mean ± std" in table
    assert count_encodes == {"audio": 8, "image": 0}

    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "zeroshot" and result["dataset"] == "esc10"
    assert result["embedding"]["audio"]["computed"] == 8 and result["embedding"]["audio"]["cached"] == 0
    assert [f[0].endswith(CORRUPT + ".flac") for f in result["embedding"]["audio"]["failures"]] == [True]
    rows = {(r["fold"], r["metric"]): r for r in result["rows"]}
    assert set(rows) == {("all", "accuracy"), (3, "accuracy"), (4, "accuracy"), (5, "accuracy"), ("mean", "accuracy")}
    overall = rows[("all", "accuracy")]
    assert overall["n"] == 8 and rows[(4, "accuracy")]["n"] == 6
    assert 0.0 <= overall["value"] <= 1.0
    assert overall["paper"] is None  # ESC-10 is not the paper's dataset: no comparison
    per_class = (out / "per_class_audio.csv").read_text().splitlines()
    assert per_class[0] == "class,accuracy,items" and len(per_class) == 11 and per_class[1].startswith("dog,")
    confusion = (out / "confusion_audio.csv").read_text().splitlines()
    assert len(confusion) == 11 and sum(int(x) for line in confusion[1:] for x in line.split(",")[1:]) == 8
    assert (out / "results.csv").read_text().startswith("task,dataset,checkpoint,modality,fold,metric,value")
    for png in ("confusion_audio.png", "per_class_audio.png"):
        assert _is_png(out / png), png

    # querying on the same clips and checkpoint: every embedding comes from the cache
    out_q = tmp_path / "q"
    status = _evaluate("--task", "querying", "--dataset", "esc50", "--subset", "esc10", "--root", esc_root,
                       "--output", out_q, *_model_args(checkpoints["tiny"], cache))
    printed = capsys.readouterr()
    assert status == 3
    assert count_encodes["audio"] == 8  # unchanged: nothing encoded again
    result = json.loads((out_q / "results.json").read_text())
    assert result["embedding"]["audio"] == {"computed": 0, "cached": 8, "failures": result["embedding"]["audio"]["failures"]}
    pairs = {(r["modality"], r["metric"]): r for r in result["rows"]}
    assert set(pairs) == {(p, m) for p in ("text-audio", "audio-audio") for m in ("P@1", "R@1", "mAP")}
    text = pairs[("text-audio", "mAP")]
    assert text["n"] == 7 and text["targets"] == 8  # 7 label sets among the 8 clips (two rain clips)
    # audio->audio: only the two rain clips have a relevant target (each other); the others are skipped
    assert pairs[("audio-audio", "mAP")]["queries"] == 2 and pairs[("audio-audio", "mAP")]["skipped_queries"] == 6
    assert pairs[("audio-audio", "P@1")]["n"] == 1
    assert "text → audio" in printed.out and "P@1" in printed.out
    assert _is_png(out_q / "precision_recall.png")
    assert len(result["pr_curves"]["text-audio"]) == 101


# -- supervised: a checkpoint per fold ---------------------------------------------------------


@needs_esc
def test_supervised_per_fold_checkpoints(esc_root, checkpoints, tmp_path, capsys, count_encodes):
    out = tmp_path / "sup"
    status = _evaluate("--task", "supervised", "--dataset", "esc50", "--subset", "esc10", "--root", esc_root,
                       "--folds", "3,4", "--output", out, *_model_args(checkpoints["runs"], tmp_path / "cache"))
    printed = capsys.readouterr()
    assert status == 3, printed.err  # the corrupt fold-4 file
    result = json.loads((out / "results.json").read_text())
    rows = {r["fold"]: r for r in result["rows"]}
    assert set(rows) == {3, 4, "mean"}
    assert rows[3]["n"] == 1 and rows[4]["n"] == 6 and rows["mean"]["n"] == 2
    assert rows[3]["checkpoint_file"].endswith("fold3/model.pt") and rows[4]["checkpoint_file"].endswith("fold4/model.pt")
    assert rows[3]["checkpoint_id"] != rows[4]["checkpoint_id"]
    assert rows["mean"]["value"] == pytest.approx((rows[3]["value"] + rows[4]["value"]) / 2)
    assert count_encodes["audio"] == 7  # each fold's clips, with that fold's checkpoint
    assert "cross-validation mean ± std over 2 fold(s)" in printed.out
    assert _is_png(out / "confusion_audio.png")


def test_fold_checkpoint_resolution(tmp_path):
    from audioclip.cli.evaluate import fold_checkpoint

    assert fold_checkpoint("runs/fold{fold}/model.pt", 3) == "runs/fold3/model.pt"
    (tmp_path / "fold2").mkdir()
    (tmp_path / "fold2" / "model.pt").write_bytes(b"x")
    assert fold_checkpoint(str(tmp_path), 2) == str(tmp_path / "fold2" / "model.pt")
    with pytest.raises(ValueError, match="fold5/model.pt"):
        fold_checkpoint(str(tmp_path), 5)
    assert fold_checkpoint("full", 1) == "full"


# -- AudioSet layout: multi-label, audio + frames -------------------------------------------------


@pytest.fixture
def audioset_root(tmp_path) -> Path:
    if not (ESC / "audio").is_dir() or not IMAGES.is_dir():
        pytest.skip(f"shared clips or photos not found under {SHARED}")
    root = tmp_path / "audioset"
    (root / "clips").mkdir(parents=True)
    (root / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n0,/m/dog,Dog\n1,/m/rain,Rain\n2,/m/bird,Bird\n3,/m/vehicle,Vehicle\n")
    clips = [  # (YouTube id, ESC clip, frames, labels)
        ("dogdogdog01", "4-182395-A-0", ["cameratrap_domestic_dog.jpg"], ["/m/dog"]),
        ("dogdogdog02", "4-183992-A-0", ["cameratrap_domestic_dog.jpg", "skimage_chelsea.jpg"], ["/m/dog"]),
        ("rainrain-01", "4-160999-A-10", ["kodim13.jpg"], ["/m/rain"]),
        ("rainrain-02", "4-161127-A-10", ["cameratrap_vehicle.jpg"], ["/m/rain", "/m/vehicle"]),
        ("vehicle__01", "4-125929-A-40", ["kodim20.jpg"], ["/m/vehicle"]),
        ("birdbird_01", "4-164021-A-1", ["kodim23.jpg", "kodim22.jpg", "kodim03.jpg"], ["/m/bird"]),
    ]
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
             "# num_ytids=7, num_segs=7, num_unique_labels=4, num_positive_labels=8",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    for ytid, clip, frames, mids in clips:
        lines.append(f'{ytid}, 30.000, 40.000, "{",".join(mids)}"')
        (root / "clips" / f"{ytid}.flac").symlink_to(ESC / "audio" / f"{clip}.flac")
        folder = root / "frames" / ytid
        folder.mkdir(parents=True)
        for i, name in enumerate(frames):
            (folder / f"{i:03d}.jpg").symlink_to(IMAGES / name)
    lines.append('nevrdwnlded, 0.000, 10.000, "/m/dog"')  # listed, never downloaded
    (root / "eval_segments.csv").write_text("\n".join(lines) + "\n")
    return root


@needs_esc
@needs_images
def test_audioset_zeroshot_both_modalities_and_all_querying_pairs(audioset_root, checkpoints, tmp_path, capsys,
                                                                   count_encodes):
    common = ["--dataset", "audioset", "--root", audioset_root, "--frames-dir", "frames", "--audio-length", "44100",
              *_model_args(checkpoints["tiny"], tmp_path / "cache")]
    assert _evaluate("--task", "zeroshot", "--output", tmp_path / "zs", *common) == 0
    out = capsys.readouterr().out
    assert "AudioSet: 6 items, 4 classes (audio+image)" in out and "1 file(s) listed in the metadata are absent" in out
    result = json.loads((tmp_path / "zs" / "results.json").read_text())
    rows = {r["modality"]: r for r in result["rows"]}
    assert set(rows) == {"audio", "image", "both"} and all(r["metric"] == "mAP" for r in rows.values())
    assert all(0.0 < r["value"] <= 1.0 and r["n"] == 6 for r in rows.values())
    assert result["per_class"]["audio"]["counts"] == [2, 2, 1, 2]  # multi-hot positives per class
    assert _is_png(tmp_path / "zs" / "per_class_both.png")
    assert count_encodes == {"audio": 6, "image": 6}

    assert _evaluate("--task", "querying", "--output", tmp_path / "q", *common) == 0
    result = json.loads((tmp_path / "q" / "results.json").read_text())
    assert count_encodes == {"audio": 6, "image": 6}  # all from the cache
    pairs = {r["modality"] for r in result["rows"]}
    assert pairs == {"text-image", "text-audio", "audio-image", "image-audio", "audio-audio"}
    by = {(r["modality"], r["metric"]): r for r in result["rows"]}
    # exact label-set relevance: 5 label sets ({Rain, Vehicle} is its own); the dog clips are the only
    # label set with two items, so only their cross-modal queries have a relevant target once the
    # query's own clip is excluded
    assert by[("text-audio", "mAP")]["n"] == 5
    assert by[("audio-image", "mAP")]["queries"] == 2 and by[("audio-image", "mAP")]["skipped_queries"] == 4
    assert _is_png(tmp_path / "q" / "precision_recall.png")

    # overlap relevance and the paired picture kept: every audio query now has relevant pictures
    assert _evaluate("--task", "querying", "--pairs", "audio-image", "--relevance", "overlap", "--keep-paired",
                     "--output", tmp_path / "q2", *common) == 0
    result = json.loads((tmp_path / "q2" / "results.json").read_text())
    assert {r["queries"] for r in result["rows"]} == {6}
    capsys.readouterr()


# -- ImageNet folder layout -------------------------------------------------------------------------


@needs_images
def test_imagenet_folder_zeroshot_and_text_to_image(checkpoints, tmp_path, capsys, count_encodes):
    root = tmp_path / "imagenet"
    layout = {"n00000001": ["skimage_chelsea.jpg"], "n00000002": ["cameratrap_domestic_dog.jpg"],
              "n00000003": ["kodim06.jpg", "kodim09.jpg", "kodim11.jpg"], "n00000004": ["kodim19.jpg", "kodim21.jpg"]}
    for wnid, names in layout.items():
        (root / "val" / wnid).mkdir(parents=True)
        for name in names:
            (root / "val" / wnid / name.replace(".jpg", ".JPEG")).symlink_to(IMAGES / name)
    names = tmp_path / "names.csv"
    names.write_text("n00000001,tabby cat\nn00000002,dog\nn00000003,boat\nn00000004,lighthouse\n")
    common = ["--dataset", "imagenet", "--root", root, "--class-names", names,
              *_model_args(checkpoints["tiny"], tmp_path / "cache")]
    assert _evaluate("--task", "zeroshot", "--prompt-set", "openai-imagenet", "--output", tmp_path / "zs", *common) == 0
    out = capsys.readouterr().out
    assert "ImageNet: 7 items, 4 classes (image)" in out and "(80 templates)" in out
    result = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert result["classes"] == ["tabby cat", "dog", "boat", "lighthouse"]
    assert [(r["modality"], r["metric"], r["n"]) for r in result["rows"]] == [("image", "accuracy", 7)]
    assert result["rows"][0]["paper"] is None
    assert count_encodes["image"] == 7

    assert _evaluate("--task", "querying", "--output", tmp_path / "q", *common) == 0
    result = json.loads((tmp_path / "q" / "results.json").read_text())
    assert {r["modality"] for r in result["rows"]} == {"text-image"}
    assert count_encodes["image"] == 7  # cached
    capsys.readouterr()

    # --collect: both runs as the paper's tables
    assert _evaluate("--collect", tmp_path / "zs", tmp_path / "q", "--output", tmp_path / "summary") == 0
    summary = capsys.readouterr().out
    assert "Zero-shot classification (%)" in summary and "ImageNet image (acc)" in summary
    assert "Querying (%)" in summary and "text → image" in summary
    assert (tmp_path / "summary" / "summary.csv").is_file()


# -- conventions and datasets ------------------------------------------------------------------------


def test_fit_length_pads_and_crops_like_the_original():
    from audioclip.evaluate.conventions import fit_length

    wave = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    np.testing.assert_array_equal(fit_length(wave, 6, pad="zeros"), [[0, 0, 1, 2, 3, 0], [0, 0, 3, 4, 5, 0]])
    # left = round(0.5 * 3) = 2 (Python rounds halves to even, as the original did)
    # edge padding: the first / last sample averaged over channels
    np.testing.assert_array_equal(fit_length(wave, 6, pad="edge"), [[2, 2, 1, 2, 3, 4], [2, 2, 3, 4, 5, 4]])
    long = torch.arange(10.0)[None]
    np.testing.assert_array_equal(fit_length(long, 4), [[3, 4, 5, 6]])  # centre crop at round(0.5 * 6) = 3
    # a quiet centre is replaced by the head (the original's evaluation crop)
    quiet = torch.cat([torch.linspace(-1, 1, 10), torch.zeros(10), torch.linspace(1, -1, 10)])[None]
    np.testing.assert_array_equal(fit_length(quiet, 10, quiet_swap=True), quiet[:, :10])
    np.testing.assert_array_equal(fit_length(quiet, 10, quiet_swap=False), quiet[:, 10:20])


def test_convention_sets_and_overrides():
    from audioclip.evaluate.conventions import conventions_for

    esc, us8k = conventions_for("esc50"), conventions_for("us8k")
    assert (esc.length, esc.channels, esc.amplitude, esc.pad) == (220500, "mono", "raw", "edge")
    assert (us8k.length, us8k.channels, us8k.amplitude, us8k.max_duration) == (176400, "stereo", "minmax", 4.0)
    zeros = conventions_for("us8k", pad="zeros")
    assert zeros.pad == "zeros" and zeros.identity() != us8k.identity()  # a separate embedding cache
    assert conventions_for("us8k", length=1000).length == 1000
    assert "original" in us8k.describe() and "176400 samples" in us8k.describe()
    with pytest.raises(ValueError):
        conventions_for("esc50", "mine")


@needs_us8k
def test_us8k_original_conventions_on_a_real_slice():
    from audioclip.evaluate.conventions import conventions_for
    from audioclip.evaluate.datasets import load_eval_set
    from audioclip.evaluate.embed import _Inputs

    data = load_eval_set("us8k", US8K)
    assert data.title == "UrbanSound8K" and data.folds == [1] and len(data.items) == 50
    assert data.classes[0] == "air conditioner" and data.partial  # 50 of 8732: no paper comparison
    original, consistent = conventions_for("us8k"), conventions_for("us8k", "consistent")
    assert original.identity() != consistent.identity()
    short = min(data.items, key=lambda i: Path(i.audio).stat().st_size)  # a slice shorter than 4 s
    x = _Inputs([short.audio], "audio", original, None)[0]["x"]
    assert x.shape == (2, 176400) and torch.equal(x[0], x[1])  # mono repeated into two channels
    assert float(x.min()) == -1.0 and float(x.max()) == pytest.approx(32767 / 32768)  # min-max to int16 range
    assert float(x[0, 0]) == float(x[0, 1]) != 0.0  # edge-value padding
    y = _Inputs([short.audio], "audio", consistent, None)[0]["x"]
    assert y.shape == (1, 176400) and float(y[0, 0]) == 0.0 and float(y.abs().max()) < 1.0


def test_register_adds_the_evaluate_command():
    from audioclip.cli import evaluate as cli
    from audioclip.cli.evaluate import register_evaluate as register
    from audioclip.cli.evaluate import run
    from audioclip.evaluate import datasets, protocols

    assert (cli.DATASETS, cli.TASKS, cli.PAIRS) == (datasets.DATASETS, protocols.TASKS, protocols.PAIRS)

    parser = argparse.ArgumentParser(prog="audioclip")
    register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--task", "zeroshot", "--dataset", "esc50", "--root", "x", "--folds", "2,1"])
    assert args.func is run and args.folds == [1, 2] and args.conventions == "original"
    assert args.checkpoint == "full" and args.device == "auto" and args.audio_mode == "default"


def test_usage_errors(tmp_path, capsys):
    assert _evaluate("--task", "zeroshot") == 2
    assert "needs --dataset, --root" in capsys.readouterr().err
    assert _evaluate("--task", "zeroshot", "--dataset", "esc50", "--root", tmp_path) == 1
    assert "meta/esc50.csv" in capsys.readouterr().err
