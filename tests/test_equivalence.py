"""Our model against outputs of the original implementation (tests/fixtures/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioclip import ESResNeXtFbsp, tokenize
from reference_weights import reference_state_dict


def assert_close_to_scale(ours: torch.Tensor, ref: np.ndarray, rtol: float) -> None:
    """max |ours - ref| <= rtol * max |ref|: element-wise relative checks are meaningless near zero."""
    ours = ours.detach().cpu().numpy()
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    scale = np.abs(ref).max()
    assert err <= rtol * scale, f"max error {err:.3g} exceeds {rtol:g} x scale {scale:.3g}"


def test_state_dict_matches_the_original_layout(reference_model, manifest):
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in reference_model.state_dict().items()}
    theirs = {e["key"]: (e["shape"], e["dtype"]) for e in manifest["audioclip"]["entries"]}
    assert ours == theirs
    params = dict(reference_model.named_parameters())
    for entry in manifest["audioclip"]["entries"]:
        if entry["kind"] == "buffer":
            assert entry["key"] not in params, entry["key"]
    counted = sum(p.numel() for p in reference_model.parameters())
    assert counted == manifest["audioclip"]["counts"]["total"]["parameters"]


def test_standalone_classifier_matches_the_original_layout(manifest):
    model = ESResNeXtFbsp(num_classes=527)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {e["key"]: e["shape"] for e in manifest["esresnext_fbsp_527"]["entries"]}
    assert ours == theirs


def test_window_is_scipys_periodic_blackman_harris(reference_model):
    signal = pytest.importorskip("scipy.signal")
    expected = torch.from_numpy(signal.get_window("blackmanharris", 1654, fftbins=True)).float()
    assert torch.equal(reference_model.audio.window, expected)


def test_tokens_are_exact(reference, reference_meta):
    assert torch.equal(tokenize(reference_meta["texts"]), torch.from_numpy(reference["text_tokens"]))
    assert torch.equal(tokenize(["cat, thunder"]), torch.from_numpy(reference["text_join_tokens"]))


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_audio_embeddings(reference_model, reference, case):
    wave = torch.from_numpy(reference[f"audio_{case}_wave"])
    with torch.no_grad():
        embedding = reference_model.encode_audio(wave)
    assert_close_to_scale(embedding, reference[f"audio_{case}_embed"], rtol=1e-4)


@pytest.mark.parametrize("case", ["b", "c"])
def test_log_power_spectrogram(reference_model, reference, case):
    wave = torch.from_numpy(reference[f"audio_{case}_wave"])
    with torch.no_grad():
        db = reference_model.audio.log_power(wave).numpy()
    ref = reference[f"audio_{case}_db"]
    assert db.shape == ref.shape
    err = np.abs(db - ref)
    assert err.max() <= 0.05
    assert np.percentile(err, 99) <= 1e-3


def test_mono_audio_without_channel_axis_is_the_same(reference_model, reference):
    wave = torch.from_numpy(reference["audio_c_wave"])
    with torch.no_grad():
        assert torch.equal(reference_model.encode_audio(wave[:, 0]), reference_model.encode_audio(wave))


def test_image_embeddings(reference_model, reference):
    with torch.no_grad():
        embedding = reference_model.encode_image(torch.from_numpy(reference["images"]))
    assert_close_to_scale(embedding, reference["image_embed"], rtol=1e-5)


def test_text_embeddings(reference_model, reference, reference_meta):
    with torch.no_grad():
        rows = [reference_model.encode_text([t]) for t in reference_meta["text_embed_texts"]]
        joined = reference_model.encode_text([["cat", "thunder"]])
    assert_close_to_scale(torch.cat(rows), reference["text_embed"], rtol=1e-5)
    assert_close_to_scale(joined, reference["text_join_embed"], rtol=1e-5)


def test_full_forward(reference_model, reference):
    with torch.no_grad():
        out = reference_model(
            audio=torch.from_numpy(reference["audio_a_wave"]),
            image=torch.from_numpy(reference["images"][:2]),
            text=[["dog"], ["a car horn honking"]],
        )
    for name in ("audio", "image", "text"):
        assert_close_to_scale(getattr(out, f"{name}_features"), reference[f"fwd_{name}_features"], rtol=1e-4)
    for pair in ("audio_image", "audio_text", "image_text"):
        ours = getattr(out, f"logits_{pair}").numpy()
        assert np.abs(ours - reference[f"fwd_logits_{pair}"]).max() <= 1e-3, pair
    assert abs(out.loss.item() - float(reference["fwd_loss"])) <= 1e-4
    with torch.no_grad():
        regulariser = reference_model.audio.fbsp_norm_loss().item()
    assert abs(regulariser - float(reference["fwd_loss_ttf"])) <= 1e-4


def test_standalone_classifier_logits(reference):
    model = ESResNeXtFbsp(num_classes=527).eval()
    model.load_state_dict(reference_state_dict(model, "public-v1"))
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["audio_c_wave"]))
    assert_close_to_scale(logits, reference["standalone527_c_logits"], rtol=1e-4)
