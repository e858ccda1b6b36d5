"""Training: configs, the regimes end to end on a micro model, loss going down on real clips,
exact resume, frozen heads, export, cross-validation, prepare."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from audioclip import AudioCLIP, ESResNeXtFbsp, create_model
from audioclip.cli import main as cli_main
from audioclip.train import Trainer, format_table, load_config, run_cross_validation
from audioclip.train.build import build_model, normalise_fbsp_grads, setup_trainable
from audioclip.train.checkpoint import load_checkpoint, save_checkpoint
from audioclip.train.config import ConfigError, list_configs
from audioclip.train.distributed import Dist


def train_main(argv: list[str]) -> int:
    """``audioclip train ARGS``, in this process."""
    return cli_main(["train", *argv])


SHARED_ESC50 = Path(__file__).resolve().parents[2] / "shared" / "data" / "esc50"

# A few-million-parameter AudioCLIP for fast CPU tests (coarse spectrogram, one block per stage).
MICRO = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "audio_cfg": {"n_fft": 256, "hop_length": 256, "win_length": 256, "normalized": True,
                  "layers": [1, 1, 1, 1], "groups": 8, "width_per_group": 4, "num_bands": 3, "sample_rate": 44100},
}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these small models run faster so, and never fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tones(root: Path, per_class: int = 6, classes=("low_tone", "high_tone"), image: bool = False,
               folds: int = 0) -> Path:
    """Short synthetic clips, one frequency band per class; returns a CSV (path,label[,fold][,image])."""
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            n = int(44100 * rng.uniform(0.2, 0.3))
            t = np.arange(n) / 44100
            x = 0.3 * np.sin(2 * np.pi * 300 * (1 + 3 * c) * (1 + 0.05 * rng.standard_normal()) * t)
            x += 0.01 * rng.standard_normal(n)
            path = root / name / f"{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, x.astype(np.float32), 44100, subtype="PCM_16")
            row = {"path": str(path), "label": name}
            if folds:
                row["fold"] = 1 + i % folds
            if image:
                from PIL import Image

                img = root / "img" / f"{name}{i}.png"
                img.parent.mkdir(exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
                row["image"] = str(img)
            rows.append(row)
    out = root / "list.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def micro_config(tmp_path: Path, data_root: Path, overrides: dict | None = None, name: str = "micro") -> dict:
    """A config file for the micro model on a custom CSV; ``overrides`` is a nested dict laid on top."""
    base = {
        "model": {"kind": "audioclip", "config": MICRO, "weights": None},
        "task": {"loss": "contrastive", "modalities": ["audio", "text"], "trainable": ["audio"]},
        "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "progress": False,
                  "log_every": 1},
        "optim": {"lr": 1.0e-4},
        "data": {"dataset": "folder", "root": str(data_root), "test_fraction": 0.25,
                 "validation": {"kind": "fraction", "fraction": 0.2}, "cache_dir": str(tmp_path / "cache")},
        "audio": {"length": 0.25},
        "output": {"dir": str(tmp_path / name), "tensorboard": False},
    }
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return load_config(path)


def micro_head_config():
    from audioclip.model import AudioHeadConfig

    return AudioHeadConfig(**{**MICRO["audio_cfg"], "layers": tuple(MICRO["audio_cfg"]["layers"])})


def model_state(path: Path) -> dict:
    return load_checkpoint(path)["model"]


# -- configs ------------------------------------------------------------------------------------------


def test_bundled_regimes_carry_the_papers_hyper_parameters():
    names = list_configs()
    for name in ("audioset-audiohead", "audioset-cooperative", "audioset-full", "esc50-audioclip",
                 "us8k-audioclip", "esc50-esresnext", "us8k-esresnext", "folder-audioclip"):
        assert name in names
    for name in names:
        cfg = load_config(name)
        o = cfg["optim"]
        assert (o["name"], o["momentum"], o["nesterov"], o["weight_decay"]) == ("sgd", 0.9, True, 5e-4), name
        if name.startswith("audioset"):
            assert (o["lr"], cfg["sched"]["gamma"], cfg["train"]["epochs"], cfg["train"]["batch_size"]) == (
                1e-4, 0.95, 30, 64), name
            assert cfg["data"]["test_split"] == "eval"
        elif name != "esc10-tiny-smoke":
            assert (o["lr"], cfg["sched"]["gamma"], cfg["train"]["epochs"], cfg["train"]["batch_size"]) == (
                5e-5, 0.98, 50, 64), name
        assert cfg["data"]["validation"]["kind"] != "test", "never select on the test set by default"
    assert load_config("audioset-audiohead")["model"]["imagenet_init"] == "torchvision"
    coop, full = load_config("audioset-cooperative"), load_config("audioset-full")
    assert coop["task"]["trainable"] == ["audio"] and coop["task"]["modalities"] == ["audio", "image", "text"]
    assert coop["model"]["audio_weights"] == "esrnxfbsp"
    assert full["task"]["trainable"] == ["audio", "image", "text"]
    esc = load_config("esc50-audioclip")
    assert esc["task"] == {"loss": "contrastive", "modalities": ["audio", "text"], "trainable": ["audio"],
                           "prompt": "{}"}
    assert load_config("esc50-esresnext")["model"]["new_classifier"] is True


def test_overrides_and_flags():
    cfg = load_config("esc50-audioclip", ["optim.lr=1e-3", "augment.noise.p=0.5", "data.options.subset=esc10",
                                          "task.trainable=[audio, text]", "augment.time_flip=null"])
    assert cfg["optim"]["lr"] == 1e-3 and cfg["augment"]["noise"] == {"p": 0.5, "snr_min": 10.0, "snr_max": 120.0}
    assert cfg["data"]["options"] == {"subset": "esc10"} and cfg["task"]["trainable"] == ["audio", "text"]
    assert cfg["augment"]["time_flip"] is None
    assert load_config("esc50-audioclip", ["task.prompt={}"])["task"]["prompt"] == "{}"  # text stays text
    assert load_config("esc50-audioclip", ["task.prompt=the sound of a {}"])["task"]["prompt"] == "the sound of a {}"
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config("esc50-audioclip", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="task.loss"):
        load_config("esc50-audioclip", ["task.loss=mse"])
    with pytest.raises(ConfigError, match="no config"):
        load_config("no-such-regime")


def test_cli_flags_map_onto_the_config(tmp_path, capsys):
    assert train_main(["--config", "us8k-audioclip", "--data-root", str(tmp_path), "--lr", "1e-5",
                       "--gamma", "0.96", "--select-on-test", "--original-conventions", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 1e-5 and cfg["sched"]["gamma"] == 0.96
    assert cfg["data"]["validation"]["kind"] == "test" and cfg["data"]["root"] == str(tmp_path)
    assert (cfg["audio"]["amplitude"], cfg["audio"]["channels"], cfg["audio"]["max_duration"]) == (
        "minmax", "stereo", 4.0)
    assert train_main(["--list-configs"]) == 0
    assert "esc50-audioclip" in capsys.readouterr().out
    assert train_main(["--config", "esc50-audioclip", "--set", "bogus.key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


# -- training ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_ESC50 / "audio").is_dir(), reason="shared ESC-50 clips (../shared/data/esc50) not present")
def test_loss_goes_down_on_real_esc10_clips(tmp_path):
    audio = SHARED_ESC50 / "audio"
    rows = ["path,label,fold"]
    for target, label in ((0, "dog"), (10, "rain")):
        files = sorted(p for p in audio.glob(f"*-{target}.flac"))[:5]
        rows += [f"{p},{label},{1 if i < 4 else 2}" for i, p in enumerate(files)]
    (tmp_path / "esc.csv").write_text("\n".join(rows) + "\n")
    cfg = micro_config(tmp_path, tmp_path / "esc.csv", {
        "train": {"epochs": 6, "batch_size": 8},
        "data": {"test_fold": 2, "validation": {"kind": "none"}},
        "audio": {"length": 0.5},
        # the same full batch every epoch: the logged loss is then the objective itself
        "augment": {"time_flip": None, "time_scale": None, "noise": None},
    })
    results = Trainer(cfg).run()
    with open(tmp_path / "micro" / "metrics.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert results["test_clips"] == 2 and results["metric"] == "accuracy"


def test_kill_and_resume_gives_the_same_weights(tmp_path):
    data = make_tones(tmp_path / "tones")
    over = {"train": {"epochs": 2, "max_steps_per_epoch": 2}, "output": {"export": False, "tensorboard": False}}
    whole = micro_config(tmp_path, data, over, name="whole")
    Trainer(whole).run()

    cut = micro_config(tmp_path, data, over, name="cut")

    class Killed(Exception):
        pass

    def kill(trainer, epoch):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        Trainer(cut, callbacks={"epoch_end": kill}).run()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    Trainer(cut, resume=True).run()

    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    with open(tmp_path / "cut" / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    # a resume with another model or data config is refused
    other = micro_config(tmp_path, data, {**over, "optim": {"lr": 1e-3}}, name="cut")
    with pytest.raises(ValueError, match="different config"):
        Trainer(other, resume=True).run()


def test_sigkill_mid_run_then_resume(tmp_path):
    """A real kill (SIGKILL, no chance to clean up) of a training process, then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = make_tones(tmp_path / "tones")
    over = {"train": {"epochs": 2, "max_steps_per_epoch": 3}, "output": {"export": False, "tensorboard": False}}
    whole = micro_config(tmp_path, data, over, name="whole")
    Trainer(whole).run()
    micro_config(tmp_path, data, over, name="killed")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "audioclip", "train", "-c", str(tmp_path / "killed.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.pt").exists():
            try:
                if load_checkpoint(out / "last.pt")["epoch"] >= 1:
                    break
            except Exception:  # never a torn file (atomic), but be safe while polling
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(out / "last.pt")["epoch"] in (1, 2)
    # (a kill during a write can leave a ".last.pt.*.tmp" file behind; it is never read)
    status = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert status.returncode == 0, status.stderr[-2000:]
    a, b = model_state(tmp_path / "whole" / "last.pt"), model_state(out / "last.pt")
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def torn(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_frozen_heads_stay_bit_identical(tmp_path):
    data = make_tones(tmp_path / "tones", image=True)
    cfg = micro_config(tmp_path, data, {
        "task": {"loss": "contrastive", "modalities": ["audio", "image", "text"], "trainable": ["audio"]},
        "train": {"epochs": 1, "max_steps_per_epoch": 2},
        "data": {"validation": {"kind": "none"}},
        "optim": {"lr": 1e-2},
    })
    torch.manual_seed(cfg["train"]["seed"])
    before = build_model(cfg, 2).state_dict()
    trainer = Trainer(cfg)
    trainer.run()
    after = model_state(tmp_path / "micro" / "last.pt")
    frozen = [k for k in before if not k.startswith("audio.") and k not in ("logit_scale_ai", "logit_scale_at")]
    assert any("visual" in k and "running_mean" in k for k in frozen)  # BatchNorm statistics included
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"frozen {key} changed"
    assert not torch.equal(before["audio.fc.weight"], after["audio.fc.weight"])
    assert not torch.equal(before["audio.bn1.running_mean"], after["audio.bn1.running_mean"])
    model = trainer.model
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith(("audio.", "logit_scale_a")))
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    from audioclip.train.build import set_train_mode

    set_train_mode(model, trainer.frozen)
    assert model.audio.training and not model.visual.training and not model.transformer.training


