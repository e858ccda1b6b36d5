"""DDP: two processes on gloo (launched by torchrun, as a user would) match one process on the same global batch.

What makes this hold (see audioclip.train.objectives and audioclip.data.sampling): each process takes its
slice of the same global batch and the same per-sample augmentations; contrastive features are gathered
from all processes, so the loss is the one-process loss; the value given to backward is scaled so that
DDP's gradient average is that loss's gradient; and the fbsp gradient rule is applied after the average.

BatchNorm: in training mode each process normalises with the statistics of its own half batch, which is
not what one process does with the whole batch. These runs therefore keep BatchNorm statistics fixed
(``model.freeze_bn``; SyncBatchNorm, ``model.sync_bn``, is the GPU answer). With that, one training step
agrees to float32 rounding: loss, every weight, the validation and test scores.

Why one step: the fbsp front end is chaotic in its spline order ``m`` near its initial value 0 (the
kernel contains sinc(fb t / (m + 1e-8)) ** m), and its gradient is ill-conditioned (large terms cancel),
so summing two half batches in another order moves its max-normalised gradient by ~1e-3, the weights by
~lr * 1e-3, and the next step's loss by ~1e-4. From the second step on, a DDP run and a single-process
run are therefore as different as any two float32 summation orders make them (statistically the same,
not bitwise), like two single-process runs on different BLAS builds would be. The fbsp weights and
momentum buffers (= the first step's gradients) are compared with that looser bound. (Splitting the
batch in one process, detaching the other half's features, gives the very same fbsp differences: they
come from the split, not from DDP.)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audioclip.train import Trainer
from audioclip.train.checkpoint import load_checkpoint

from test_train import MICRO, make_tones, micro_config, one_thread  # noqa: F401 (fixture)

TORCHRUN = Path(sys.executable).with_name("torchrun")

SCENARIOS = {
    "audioclip-contrastive": {
        "task": {"loss": "contrastive", "modalities": ["audio", "text"], "trainable": ["audio"]},
    },
    "esresnext-classify": {
        "model": {"kind": "esresnext", "config": MICRO, "weights": None, "freeze_bn": True},
        "task": {"loss": "classify"},
        "optim": {"lr": 1e-3},
    },
}


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_two_processes_match_one(tmp_path, scenario):
    data = make_tones(tmp_path / "tones", per_class=8)
    over = {
        "model": {"kind": "audioclip", "config": MICRO, "weights": None, "freeze_bn": True},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 3, "max_steps_per_epoch": 1},
        "data": {"validation": {"kind": "fraction", "fraction": 0.25}, "test_fraction": 0.2},
        "output": {"export": True, "tensorboard": False},
        **SCENARIOS[scenario],
    }
    single = micro_config(tmp_path, data, over, name="single")
    one = Trainer(single).run()

    config = tmp_path / "single.yaml"
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "audioclip", "train",
         "-c", str(config), "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x 2 process(es)" in proc.stdout

    # the same clips were scored, with the same result
    two = json.loads((out / "results.json").read_text())
    assert two["metric"] == one["metric"]
    for key in ("test", "test_clips", "best_epoch", "val"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    with open(tmp_path / "single" / "metrics.csv") as f1, open(out / "metrics.csv") as f2:
        for a, b in zip(csv.DictReader(f1), csv.DictReader(f2)):
            assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-6)

    a, b = load_checkpoint(tmp_path / "single" / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    lr = single["optim"]["lr"]
    for key, value in a["model"].items():
        other = b["model"][key]
        if not value.is_floating_point() or not value.numel():
            assert torch.equal(value, other), key
        elif "fbsp" in key:  # one step of at most ~1.9 lr per element (Nesterov), 5 % of it order-dependent
            assert float((value - other).abs().max()) <= 0.1 * lr, (key, (value - other).abs().max())
        else:
            assert torch.allclose(value, other, rtol=1e-5, atol=1e-6), (key, (value - other).abs().max())
    names = [n for n, p in _named_trainable(a["model"], single)]
    for i, state in a["optimizer"]["state"].items():
        m1, m2 = state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"]
        scale = float(m1.abs().max()) or 1.0
        bound = 5e-2 if "fbsp" in names[i] else 1e-4
        assert float((m1 - m2).abs().max()) <= bound * scale, (names[i], float((m1 - m2).abs().max()), scale)
    # the exported weights are the same file either way (rank 0 wrote it once)
    assert (out / "model.pt").exists() and not list(out.glob(".*.tmp"))
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def _named_trainable(state: dict, cfg: dict):
    """Trainable parameters in the optimizer's order (rebuilt the way the trainer builds them)."""
    from audioclip.train.build import build_model, param_groups, setup_trainable

    model = build_model(cfg, 2)
    setup_trainable(model, cfg)
    ids = {id(p): n for n, p in model.named_parameters()}
    return [(ids[id(p)], p) for g in param_groups(model, cfg) for p in g["params"]]
