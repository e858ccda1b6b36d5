"""Inference transforms of the audio head (audioclip.model.transforms): each returns a new model.

The module as built, the frozen-kernel default, the original's order of
computation and the opt-in fast heads are each checked against the reference
outputs of the original (tests/fixtures) and against the others; the
transforms for leaving their input alone and for gradients. No timing here:
benchmarks/bench_inference.py measures speed.

Tolerances for the reduced-precision paths are the ones documented in
docs/performance.md. With the reference's random weights the trunk amplifies
rounding far more than a trained network would, so they are loose: they bound
what was measured, they do not say the paths are accurate.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audioclip import AudioCLIP, ESResNeXtFbsp
from audioclip.model.esresnext import AudioHeadConfig
from audioclip.model.fast import FastAudioHead, build_fast_head
from audioclip.model.transforms import (
    AUDIO_MODES,
    FrozenFbspFilterbank,
    OriginalOrderESResNeXtFbsp,
    apply_audio_mode,
    freeze_fbsp_kernel,
    fuse,
    original_order,
    quantize_int8,
)

# bf16 / int8 on the reference weights, clips b and c: max |out - ref| / max |ref|
# and the smallest cosine similarity per embedding. Measured on an AMD AVX2 CPU
# (bf16 emulated): bf16 <= 0.09 / >= 0.995, int8 <= 0.23 / >= 0.97; on an Intel
# AMX CPU: bf16 <= 0.061 / >= 0.997, int8 <= 0.11 / >= 0.991 (docs/performance.md).
BF16_REL_ERROR, BF16_MIN_COSINE = 0.2, 0.98
INT8_REL_ERROR, INT8_MIN_COSINE = 0.5, 0.9


def rel_error(ours: torch.Tensor, ref: np.ndarray) -> float:
    ours = ours.detach().float().cpu().numpy()
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def min_cosine(ours: torch.Tensor, ref: np.ndarray) -> float:
    return F.cosine_similarity(ours.detach().float(), torch.from_numpy(ref), dim=-1).min().item()


def db_errors(ours: torch.Tensor, ref: np.ndarray) -> tuple[float, float]:
    err = np.abs(ours.detach().cpu().numpy() - ref)
    return float(err.max()), float(np.percentile(err, 99))


@pytest.fixture
def head(reference_model):
    """The reference audio head (the session model's, untransformed: transforms copy it)."""
    return reference_model.audio


@pytest.fixture(scope="module")
def exact_heads(reference_model):
    """The module as built, the frozen-kernel default and the original's order, on the reference weights."""
    head = reference_model.audio
    return {"module": head, "default": freeze_fbsp_kernel(head), "plain": original_order(head)}


def wave(case, reference):
    return torch.from_numpy(reference[f"audio_{case}_wave"])


def tiny_head(seed=0) -> ESResNeXtFbsp:
    """A small head with a non-trivial filterbank (m != 0), for cache behaviour."""
    torch.manual_seed(seed)
    config = AudioHeadConfig(n_fft=512, hop_length=256, win_length=400, layers=(1, 1, 1, 1), groups=8, width_per_group=4)
    head = ESResNeXtFbsp(num_classes=16, config=config)
    with torch.no_grad():
        head.fbsp.m.copy_(1.0 + 0.1 * torch.randn(head.fbsp.out_features))
        head.fbsp.fb.copy_(1.0 + 0.1 * torch.randn(head.fbsp.out_features))
    return head.eval()


def tiny_wave(batch=2, channels=1, samples=6000, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.rand(batch, channels, samples, generator=g) - 0.25


# -- the exact paths against the reference -----------------------------------------


@pytest.mark.parametrize("path", ["module", "default", "plain"])
@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_exact_paths_match_the_reference(exact_heads, reference, path, case):
    with torch.no_grad():
        embedding = exact_heads[path](wave(case, reference))
    assert rel_error(embedding, reference[f"audio_{case}_embed"]) <= 1e-4


@pytest.mark.parametrize("path", ["module", "default", "plain"])
@pytest.mark.parametrize("case", ["b", "c"])
def test_exact_paths_give_the_reference_db_tensors(exact_heads, reference, path, case):
    with torch.no_grad():
        max_err, p99 = db_errors(exact_heads[path].log_power(wave(case, reference)), reference[f"audio_{case}_db"])
    assert max_err <= 0.05 and p99 <= 1e-3


def test_frozen_kernel_is_bit_identical_to_the_module(exact_heads, reference):
    x = wave("b", reference)
    with torch.no_grad():
        assert torch.equal(exact_heads["default"](x), exact_heads["module"](x))


def test_plain_and_default_agree_on_stereo(exact_heads, reference):
    # plain runs the two channels through the trunk one after the other, default as one batch
    x = wave("b", reference)
    with torch.no_grad():
        default = exact_heads["default"](x)
        plain = exact_heads["plain"](x)
    assert rel_error(default, plain.numpy()) <= 1e-4


def test_original_order_computes_as_the_original(exact_heads, head):
    plain = exact_heads["plain"]
    assert isinstance(plain, OriginalOrderESResNeXtFbsp)
    assert type(plain.fbsp) is not FrozenFbspFilterbank  # kernels rebuilt on every pass
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d)), "NCHW"
    # the input model is untouched: channels-last, its own class
    assert type(head) is ESResNeXtFbsp
    assert all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in head.modules()
        if isinstance(m, torch.nn.Conv2d)
    )


