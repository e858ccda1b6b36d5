"""Behaviour of the model API on a tiny configuration: inputs, modalities, loss."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from audioclip import AudioCLIP, tokenize
from audioclip.model import contrastive_loss
from audioclip.model.tokenizer import TextTooLongWarning


def wave(batch=2, channels=1, samples=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.rand(batch, channels, samples, generator=g) - 0.25


def images(model, batch=2, seed=0):
    size = model.visual.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- bad input ------------------------------------------------------------


@pytest.mark.parametrize(
    "audio, error, match",
    [
        (torch.zeros(2, 1, 1, 100), ValueError, r"\(batch, channels, samples\)"),
        (torch.zeros(100), ValueError, r"\(batch, channels, samples\)"),
        (torch.zeros(2, 100, dtype=torch.int16), TypeError, "int16.*32768"),
        (torch.zeros(0, 1, 100), ValueError, "empty"),
        (torch.zeros(2, 1, 0), ValueError, "empty"),
        (torch.full((2, 1, 100), 20000.0), ValueError, "peak of 20000.*32768"),
        ([0.0, 0.1], TypeError, "torch.Tensor"),
    ],
)
def test_bad_audio_gets_a_specific_error(tiny_model, audio, error, match):
    with pytest.raises(error, match=match):
        tiny_model.encode_audio(audio)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_audio_names_the_batch_item(tiny_model, value):
    audio = wave(batch=3)
    audio[1, 0, 17] = value
    with pytest.raises(ValueError, match=r"NaN or infinite.*\[1\]"):
        tiny_model.encode_audio(audio)


def test_audio_shorter_than_one_window_is_padded_to_one_frame(tiny_model):
    window = tiny_model.audio.config.win_length
    for samples in (1, 100, window):
        with torch.no_grad():
            db = tiny_model.audio.log_power(wave(samples=samples))
            embedding = tiny_model.encode_audio(wave(samples=samples))
        assert db.shape[-1] == 1
        assert torch.isfinite(embedding).all()
    with torch.no_grad():
        assert tiny_model.audio.log_power(wave(samples=window + 1)).shape[-1] == 2


def test_float64_and_float16_audio_are_accepted(tiny_model):
    audio = wave()
    with torch.no_grad():
        expected = tiny_model.encode_audio(audio)
        assert torch.equal(tiny_model.encode_audio(audio.double()), expected)
        assert torch.isfinite(tiny_model.encode_audio(audio.half())).all()


def test_slight_overshoot_from_resampling_is_accepted(tiny_model):
    audio = wave()
    audio[0, 0, 0] = 1.05
    with torch.no_grad():
        assert torch.isfinite(tiny_model.encode_audio(audio)).all()


def test_bad_images(tiny_model):
    size = tiny_model.visual.image_size
    with pytest.raises(ValueError, match=rf"\(batch, 3, {size}, {size}\)"):
        tiny_model.encode_image(torch.zeros(1, 3, size + 1, size))
    with pytest.raises(ValueError, match="shape"):
        tiny_model.encode_image(torch.zeros(3, size, size))
    with pytest.raises(TypeError, match="float"):
        tiny_model.encode_image(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    bad = images(tiny_model)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*\[1\]"):
        tiny_model.encode_image(bad)


def test_bad_text(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        tiny_model.encode_text([])
    with pytest.raises(TypeError, match=r"text\[1\]"):
        tiny_model.encode_text(["fine", 3])
    with pytest.raises(ValueError, match="token ids"):
        tiny_model.encode_text(torch.zeros(2, 77))


def test_long_text_is_truncated_with_a_warning_or_refused():
    long_text = " ".join(["dog"] * 100)
    with pytest.warns(TextTooLongWarning, match="102 tokens"):
        tokens = tokenize(["short", long_text])
    assert tokens.shape == (2, 77)
    assert tokens[1, -1].item() == tokens[0, 2].item() == 49407  # ends with <end>
    with pytest.raises(ValueError, match="77-token context"):
        tokenize([long_text], truncate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize([" ".join(["dog"] * 75)])  # exactly fits: no warning


def test_text_forms_agree(tiny_model):
    with torch.no_grad():
        as_list = tiny_model.encode_text(["a dog barking", "rain"])
        as_labels = tiny_model.encode_text([["a dog barking"], ["rain"]])
        as_tokens = tiny_model.encode_text(tokenize(["a dog barking", "rain"]))
        as_str = tiny_model.encode_text("rain")
    assert torch.equal(as_list, as_labels)
    assert torch.equal(as_list, as_tokens)
    assert torch.allclose(as_str, as_list[1:], atol=1e-6)


def test_forward_needs_a_modality(tiny_model):
    with pytest.raises(ValueError, match="at least one"):
        tiny_model()


# -- modalities and outputs --------------------------------------------------


@pytest.mark.parametrize(
    "given", [("audio",), ("image",), ("text",), ("audio", "image"), ("audio", "text"), ("image", "text"),
              ("audio", "image", "text")]
)
def test_any_subset_of_modalities(tiny_model, given):
    inputs = {"audio": wave(), "image": images(tiny_model), "text": ["a dog", "rain"]}
    with torch.no_grad():
        out = tiny_model(**{k: inputs[k] for k in given})
    for name in ("audio", "image", "text"):
        features = getattr(out, f"{name}_features")
        if name in given:
            assert features.shape == (2, tiny_model.embed_dim)
            assert torch.allclose(features.norm(dim=-1), torch.ones(2), atol=1e-5)
        else:
            assert features is None
    for a, b in (("audio", "image"), ("audio", "text"), ("image", "text")):
        logits = getattr(out, f"logits_{a}_{b}")
        assert (logits is not None) == (a in given and b in given)
    assert (out.loss is not None) == (len(given) >= 2)


def test_zero_shot_shapes_with_unequal_batches(tiny_model):
    with torch.no_grad():
        out = tiny_model(audio=wave(batch=3), text=["dog", "rain", "siren", "engine", "bird"])
    assert out.logits_audio_text.shape == (3, 5)
    assert out.loss is None  # a contrastive loss needs matching pairs


def test_stereo_sums_channel_features_before_the_projection(tiny_model):
    audio = wave(channels=2)
    head = tiny_model.audio
    with torch.no_grad():
        left = head.pooled_features(head.log_power(audio[:, :1]))
        right = head.pooled_features(head.log_power(audio[:, 1:]))
        stereo = tiny_model.encode_audio(audio)
    assert torch.allclose(stereo, head.fc(left + right), atol=1e-5)


def test_logit_scales_are_clamped(tiny_model):
    model = AudioCLIP("AudioCLIP-tiny")
    with torch.no_grad():
        model.logit_scale_ai.fill_(10.0)
        model.logit_scale_at.fill_(-3.0)
        model.logit_scale.fill_(math.log(20.0))
    scales = model.logit_scales()
    assert scales["audio_image"].item() == 100.0
    assert scales["audio_text"].item() == 1.0
    assert scales["image_text"].item() == pytest.approx(20.0)


# -- loss -------------------------------------------------------------------


def test_contrastive_loss_by_hand():
    torch.manual_seed(0)
    logits = [torch.randn(4, 4) for _ in range(3)]
    target = torch.arange(4)

    def symmetric(x):
        return F.cross_entropy(x, target) + F.cross_entropy(x.T, target)

    assert torch.allclose(contrastive_loss(logits[:1]), symmetric(logits[0]))
    assert torch.allclose(contrastive_loss(logits[:2]), (symmetric(logits[0]) + symmetric(logits[1])) / 2)
    assert torch.allclose(contrastive_loss(logits), sum(symmetric(x) for x in logits) / 6)


def test_sample_weights_weigh_each_sample():
    torch.manual_seed(1)
    x = torch.randn(3, 3)
    weights = torch.tensor([1.0, 0.0, 3.0])
    rows = -x.log_softmax(dim=1).diagonal()
    cols = -x.log_softmax(dim=0).diagonal()
    expected = (weights * rows).sum() / weights.sum() + (weights * cols).sum() / weights.sum()
    assert torch.allclose(contrastive_loss([x], weights), expected)
    assert torch.allclose(contrastive_loss([x], torch.ones(3)), contrastive_loss([x]))


def test_loss_includes_the_fbsp_regulariser_when_audio_is_present():
    model = AudioCLIP("AudioCLIP-tiny").eval()
    with torch.no_grad():
        assert model.audio.fbsp_norm_loss() < 1e-8  # the initial bank is a unit-norm DFT
        model.audio.fbsp.fb.mul_(1.5)
        with_audio = model(audio=wave(), text=["a", "b"])
        logits_only = contrastive_loss([with_audio.logits_audio_text])
        regulariser = model.audio.fbsp_norm_loss()
    assert regulariser > 1e-3
    assert torch.allclose(with_audio.loss, logits_only + regulariser)


def test_gradients_reach_every_head_and_the_filterbank():
    torch.manual_seed(0)
    model = AudioCLIP("AudioCLIP-tiny").train()
    with torch.no_grad():  # exp(log(100)) rounds above the clamp, where the gradient is zero
        model.logit_scale_ai.fill_(math.log(50.0))
        model.logit_scale_at.fill_(math.log(50.0))
    out = model(audio=wave(batch=3), image=images(model, batch=3), text=["a", "b", "c"])
    out.loss.backward()
    for name in ("audio.fbsp.m", "audio.fbsp.fb", "audio.fbsp.fc", "audio.conv1.weight", "visual.conv1.weight",
                 "token_embedding.weight", "logit_scale_ai", "logit_scale_at", "logit_scale"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # The filterbank's gradients are rescaled to unit max-norm (see FbspFilterbank).
    assert model.audio.fbsp.fc.grad.abs().max().item() == pytest.approx(1.0, abs=1e-4)


def test_audio_logit_scales_start_on_the_clamp():
    # As in the original: exp(log(100)) is just above 100 in float32, so the clamp
    # holds the audio temperatures at 100 and they receive no gradient.
    model = AudioCLIP("AudioCLIP-tiny")
    assert model.logit_scales()["audio_text"].item() == 100.0
    out = model(audio=wave(), text=["a", "b"])
    out.loss.backward()
    assert model.logit_scale_at.grad.item() == 0.0
