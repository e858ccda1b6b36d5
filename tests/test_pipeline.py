"""audioclip.pipeline: the call shapes of transformers' zero-shot and feature-extraction pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

import audioclip
from audioclip import classify, create_model, save_model

LABELS = ["dog", "rain", "a siren"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(create_model("AudioCLIP-tiny"), tmp_path_factory.mktemp("m") / "tiny.pt")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for i in range(2):
        sf.write(root / f"clip{i}.wav", 0.1 * rng.standard_normal((22050 * (i + 1), 1)).astype(np.float32), 44100)
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(root / "pic.png")
    return root


def check_ranked(result, labels=LABELS):
    assert [set(r) for r in result] == [{"score", "label"}] * len(labels)
    assert sorted(r["label"] for r in result) == sorted(labels)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5


def test_zero_shot_audio_from_paths_equals_classify(model_file, media):
    clf = audioclip.pipeline("zero-shot-audio-classification", model=model_file, device="cpu")
    path = str(media / "clip1.wav")
    result = clf(path, candidate_labels=LABELS)
    check_ranked(result)
    expected = classify(clf.model, LABELS, audio=[path], template="This is a sound of {}.")[0]
    assert {r["label"]: r["score"] for r in result} == pytest.approx(dict(zip(LABELS, expected.tolist())), abs=0)
    batch = clf([path, str(media / "clip0.wav")], candidate_labels=LABELS, hypothesis_template="the sound of {}")
    assert len(batch) == 2 and all(len(r) == 3 for r in batch)


def test_zero_shot_audio_from_arrays_and_dicts(model_file):
    clf = audioclip.pipeline("zero-shot-audio-classification", model=model_file, device="cpu")
    wave = (0.1 * np.random.default_rng(1).standard_normal(44100)).astype(np.float32)
    result = clf(wave, candidate_labels=LABELS)
    check_ranked(result)
    expected = classify(clf.model, LABELS, audio=torch.from_numpy(wave)[None, None], template="This is a sound of {}.")
    assert [r["score"] for r in result] == sorted(expected[0].tolist(), reverse=True)
    # a dict at another rate is resampled to 44.1 kHz first
    resampled = clf({"array": wave[::2].copy(), "sampling_rate": 22050}, candidate_labels=LABELS)
    check_ranked(resampled)


def test_zero_shot_image(model_file, media):
    clf = audioclip.pipeline("zero-shot-image-classification", model=model_file, device="cpu")
    from_path = clf(str(media / "pic.png"), candidate_labels=LABELS)
    from_pil = clf(Image.open(media / "pic.png"), candidate_labels=LABELS)
    check_ranked(from_path)
    assert [r["label"] for r in from_path] == [r["label"] for r in from_pil]
    assert [r["score"] for r in from_path] == pytest.approx([r["score"] for r in from_pil], abs=1e-5)
    expected = classify(clf.model, LABELS, image=[str(media / "pic.png")], template="This is a photo of {}.")[0]
    assert {r["label"]: r["score"] for r in from_path} == dict(zip(LABELS, expected.tolist()))


def test_feature_extraction(model_file, media):
    fx = audioclip.pipeline("feature-extraction", model=model_file, device="cpu")
    text = fx("a dog barking")
    assert isinstance(text, list) and len(text) == 64
    with torch.no_grad():
        expected = F.normalize(fx.model.encode_text(["a dog barking"]), dim=-1)[0]
    assert torch.allclose(torch.tensor(text), expected, atol=1e-6)
    vectors = fx([str(media / "clip0.wav"), str(media / "pic.png")], return_tensors=True)
    assert [tuple(v.shape) for v in vectors] == [(64,), (64,)]
    assert all(abs(float(v.norm()) - 1) < 1e-5 for v in vectors)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task"):
        audioclip.pipeline("text-generation", model="AudioCLIP-tiny")
    clf = audioclip.pipeline("zero-shot-audio-classification", model="AudioCLIP-tiny")
    with pytest.raises(ValueError, match="candidate_labels"):
        clf(np.zeros(1000, np.float32), candidate_labels=[])
    with pytest.raises(ValueError, match="placeholder|\\{\\}"):
        clf(np.zeros(1000, np.float32), candidate_labels=["a"], hypothesis_template="no placeholder")