def test_exact_transforms_keep_state_dict_keys_shapes_and_values(exact_heads):
    before = exact_heads["module"].state_dict()
    for path in ("default", "plain"):
        after = exact_heads[path].state_dict()
        assert list(after) == list(before), path
        assert all(torch.equal(after[k], before[k]) for k in before), path


def test_transforms_leave_their_input_alone_unless_inplace():
    head = tiny_head()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    for mode in ("default", "plain", "fused", "bf16"):
        out = apply_audio_mode(head, mode)
        assert out is not head
        assert type(head) is ESResNeXtFbsp and type(head.fbsp).__name__ == "FbspFilterbank", mode
        assert all(torch.equal(head.state_dict()[k], v) for k, v in before.items()), mode
    assert freeze_fbsp_kernel(head, inplace=True) is head
    assert isinstance(head.fbsp, FrozenFbspFilterbank)


def test_transforms_of_a_whole_model_keep_the_other_heads():
    torch.manual_seed(0)
    model = AudioCLIP("AudioCLIP-tiny").eval()
    x = tiny_wave()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected_audio, expected_image = model.encode_audio(x), model.encode_image(image)
        for mode in ("default", "plain", "fused"):
            out = apply_audio_mode(model, mode)
            assert out is not model and out.visual is not model.visual
            assert torch.equal(out.encode_image(image), expected_image), mode
            assert torch.allclose(out.encode_audio(x), expected_audio, rtol=0,
                                  atol=1e-5 * expected_audio.abs().max().item()), mode
            assert out(audio=x, text=["a", "b"]).loss is not None  # the loss still has its fbsp term
    assert isinstance(model.audio, ESResNeXtFbsp) and not isinstance(model.audio.fbsp, FrozenFbspFilterbank)


def test_unknown_mode_and_bad_options_are_refused():
    head = tiny_head()
    with pytest.raises(ValueError, match="unknown audio mode 'fast'.*default, fused, bf16, plain, int8"):
        apply_audio_mode(head, "fast")
    with pytest.raises(ValueError, match="calibration"):
        apply_audio_mode(head, "int8")
    with pytest.raises(TypeError, match="takes no options"):
        apply_audio_mode(head, "plain", compile=True)
    with pytest.raises(TypeError, match="only used by audio mode 'int8'"):
        apply_audio_mode(head, "fused", calibration=tiny_wave())
    with pytest.raises(TypeError, match="untransformed"):
        fuse(fuse(head))
    assert set(AUDIO_MODES) == {"default", "plain", "fused", "bf16", "int8", "spectrum64"}


