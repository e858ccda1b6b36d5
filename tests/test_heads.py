"""Heads (audioclip.heads): the two files, the checks when loading, the decision, the folder replaced whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audioclip.heads import NONE_LABEL, Head, HeadError, HeadMismatchError, load_head, replace_folder
from audioclip.heads import head as head_module


def _head(alpha=0.5, background=None, threshold=0.0, classes=("dog", "rain", "noise"), dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    parts = {"trained.weight": torch.randn(len(classes), dim, generator=g),
             "trained.bias": torch.randn(len(classes), generator=g),
             "zeroshot.weight": 10 * torch.randn(len(classes), dim, generator=g)}
    weight, bias = head_module.mix(parts, alpha)
    return Head(list(classes), weight, bias, "softmax", background, threshold, alpha, parts,
                {"checkpoint": "tiny@random-abc", "window_s": 5.0})


def test_save_and_load_give_the_same_head(tmp_path):
    head = _head(background="noise", threshold=0.4)
    head.save(tmp_path / "h")
    loaded = load_head(tmp_path / "h", checkpoint="tiny@random-abc")
    x = torch.randn(5, 8)
    assert loaded.labels == head.labels and loaded.background == "noise" and loaded.threshold == 0.4
    assert torch.allclose(loaded.probabilities(x), head.probabilities(x))
    assert loaded.info["window_s"] == 5.0
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head.json", "head.safetensors"]


def test_a_head_refuses_a_model_of_another_checkpoint(tmp_path):
    _head().save(tmp_path / "h")
    with pytest.raises(HeadMismatchError) as err:
        load_head(tmp_path / "h", checkpoint="full@8f4ad8f2")
    message = str(err.value)
    assert "tiny@random-abc" in message and "full@8f4ad8f2" in message and "\n" not in message


def test_weights_that_are_not_the_described_ones_are_refused(tmp_path):
    _head().save(tmp_path / "h")
    other = tmp_path / "other"
    _head(seed=1).save(other)
    (tmp_path / "h" / "head.safetensors").write_bytes((other / "head.safetensors").read_bytes())
    with pytest.raises(HeadError, match="sha256"):
        load_head(tmp_path / "h")


def test_a_folder_that_is_not_a_head_is_one_line(tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "head.json").write_text(json.dumps({"labels": ["a"]}))
    (tmp_path / "h" / "head.safetensors").write_bytes(b"x")
    with pytest.raises(HeadError, match="not an audioclip head"):
        load_head(tmp_path / "h")
    with pytest.raises(HeadError, match="no such folder"):
        load_head(tmp_path / "absent")


def test_mixing_weight_zero_is_the_zero_shot_classifier():
    head = _head(alpha=0.7)
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    zs = (x @ head.parts["zeroshot.weight"].T).softmax(-1)
    assert torch.allclose(head.mixed(0.0).probabilities(x), zs, atol=1e-6)
    trained = (x @ head.parts["trained.weight"].T + head.parts["trained.bias"]).softmax(-1)
    assert torch.allclose(head.mixed(1.0).probabilities(x), trained, atol=1e-6)


def test_decision_none_for_background_and_below_threshold():
    head = Head(["dog", "rain", "noise"], torch.zeros(3, 2), torch.zeros(3), background="noise", threshold=0.5)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.45, 0.1, 0.45], [0.1, 0.1, 0.8]])
    assert head.decide(probs) == ["dog", NONE_LABEL, NONE_LABEL]
    sigmoid = Head(["dog", "rain"], torch.zeros(2, 2), torch.zeros(2), activation="sigmoid")
    assert sigmoid.decide(torch.tensor([[0.9, 0.6], [0.2, 0.1]])) == ["dog;rain", NONE_LABEL]


def test_a_failed_write_leaves_the_previous_head(tmp_path, monkeypatch):
    folder = tmp_path / "h"
    first = _head(seed=0)
    first.save(folder, extra={"embeddings.parquet": b"vectors"})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    calls = []
    real = head_module.write_bytes_atomic

    def dies_on_second_file(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a fit killed while writing the new head
        return real(path, data)

    monkeypatch.setattr(head_module, "write_bytes_atomic", dies_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        _head(seed=1).save(folder, carry=("embeddings.parquet",))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["h"]  # no temporary folder left beside it
    # the next save replaces the head whole and keeps the carried file
    _head(seed=1).save(folder, carry=("embeddings.parquet",))
    assert (folder / "embeddings.parquet").read_bytes() == b"vectors"
    assert not torch.equal(load_head(folder).weight, first.weight)


def test_replace_folder_without_the_exchange_call(tmp_path, monkeypatch):
    monkeypatch.setattr(head_module, "_exchange", lambda a, b: False)  # systems without renameat2
    replace_folder(tmp_path / "f", {"a": b"1"})
    replace_folder(tmp_path / "f", {"b": b"2"})
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_head_module_for_export_matches(tmp_path):
    head = _head()
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(head.as_module()(x), head.probabilities(x), atol=1e-6)
    assert np.isclose(head.probabilities(x).sum(-1).numpy(), 1.0).all()
