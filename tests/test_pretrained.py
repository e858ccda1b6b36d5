"""AudioCLIP / ESResNeXtFbsp weights: from_pretrained, the official file format, errors."""

from __future__ import annotations

import hashlib

import pytest
import torch

from audioclip import AudioCLIP, CheckpointError, ESResNeXtFbsp
from audioclip import checkpoints
from audioclip.checkpoints import PretrainedWeights
from audioclip.model import AudioHeadConfig

TINY = "AudioCLIP-tiny"
TINY_AUDIO = AudioHeadConfig(n_fft=512, hop_length=256, win_length=400, layers=(1, 1, 1, 1), groups=8)


def tiny(seed: int) -> AudioCLIP:
    torch.manual_seed(seed)
    return AudioCLIP(TINY).eval()


def probe(model: AudioCLIP) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    wave = torch.rand(2, 1, 4000, generator=g) - 0.5
    image = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        out = model(audio=wave, image=image, text=["dog", "rain"])
    return out.audio_features, out.image_features, out.text_features, out.loss


def test_saved_model_reloads_identically(tmp_path):
    model = tiny(0)
    path = model.save(tmp_path / "tiny.pt")
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(model.state_dict())  # a plain state dict, original keys
    reloaded = AudioCLIP.from_pretrained(path, config=TINY)
    assert not reloaded.training
    for a, b in zip(probe(model), probe(reloaded)):
        assert torch.equal(a, b)


def test_full_size_file_has_exactly_the_original_keys(reference_model, manifest, reference, tmp_path):
    path = reference_model.save(tmp_path / "AudioCLIP-Full-Training.pt")
    raw = torch.load(path, weights_only=True)
    assert {k: list(v.shape) for k, v in raw.items()} == {
        e["key"]: e["shape"] for e in manifest["audioclip"]["entries"]
    }
    reloaded = AudioCLIP.from_pretrained(path)
    wave = torch.from_numpy(reference["audio_c_wave"])
    with torch.no_grad():
        assert torch.equal(reloaded.encode_audio(wave), reference_model.encode_audio(wave))


def test_named_checkpoint_is_downloaded_verified_and_loaded(server, tmp_path, monkeypatch):
    source = tiny(1)
    file = source.save(server.root / "AudioCLIP-Full-Training.pt")
    data = file.read_bytes()
    entry = PretrainedWeights(
        "full", file.name, f"{server.url}/{file.name}", hashlib.sha256(data).hexdigest(), len(data),
        "audioclip", "test",
    )
    monkeypatch.setitem(checkpoints.REGISTRY, "full", entry)
    cache = tmp_path / "cache"
    model = AudioCLIP.from_pretrained("full", config=TINY, cache_dir=cache, progress=False)
    assert (cache / file.name).read_bytes() == data
    for a, b in zip(probe(source), probe(model)):
        assert torch.equal(a, b)
    # second time: from the cache, offline
    server.requests.clear()
    AudioCLIP.from_pretrained("full", config=TINY, cache_dir=cache, offline=True)
    assert server.requests == []


def test_named_checkpoint_offline_and_absent(tmp_path):
    with pytest.raises(CheckpointError, match="offline"):
        AudioCLIP.from_pretrained("full", config=TINY, cache_dir=tmp_path, offline=True)


def test_clip_only_checkpoint_fills_text_and_image(tmp_path):
    source = tiny(2)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("audio.", "logit_scale_a"))}
    path = tmp_path / "CLIP.pt"
    torch.save(state, path)
    model = AudioCLIP.from_pretrained(path, config=TINY)
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not torch.equal(loaded["audio.conv1.weight"], source.state_dict()["audio.conv1.weight"])


def test_audio_weights_from_a_standalone_classifier(tmp_path):
    torch.manual_seed(3)
    classifier = ESResNeXtFbsp(num_classes=527, config=TINY_AUDIO)
    audio_path = tmp_path / "ESRNXFBSP.pt"
    torch.save(classifier.state_dict(), audio_path)
    clip_path = tmp_path / "CLIP.pt"
    torch.save({k: v for k, v in tiny(4).state_dict().items() if not k.startswith("audio.")}, clip_path)

    model = AudioCLIP.from_pretrained(clip_path, audio_weights=audio_path, config=TINY)
    for key, value in classifier.state_dict().items():
        ours = model.audio.state_dict()[key]
        if key.startswith("fc."):
            assert ours.shape[0] == model.embed_dim  # the 527-class layer does not fit: left out
        else:
            assert torch.equal(ours, value), key


def test_standalone_classifier_round_trip_and_class_count(tmp_path):
    torch.manual_seed(6)
    classifier = ESResNeXtFbsp(num_classes=10, config=TINY_AUDIO).eval()
    path = tmp_path / "classifier.pt"
    torch.save(classifier.state_dict(), path)
    reloaded = ESResNeXtFbsp.from_pretrained(path, config=TINY_AUDIO)
    wave = torch.rand(1, 2, 3000) - 0.5
    with torch.no_grad():
        assert torch.equal(reloaded(wave), classifier(wave))
    assert reloaded.fc.out_features == 10


def test_wrong_shapes_and_missing_keys_are_reported_with_the_file(tmp_path):
    state = tiny(0).state_dict()
    state["audio.fc.weight"] = torch.zeros(527, state["audio.fc.weight"].shape[1])
    del state["visual.conv1.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        AudioCLIP.from_pretrained(path, config=TINY)
    message = str(info.value)
    assert "broken.pt" in message
    assert "audio.fc.weight" in message and "527" in message
    assert "visual.conv1.weight" in message


def test_full_size_model_refuses_a_tiny_checkpoint(tmp_path):
    path = tiny(0).save(tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match=r"(?s)tiny.pt.*expected"):
        AudioCLIP.from_pretrained(path)


def test_mixed_up_checkpoint_kinds_get_a_hint(tmp_path):
    classifier_path = tmp_path / "ESRNXFBSP.pt"
    torch.save(ESResNeXtFbsp(num_classes=5, config=TINY_AUDIO).state_dict(), classifier_path)
    with pytest.raises(CheckpointError, match="standalone audio classifier.*audio_weights"):
        AudioCLIP.from_pretrained(classifier_path, config=TINY)
    audioclip_path = tiny(0).save(tmp_path / "audioclip.pt")
    with pytest.raises(CheckpointError, match="AudioCLIP.from_pretrained"):
        ESResNeXtFbsp.from_pretrained(audioclip_path, config=TINY_AUDIO)


def test_truncated_checkpoint(tmp_path):
    path = tiny(0).save(tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pt"):
        AudioCLIP.from_pretrained(path, config=TINY)