def test_no_state_on_modules_or_the_process():
    """What used to be switches on the module or process-wide settings are gone."""
    head = tiny_head()
    for name in ("set_compute_mode", "compute_mode", "_fast_head"):
        assert not hasattr(head, name), name
    assert not hasattr(head.fbsp, "cache_kernel") and not hasattr(head.fbsp, "_kernel_cache")
    assert "trunk_chunk_frames" not in ESResNeXtFbsp.__dict__  # an instance setting, not a class one
    engine = torch.backends.quantized.engine
    fast = quantize_int8(head, tiny_wave(batch=4))
    with torch.no_grad():
        fast(tiny_wave())
    assert torch.backends.quantized.engine == engine


# -- the frozen kernel ------------------------------------------------------------------


def test_frozen_kernel_equals_a_rebuilt_one():
    head = tiny_head()
    frozen = freeze_fbsp_kernel(head)
    rebuilt = head.fbsp.kernel(head.config.n_fft)
    assert torch.equal(frozen.fbsp.kernel_real, rebuilt[0]) and torch.equal(frozen.fbsp.kernel_imag, rebuilt[1])
    x = tiny_wave()
    with torch.no_grad():
        assert torch.equal(frozen(x), head(x))
    # another frame length falls back to computing the kernels
    assert torch.equal(frozen.fbsp.kernel(100)[0], head.fbsp.kernel(100)[0])
    assert "kernel_real" not in frozen.state_dict()  # derived, not saved


def test_frozen_kernel_is_a_snapshot_and_does_not_train():
    head = tiny_head()
    frozen = freeze_fbsp_kernel(head)
    assert not any(p.requires_grad for p in frozen.fbsp.parameters())
    x = tiny_wave()
    frozen(x).sum().backward()  # the trunk still trains
    assert frozen.conv1.weight.grad is not None and frozen.conv1.weight.grad.abs().max() > 0
    with torch.no_grad():
        head.fbsp.fc.add_(0.25)  # the source changes; the frozen copy does not follow
        assert not torch.allclose(freeze_fbsp_kernel(head)(x), frozen(x))


def test_frozen_kernel_moves_with_the_model():
    frozen = freeze_fbsp_kernel(tiny_head()).double()
    assert frozen.fbsp.kernel_real.dtype == torch.float64
    assert frozen(tiny_wave().double()).dtype == torch.float64


def test_the_module_trains_its_filterbank():
    head = tiny_head().train()
    head(tiny_wave(batch=3)).square().mean().backward()
    for name in ("m", "fb", "fc"):
        grad = getattr(head.fbsp, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name


# -- chunks and autocast --------------------------------------------------------------


def test_trunk_chunks_give_the_whole_batch_result():
    head = tiny_head()
    x = tiny_wave(batch=5)
    frames = head.log_power(x[:1]).shape[-1]
    with torch.no_grad():
        head.trunk_chunk_frames = None
        whole = head(x)
        head.trunk_chunk_frames = 2 * frames  # two items per chunk: 2 + 2 + 1
        chunked = head(x)
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-5 * whole.abs().max().item())


def test_training_never_chunks_the_batch():
    # BatchNorm's batch statistics would change with the chunks
    head = tiny_head().train()
    x = tiny_wave(batch=4)
    frames = head.log_power(x[:1]).shape[-1]
    torch.manual_seed(0)
    head.trunk_chunk_frames = None
    whole = head(x)
    head.trunk_chunk_frames = frames
    assert torch.equal(head(x), whole)


def test_front_end_stays_float32_under_autocast():
    head = tiny_head()
    x = tiny_wave()
    with torch.no_grad():
        expected = head.log_power(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = head.log_power(x)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@pytest.mark.parametrize("mode", ["default", "plain", "fused"])
def test_copies_and_pickles_of_transformed_models(mode):
    model = apply_audio_mode(tiny_head(), mode)
    x = tiny_wave()
    with torch.no_grad():
        expected = model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(x), expected)