def test_fbsp_gradient_rule_matches_the_models_hook():
    torch.manual_seed(0)
    head = ESResNeXtFbsp(num_classes=3, config=micro_head_config())
    head.eval()
    x = torch.rand(2, 1, 3000) * 0.2 - 0.1
    head(x).square().sum().add(head.fbsp_norm_loss()).backward()
    hooked = [p.grad.clone() for p in (head.fbsp.m, head.fbsp.fb, head.fbsp.fc)]
    head.zero_grad()
    setup_trainable(head, {})  # rebuilds the fbsp parameters without the hook
    head(x).square().sum().add(head.fbsp_norm_loss()).backward()
    normalise_fbsp_grads(head)
    for want, p in zip(hooked, (head.fbsp.m, head.fbsp.fb, head.fbsp.fc)):
        assert torch.equal(want, p.grad)


def test_mixed_precision_path_keeps_the_front_end_in_float32():
    from audioclip.train.objectives import audio_features

    torch.manual_seed(0)
    model = AudioCLIP(MICRO).eval()
    x = torch.rand(2, 1, 8000) * 0.2 - 0.1
    with torch.no_grad():
        full = audio_features(model.audio, x, None)
        assert torch.equal(full, model.encode_audio(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = audio_features(model.audio, x, torch.bfloat16)
    assert mixed.dtype == torch.bfloat16
    assert torch.allclose(mixed.float(), full, rtol=0.1, atol=0.05 * float(full.abs().max()))


def test_standalone_classifier_regime_skips_bad_files_and_exports(tmp_path, capsys):
    data = make_tones(tmp_path / "tones", classes=("low_tone", "mid_tone", "high_tone"), per_class=4)
    broken = tmp_path / "tones" / "broken.wav"
    broken.write_bytes(b"not audio at all")
    with open(data, "a") as f:
        f.write(f"{broken},mid_tone\n")
    cfg_path = tmp_path / "esr.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"kind": "esresnext", "config": MICRO, "weights": None},
        "task": {"loss": "classify"},
        "train": {"epochs": 2, "batch_size": 2, "num_workers": 0, "progress": False},
        "optim": {"lr": 1e-3},
        "data": {"dataset": "folder", "cache_dir": str(tmp_path / "cache"), "test_fraction": 0.3,
                 "validation": {"kind": "fraction", "fraction": 0.3}},
        "audio": {"length": 0.2},
    }))
    out = tmp_path / "esr"
    status = train_main(["-c", str(cfg_path), "--data-root", str(data), "-o", str(out), "--set",
                         "output.tensorboard=true"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "skipped unreadable clip" in printed and "broken.wav" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "accuracy" and results["best_epoch"] in (1, 2) and not results["selected_on_test"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_accuracy" in rows[0]
    assert sum(int(r["skipped"]) for r in rows) + len(list(out.glob("bad_files*.txt"))) >= 1
    assert list((out / "tensorboard").iterdir())
    # the export is the standalone classifier's official format, with the dataset's classes
    exported = create_model(out / "model.pt", config={"kind": "esresnext", "audio_cfg": MICRO["audio_cfg"]})
    assert exported.fc.out_features == 3
    best = model_state(out / "best.pt")
    assert all(torch.equal(v, best[k]) for k, v in exported.state_dict().items())


def test_audioclip_export_loads_with_the_factory(tmp_path):
    data = make_tones(tmp_path / "tones")
    cfg = micro_config(tmp_path, data, {"train": {"epochs": 1, "max_steps_per_epoch": 1},
                                        "task": {"loss": "prompt_ce", "modalities": ["audio", "text"],
                                                 "trainable": ["audio"]}})
    results = Trainer(cfg).run()
    model = create_model(results["weights"], config=MICRO)
    best = model_state(tmp_path / "micro" / "best.pt")
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_imagenet_initialisation_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnext50_32x4d().state_dict()
    torch.save(state, tmp_path / "resnext.pth")
    cfg = {"model": {"kind": "esresnext", "config": "AudioCLIP-RN50", "imagenet_init": str(tmp_path / "resnext.pth"),
                     "weights": None}}
    head = build_model(cfg, 5)
    assert torch.equal(head.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert torch.equal(head.conv1.weight, state["conv1.weight"])
    assert torch.equal(head.att2.bn.weight, torch.ones_like(head.att2.bn.weight))  # gates opened
    from audioclip.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="does not fit"):
        build_model({"model": {**cfg["model"], "config": MICRO}}, 5)


def test_cross_validation_over_folds(tmp_path, capsys):
    data = make_tones(tmp_path / "tones", per_class=4, folds=2)
    cfg = micro_config(tmp_path, data, {"train": {"epochs": 1, "max_steps_per_epoch": 1},
                                        "data": {"validation": {"kind": "test"}},
                                        "output": {"export": False, "tensorboard": False}})
    summary = run_cross_validation(cfg, Dist())
    assert [r["test_fold"] for r in summary["folds"]] == [1, 2]
    assert all(r["selected_on_test"] for r in summary["folds"])
    printed = capsys.readouterr().out
    assert "±" in printed and "optimistic" in printed
    assert json.loads((tmp_path / "micro" / "cv.json").read_text())["table"] == summary["table"]
    again = run_cross_validation(cfg, Dist(), resume=True)  # finished folds are not trained again
    assert again["folds"] == summary["folds"]


def test_cv_table_mean_and_std():
    rows = [{"test_fold": k, "best_epoch": 3, "val": v, "test": t, "metric": "accuracy"}
            for k, v, t in ((1, 0.9, 0.8), (2, 0.7, 0.6), (3, 0.8, 0.7))]
    table = format_table(rows)
    assert "0.7000 ± 0.1000" in table and "0.8000 ± 0.1000" in table


def test_prepare_extracts_audio_and_ten_frames_from_video(tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "videos" / "--PJHxphWEs.mp4"
    video.parent.mkdir()
    try:
        with av.open(str(video), "w") as out:
            vs = out.add_stream("mpeg4", rate=10)
            vs.width = vs.height = 64
            vs.pix_fmt = "yuv420p"
            aus = out.add_stream("aac", rate=44100)
            aus.layout = "mono"
            for i in range(20):
                img = np.full((64, 64, 3), 10 * i, dtype=np.uint8)
                for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            t = np.arange(44100 * 2) / 44100
            pcm = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            for k in range(0, pcm.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(pcm[:, k:k + 1024], format="fltp", layout="mono")
                frame.sample_rate = 44100
                for packet in aus.encode(frame):
                    out.mux(packet)
            for stream in (vs, aus):
                for packet in stream.encode(None):
                    out.mux(packet)
    except Exception as e:  # an FFmpeg build without these encoders
        pytest.skip(f"cannot write a test video here: {e}")
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 nothing")
    assert cli_main(["prepare", "extract", str(tmp_path / "videos"), str(tmp_path / "as"), "-q"]) == 3  # broken.mp4
    frames = sorted((tmp_path / "as" / "frames" / "--PJHxphWEs").iterdir())
    assert [p.name for p in frames] == [f"{i:02d}.jpg" for i in range(10)]
    wave, rate = sf.read(tmp_path / "as" / "clips" / "--PJHxphWEs.flac")
    assert rate == 44100 and abs(len(wave) / rate - 2.0) < 0.1
    from PIL import Image

    shades = [np.asarray(Image.open(p)).mean() for p in frames]
    assert shades == sorted(shades) and shades[-1] - shades[0] > 100  # equally spaced through the clip
    # and the AudioSet reader takes the extracted tree as it is
    from audioclip.data import read_audioset

    root = tmp_path / "as"
    (root / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    (root / "balanced_train_segments.csv").write_text('--PJHxphWEs, 0.000, 2.000, "/m/09x0r"\n')
    index = read_audioset(root, eval_segments=None, frames_dir="frames")
    assert index.clips[0].image == str(root / "frames" / "--PJHxphWEs")


def test_trainer_leaves_the_config_alone(tmp_path):
    data = make_tones(tmp_path / "tones")
    cfg = micro_config(tmp_path, data)
    before = copy.deepcopy(cfg)
    Trainer(cfg)  # constructing does not touch the config
    assert cfg == before
    saved = yaml.safe_load((tmp_path / "micro.yaml").read_text())
    assert saved["model"]["config"] == MICRO


def test_audioset_multilabel_regimes_run(tmp_path):
    from test_data import make_audioset

    root = make_audioset(tmp_path / "audioset")
    common = {
        "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2},
        "data": {"dataset": "audioset", "root": str(root), "test_fold": None, "test_split": "eval",
                 "validation": {"kind": "none"}, "options": {"class_weights": "inverse_frequency"}},
        "audio": {"length": 0.1},
        "output": {"export": False, "tensorboard": False},
    }
    # regime 1 shape: the standalone head, multi-label BCE, scored as mAP
    head = micro_config(tmp_path, root, {**common, "model": {"kind": "esresnext", "config": MICRO, "weights": None},
                                         "task": {"loss": "classify"}}, name="as-head")
    results = Trainer(head).run()
    assert results["metric"] == "mAP" and results["test_clips"] == 2 and np.isfinite(results["test"])
    # cooperative / full shape: AudioCLIP on joined label texts with class-weighted samples
    joint = micro_config(tmp_path, root, {**common, "task": {"loss": "contrastive", "modalities": ["audio", "text"],
                                                             "trainable": ["audio", "text"]}}, name="as-joint")
    trainer = Trainer(joint)
    results = trainer.run()
    assert results["metric"] == "mAP" and trainer.data.multilabel
    assert {c.weight for c in trainer.data.train.clips} != {1.0}
    with open(tmp_path / "as-joint" / "metrics.csv") as f:
        assert np.isfinite(float(next(csv.DictReader(f))["train_loss"]))
