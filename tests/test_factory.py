"""The model factory: create_model on every kind of name, list_models / list_pretrained, the file format, errors."""

from __future__ import annotations

import hashlib

import pytest
import torch

import audioclip
from audioclip import AudioCLIP, CheckpointError, ESResNeXtFbsp, checkpoint_id, create_model, save_model
from audioclip import checkpoints
from audioclip.checkpoints import PretrainedWeights
from audioclip.model import AudioHeadConfig
from audioclip.model.transforms import FrozenFbspFilterbank

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
    path = save_model(model, tmp_path / "tiny.pt")
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(model.state_dict())  # a plain state dict, original keys
    reloaded = create_model(path, config=TINY)
    assert not reloaded.training
    for a, b in zip(probe(model), probe(reloaded)):
        assert torch.equal(a, b)


def test_full_size_file_has_exactly_the_original_keys(reference_model, manifest, reference, tmp_path):
    path = save_model(reference_model, tmp_path / "AudioCLIP-Full-Training.pt")
    raw = torch.load(path, weights_only=True)
    assert {k: list(v.shape) for k, v in raw.items()} == {
        e["key"]: e["shape"] for e in manifest["audioclip"]["entries"]
    }
    reloaded = create_model(path)
    wave = torch.from_numpy(reference["audio_c_wave"])
    with torch.no_grad():
        assert torch.equal(reloaded.encode_audio(wave), reference_model.encode_audio(wave))


def test_named_checkpoint_is_downloaded_verified_and_loaded(server, tmp_path, monkeypatch):
    source = tiny(1)
    file = save_model(source, server.root / "AudioCLIP-Full-Training.pt")
    data = file.read_bytes()
    entry = PretrainedWeights(
        "full", file.name, f"{server.url}/{file.name}", hashlib.sha256(data).hexdigest(), len(data),
        "audioclip", "test", "AudioCLIP-tiny",
    )
    monkeypatch.setitem(checkpoints.REGISTRY, "full", entry)
    cache = tmp_path / "cache"
    model = create_model("full", cache_dir=cache, progress=False)
    assert (cache / file.name).read_bytes() == data
    for a, b in zip(probe(source), probe(model)):
        assert torch.equal(a, b)
    # second time: from the cache, offline
    server.requests.clear()
    create_model("full", cache_dir=cache, offline=True)
    assert server.requests == []


def test_named_checkpoint_offline_and_absent(tmp_path):
    with pytest.raises(CheckpointError, match="offline"):
        create_model("full", cache_dir=tmp_path, offline=True)


def test_clip_only_checkpoint_fills_text_and_image(tmp_path):
    source = tiny(2)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("audio.", "logit_scale_a"))}
    path = tmp_path / "CLIP.pt"
    torch.save(state, path)
    model = create_model(path, config=TINY)
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

    model = create_model(clip_path, audio_weights=audio_path, config=TINY)
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
    reloaded = create_model(path)
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
        create_model(path, config=TINY)
    message = str(info.value)
    assert "broken.pt" in message
    assert "audio.fc.weight" in message and "527" in message
    assert "visual.conv1.weight" in message


def test_full_size_model_refuses_a_tiny_checkpoint(tmp_path):
    path = save_model(tiny(0), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match=r"(?s)tiny.pt.*expected"):
        create_model("AudioCLIP-RN50", pretrained=path)


def test_mixed_up_checkpoint_kinds_get_a_hint(tmp_path):
    classifier_path = tmp_path / "ESRNXFBSP.pt"
    torch.save(ESResNeXtFbsp(num_classes=5, config=TINY_AUDIO).state_dict(), classifier_path)
    with pytest.raises(CheckpointError, match="standalone audio classifier.*audio_weights"):
        create_model(classifier_path, config=TINY)
    audioclip_path = save_model(tiny(0), tmp_path / "audioclip.pt")
    with pytest.raises(CheckpointError, match="not a standalone audio classifier"):
        create_model(audioclip_path, config="ESResNeXt-fbsp-tiny")


