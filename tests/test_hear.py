"""The HEAR 2021 API (audioclip.hear): the attributes, shapes and dtypes hear-eval-kit relies on."""

from __future__ import annotations

import pytest
import torch

from audioclip import hear


@pytest.fixture(scope="module")
def model():
    return hear.load_model("AudioCLIP-tiny", device="cpu")


def test_model_attributes(model):
    assert model.sample_rate == 44100
    assert model.scene_embedding_size == model.timestamp_embedding_size == model.embed_dim == 64
    assert isinstance(model, torch.nn.Module)


def test_scene_embeddings_shape_dtype_and_clip_vector(model):
    audio = 0.1 * torch.randn(3, int(1.3 * 44100), generator=torch.Generator().manual_seed(0))
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, model.scene_embedding_size) and scene.dtype == torch.float32
    assert torch.allclose(scene.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the package's clip vector: a short sound is centred in one 5 s window
    from audioclip.media.windows import split_windows

    wave = split_windows(audio[1], 44100, window=hear.SCENE_WINDOW_S)[0].wave
    with torch.inference_mode():
        direct = torch.nn.functional.normalize(model.encode_audio(wave[None]).float(), dim=-1)[0]
    assert torch.allclose(scene[1], direct, atol=1e-5)


def test_timestamp_embeddings_shape_dtype_and_milliseconds(model):
    n = int(0.42 * 44100)
    audio = 0.1 * torch.randn(2, n, generator=torch.Generator().manual_seed(1))
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    hop = round(hear.TIMESTAMP_HOP_S * 44100)
    count = n // hop + 1
    assert emb.shape == (2, count, model.timestamp_embedding_size) and emb.dtype == torch.float32
    assert ts.shape == (2, count) and ts.dtype == torch.float32
    assert torch.allclose(ts[0, 1:] - ts[0, :-1], torch.full((count - 1,), hop / 44100 * 1000))
    assert ts[0, 0] == 0 and ts[0, -1] <= n / 44100 * 1000
    assert torch.equal(ts[0], ts[1])


def test_bad_audio_is_refused(model):
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(44100), model)