# -- the fused float32 path ----------------------------------------------------------


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_fused_path_is_within_the_equivalence_tolerance(head, reference, case):
    fast = build_fast_head(head, "fused")
    with torch.no_grad():
        assert rel_error(fast(wave(case, reference)), reference[f"audio_{case}_embed"]) <= 1e-4
    if case != "a":
        with torch.no_grad():
            # the front end is the same computation: dB tensors identical to the reference's
            max_err, p99 = db_errors(fast.log_power(wave(case, reference)), reference[f"audio_{case}_db"])
        assert max_err <= 0.05 and p99 <= 1e-3


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_sliced_kernel_is_within_the_db_and_embedding_tolerances(head, reference, case):
    fast = build_fast_head(head, "fused", slice_kernel=True)
    assert fast.kernel.shape == (2 * 1023, 1654)
    with torch.no_grad():
        assert rel_error(fast(wave(case, reference)), reference[f"audio_{case}_embed"]) <= 1e-4
        if case != "a":
            max_err, p99 = db_errors(fast.log_power(wave(case, reference)), reference[f"audio_{case}_db"])
            assert max_err <= 0.05 and p99 <= 1e-3


def test_batchnorm_folding_removes_every_batchnorm_and_keeps_the_function(head, reference):
    folded = build_fast_head(head, "fused")
    unfolded = build_fast_head(head, "fused", fold_batchnorm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.modules())
    x = wave("c", reference)
    with torch.no_grad():
        assert rel_error(folded(x), unfolded(x).numpy()) <= 1e-4


def test_fused_transform_of_the_whole_model(reference_model, reference):
    x = wave("c", reference)
    fused = fuse(reference_model)
    assert isinstance(fused.audio, FastAudioHead) and isinstance(reference_model.audio, ESResNeXtFbsp)
    assert fused.visual is not reference_model.visual  # a new model, sharing nothing
    with torch.no_grad():
        out = fused.encode_audio(x)
        assert rel_error(out, reference["audio_c_embed"]) <= 1e-4
        assert torch.equal(fused.audio.fbsp_norm_loss(), reference_model.audio.fbsp_norm_loss())
    assert not any(p.requires_grad for p in fused.audio.parameters())  # inference only


# -- reduced precision ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["b", "c"])
def test_bf16_trunk_is_within_its_documented_tolerance(head, reference, case):
    fast = fuse(head, dtype=torch.bfloat16)
    x = wave(case, reference)
    with torch.no_grad():
        out = fast(x)
        log_power = fast.log_power(x)
    assert out.dtype == torch.float32
    assert log_power.dtype == torch.float32  # the front end is not reduced
    assert db_errors(log_power, reference[f"audio_{case}_db"])[0] <= 0.05
    assert rel_error(out, reference[f"audio_{case}_embed"]) <= BF16_REL_ERROR
    assert min_cosine(out, reference[f"audio_{case}_embed"]) >= BF16_MIN_COSINE


def test_int8_trunk_is_within_its_documented_tolerance(head, reference):
    # calibrated on case (a), evaluated on the other clips
    fast = quantize_int8(head, wave("a", reference))
    quantized = [m for m in fast.trunk.modules() if "quantized" in type(m).__module__]
    assert quantized, "no quantised modules in the int8 trunk"
    for case in ("b", "c"):
        with torch.no_grad():
            out = fast(wave(case, reference))
        assert rel_error(out, reference[f"audio_{case}_embed"]) <= INT8_REL_ERROR, case
        assert min_cosine(out, reference[f"audio_{case}_embed"]) >= INT8_MIN_COSINE, case


def test_int8_needs_calibration():
    head = tiny_head()
    with pytest.raises(ValueError, match="calibration"):
        build_fast_head(head, "int8")
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(head, [])


def test_fast_transforms_leave_a_training_model_training():
    head = tiny_head().train()
    fuse(head)
    quantize_int8(head, tiny_wave(batch=2))
    assert head.training and all(m.training for m in head.modules())