def test_truncated_checkpoint(tmp_path):
    path = save_model(tiny(0), tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pt"):
        create_model(path, config=TINY)


# -- the factory's names --------------------------------------------------------------


def test_list_models_and_list_pretrained():
    models = audioclip.list_models()
    assert {"AudioCLIP-RN50", "AudioCLIP-tiny", "ESResNeXt-fbsp", "ESResNeXt-fbsp-tiny"} <= set(models)
    pretrained = audioclip.list_pretrained()
    assert ("AudioCLIP-RN50", "full") in pretrained and ("AudioCLIP-RN50", "partial") in pretrained
    assert ("ESResNeXt-fbsp", "esrnxfbsp") in pretrained
    assert all(arch in models for arch, _ in pretrained)


def test_architecture_name_gives_random_weights():
    torch.manual_seed(0)
    a = create_model("AudioCLIP-tiny", deterministic=False)
    b = create_model("AudioCLIP-tiny", deterministic=False)
    assert isinstance(a, AudioCLIP) and not a.training
    assert a.pretrained_cfg["architecture"] == "AudioCLIP-tiny" and a.pretrained_cfg["weights"] is None
    assert not torch.equal(a.audio.conv1.weight, b.audio.conv1.weight)
    assert checkpoint_id(a).startswith("AudioCLIP-tiny@random-") and checkpoint_id(a) != checkpoint_id(b)
    head = create_model("ESResNeXt-fbsp-tiny", num_classes=7)
    assert isinstance(head, ESResNeXtFbsp) and head.fc.out_features == 7


def test_tiny_checkpoint_loads_with_no_config(tmp_path):
    source = tiny(0)
    path = save_model(source, tmp_path / "mine.pt")
    model = create_model(path)
    assert model.pretrained_cfg["architecture"] == "AudioCLIP-tiny"
    for a, b in zip(probe(source), probe(model)):
        assert torch.equal(a, b)
    # the id names the file's content, not its name or where it lies
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    assert checkpoint_id(model).split("@")[1] == checkpoint_id(create_model(copy)).split("@")[1]


def test_standalone_classifier_file_is_recognised(tmp_path):
    torch.manual_seed(1)
    classifier = ESResNeXtFbsp(num_classes=12, config=TINY_AUDIO).eval()
    path = tmp_path / "clf.pt"
    torch.save(classifier.state_dict(), path)
    model = create_model(path)
    assert isinstance(model, ESResNeXtFbsp) and model.fc.out_features == 12
    assert model.pretrained_cfg["architecture"] == "ESResNeXt-fbsp-tiny"


def test_unrecognised_shapes_name_the_file_and_the_closest_architecture(tmp_path):
    state = tiny(0).state_dict()
    state["audio.fc.weight"] = torch.zeros(3, state["audio.fc.weight"].shape[1])
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"odd.pt.*no bundled AudioCLIP architecture.*closest: AudioCLIP-tiny"):
        create_model(path)


def test_unknown_name(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing file.*known names: full"):
        create_model(str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="is a folder"):
        create_model(tmp_path)


def test_cuda_without_a_gpu_is_a_value_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        create_model("AudioCLIP-tiny", device="cuda")
    assert create_model("AudioCLIP-tiny", device="auto").logit_scale.device.type == "cpu"


def test_loaded_weights_are_not_initialised_first(tmp_path, monkeypatch):
    """A file that covers the whole model skips random initialisation (start-up time)."""
    path = save_model(tiny(0), tmp_path / "t.pt")
    calls = []
    real = torch.nn.init.kaiming_normal_

    def spy(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", spy)
    create_model(path)
    assert calls == []
    create_model("AudioCLIP-tiny")  # a random model is initialised
    assert calls
    assert torch.nn.init.kaiming_normal_ is spy  # restored after the load


def test_audio_mode_transforms_the_returned_model(tmp_path):
    path = save_model(tiny(0), tmp_path / "t.pt")
    plain = create_model(path)
    frozen = create_model(path, audio_mode="default")
    assert isinstance(frozen.audio.fbsp, FrozenFbspFilterbank)
    assert not isinstance(plain.audio.fbsp, FrozenFbspFilterbank)
    assert list(frozen.state_dict()) == list(plain.state_dict())
    assert checkpoint_id(frozen) == checkpoint_id(plain)
    for a, b in zip(probe(plain), probe(frozen)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown audio mode"):
        create_model(path, audio_mode="turbo")


# -- model configs from files: bounded, bundled names only, dimensions checked before anything is built ------------


@pytest.fixture
def hub_folder(tmp_path):
    from audioclip.export.hub import export_hub_folder

    export_hub_folder(tiny(0), tmp_path / "repo")
    return tmp_path / "repo"


def _set_config(folder, **changes):
    import json

    path = folder / "config.json"
    config = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


def test_a_hub_config_names_a_bundled_architecture_never_a_path(hub_folder, tmp_path):
    import json

    from audioclip.model.config import load_model_config

    elsewhere = tmp_path / "elsewhere.json"  # a valid config: loading it would prove the name was opened
    elsewhere.write_text(json.dumps(load_model_config(TINY)))
    for name in (str(elsewhere), "../elsewhere.json", "/etc/passwd", 7):
        _set_config(hub_folder, architecture=name, model_cfg=None)
        with pytest.raises(CheckpointError, match=r"config.json names the architecture .* which is not bundled"):
            create_model(hub_folder)
    _set_config(hub_folder, architecture=TINY)  # a bundled name is fine
    assert create_model(hub_folder).pretrained_cfg["architecture"] == TINY


BAD_CONFIGS = [
    ({"embed_dim": 10**6}, "embed_dim is 1000000, not a whole number from 1 to 8,192"),
    ({"embed_dim": 64.5}, "embed_dim is 64.5, not a whole number"),
    ({"vision_cfg": {"image_size": 10**5, "layers": [1, 1, 1, 1], "width": 16}}, "vision_cfg.image_size is 100000"),
    ({"text_cfg": {"vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, "hf_model_name": "bert-base-uncased"}},
     "text_cfg.'hf_model_name' is not a setting of audioclip's models"),
    ({"audio_cfg": {"layers": [1, 1, 1, 10**6]}}, r"audio_cfg.layers is \[1, 1, 1, 1000000\], not a 4 whole numbers"),
    ({"audio_cfg": {"sample_rate": 0}}, "audio_cfg.sample_rate is 0"),
    ({"audio_cfg": {"n_fft": 512, "win_length": 4000}}, "audio_cfg.win_length is more than n_fft"),
    ({"kind": "other"}, "kind is 'other'"),
]


@pytest.mark.parametrize("change, problem", BAD_CONFIGS)
def test_a_model_config_is_bounded_before_anything_is_built(hub_folder, tmp_path, change, problem, monkeypatch):
    import json

    import audioclip.factory as factory
    from audioclip.model.config import load_model_config

    def never(*args, **kwargs):
        raise AssertionError("a model was built from a config out of bounds")

    monkeypatch.setattr(factory.build, "build_model", never)
    cfg = load_model_config(TINY)
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    _set_config(hub_folder, model_cfg=cfg)  # in a Hub folder's config.json
    with pytest.raises(CheckpointError, match=rf"config.json model_cfg: invalid model config: {problem}"):
        create_model(hub_folder)
    path = tmp_path / "cfg.json"  # given explicitly
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"cfg.json: invalid model config: {problem}"):
        create_model(TINY, config=path)
    with pytest.raises(CheckpointError, match=f"invalid model config: {problem}"):  # a dict
        create_model(TINY, config=cfg)


def test_a_model_config_file_is_read_bounded(tmp_path):
    import os

    from test_hostile import run_with_deadline

    big = tmp_path / "big.json"
    big.write_text('{"embed_dim": 64, "description": "' + "x" * 2_000_000 + '"}')
    with pytest.raises(CheckpointError, match=r"big.json: the model config is 2 MB, more than the 1 MB allowed"):
        create_model(TINY, config=big)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.json")
        with pytest.raises(CheckpointError, match=r"fifo.json: the model config is not a regular file \(a FIFO\)"):
            run_with_deadline(lambda: create_model(TINY, config=tmp_path / "fifo.json"), 60)
    with pytest.raises(CheckpointError, match="unknown model config"):
        create_model(TINY, config=tmp_path / "absent.json")


def test_too_many_parameters_are_refused_from_the_meta_device(monkeypatch):
    import audioclip.factory as factory
    from audioclip.model.config import load_model_config

    cfg = load_model_config("AudioCLIP-RN50")  # 134 M parameters: counted without memory
    monkeypatch.setattr(factory.configs, "MAX_PARAMETERS", 100_000_000)
    with pytest.raises(CheckpointError, match=r"config: invalid model config: 1\d\d,\d{3},\d{3} parameters, more than"):
        create_model(TINY, config=cfg)
