"""The audio head's compute modes: plain (the original's computation), default, and the opt-in fast paths.

Every path is checked against the reference outputs of the original
(tests/fixtures) and against the others; the kernel cache for staleness and for
gradients. No timing here: benchmarks/bench_inference.py measures speed.

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

from audioclip import ESResNeXtFbsp
from audioclip.model.esresnext import COMPUTE_MODES, AudioHeadConfig
from audioclip.model.fast import FastAudioHead, build_fast_head
from reference_weights import reference_state_dict

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
    """The reference audio head (the session model's), back in the default mode after each test."""
    head = reference_model.audio
    yield head
    head.set_compute_mode("default")


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


# -- plain and default against the reference --------------------------------------


@pytest.mark.parametrize("mode", ["plain", "default"])
@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_exact_modes_match_the_reference(head, reference, mode, case):
    head.set_compute_mode(mode)
    with torch.no_grad():
        embedding = head(wave(case, reference))
    assert rel_error(embedding, reference[f"audio_{case}_embed"]) <= 1e-4
    head.set_compute_mode("default")


@pytest.mark.parametrize("mode", ["plain", "default"])
@pytest.mark.parametrize("case", ["b", "c"])
def test_exact_modes_give_the_reference_db_tensors(head, reference, mode, case):
    head.set_compute_mode(mode)
    with torch.no_grad():
        max_err, p99 = db_errors(head.log_power(wave(case, reference)), reference[f"audio_{case}_db"])
    head.set_compute_mode("default")
    assert max_err <= 0.05 and p99 <= 1e-3


def test_plain_and_default_agree_on_stereo(head, reference):
    # plain runs the two channels through the trunk one after the other, default as one batch
    x = wave("b", reference)
    with torch.no_grad():
        default = head(x)
        head.set_compute_mode("plain")
        plain = head(x)
    head.set_compute_mode("default")
    assert rel_error(default, plain.numpy()) <= 1e-4


def test_plain_mode_computes_as_the_original(head, reference):
    head.set_compute_mode("plain")
    assert not head.fbsp.cache_kernel
    assert all(
        m.weight.is_contiguous() for m in head.modules() if isinstance(m, torch.nn.Conv2d)
    ), "plain mode runs NCHW"
    with torch.no_grad():
        head(wave("c", reference))
    assert head.fbsp._kernel_cache is None  # rebuilt on every pass
    head.set_compute_mode("default")
    assert all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in head.modules()
        if isinstance(m, torch.nn.Conv2d)
    )


def test_modes_keep_state_dict_keys_shapes_and_values(head):
    before = {k: v.clone() for k, v in head.state_dict().items()}
    for mode in ("plain", "default"):
        head.set_compute_mode(mode)
        after = head.state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any("fast" in name for name, _ in head.named_modules())


def test_unknown_mode_and_bad_options_are_refused():
    head = tiny_head()
    with pytest.raises(ValueError, match="unknown mode 'fast'.*default, plain, fused, bf16, int8"):
        head.set_compute_mode("fast")
    with pytest.raises(ValueError, match="calibration"):
        head.set_compute_mode("int8")
    with pytest.raises(TypeError, match="takes no options"):
        head.set_compute_mode("plain", compile=True)
    with pytest.raises(TypeError, match="only used by mode 'int8'"):
        head.set_compute_mode("fused", calibration=tiny_wave())
    assert head.compute_mode == "default"
    assert set(COMPUTE_MODES) == {"default", "plain", "fused", "bf16", "int8"}


# -- the kernel cache -------------------------------------------------------------


def test_kernel_is_cached_in_inference_and_identical_to_a_rebuilt_one():
    head = tiny_head()
    x = tiny_wave()
    with torch.no_grad():
        first = head(x)
        cached = head.fbsp._kernel_cache
        assert cached is not None
        second = head(x)
        assert head.fbsp._kernel_cache is cached  # reused, not rebuilt
        rebuilt = head.fbsp.kernel(head.config.n_fft)
    assert torch.equal(cached[1], rebuilt[0]) and torch.equal(cached[2], rebuilt[1])
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ["m", "fb", "fc"])
def test_in_place_parameter_change_invalidates_the_cache(name):
    head = tiny_head()
    x = tiny_wave()
    with torch.no_grad():
        before = head(x)
        getattr(head.fbsp, name).add_(0.25)  # in place, after a cached pass
        after = head(x)
        fresh = copy.deepcopy(head)
        fresh.fbsp.clear_kernel_cache()
        expected = fresh(x)  # kernels built from the changed parameters
    assert not torch.allclose(before, after)
    assert torch.equal(after, expected)


def test_load_state_dict_and_device_dtype_moves_invalidate_the_cache():
    head, other = tiny_head(0), tiny_head(1)
    x = tiny_wave()
    with torch.no_grad():
        head(x)
        head.load_state_dict(other.state_dict())
        assert torch.allclose(head(x), other(x), rtol=0, atol=1e-5)
        head.double()
        assert head.fbsp._kernel_cache is None  # dropped by the move
        assert head(x.double()).dtype == torch.float64
        assert head.fbsp._kernel_cache[1].dtype == torch.float64


def test_writes_through_data_need_an_explicit_clear():
    head = tiny_head()
    x = tiny_wave()
    with torch.no_grad():
        before = head(x)
        head.fbsp.fc.data.add_(0.25)  # bypasses the version counter (documented)
        head.fbsp.clear_kernel_cache()
        after = head(x)
    assert not torch.allclose(before, after)


def test_training_mode_never_caches_and_gradients_reach_the_filterbank():
    head = tiny_head().train()
    head(tiny_wave(batch=3)).square().mean().backward()
    assert head.fbsp._kernel_cache is None
    for name in ("m", "fb", "fc"):
        grad = getattr(head.fbsp, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name


def test_eval_mode_with_gradients_on_does_not_use_the_cache():
    head = tiny_head()
    x = tiny_wave()
    with torch.no_grad():
        head(x)  # fills the cache
    head.zero_grad()
    head(x).sum().backward()  # eval mode, grad enabled: kernels built with autograd
    assert head.fbsp.m.grad is not None and head.fbsp.m.grad.abs().max() > 0


def test_cache_filled_in_inference_mode_serves_later_gradient_passes():
    # a frozen filterbank under a trainable trunk (eval mode): the cached kernels,
    # made inside torch.inference_mode, are used in a pass that records autograd
    head = tiny_head()
    head.fbsp.requires_grad_(False)
    x = tiny_wave()
    with torch.inference_mode():
        head(x)
    cached = head.fbsp._kernel_cache
    head(x).sum().backward()
    assert head.fbsp._kernel_cache is cached
    assert head.conv1.weight.grad is not None and head.conv1.weight.grad.abs().max() > 0


def test_train_eval_switch_clears_the_cache():
    head = tiny_head()
    with torch.no_grad():
        head(tiny_wave())
    assert head.fbsp._kernel_cache is not None
    head.train()
    assert head.fbsp._kernel_cache is None


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


def test_copies_and_pickles_work_in_every_mode():
    head = tiny_head()
    head.set_compute_mode("fused")
    x = tiny_wave()
    with torch.no_grad():
        expected = head(x)
        assert head._fast_head is not None
        for clone in (copy.deepcopy(head), pickle.loads(pickle.dumps(head))):
            assert clone._fast_head is None  # rebuilt on demand
            assert torch.allclose(clone(x), expected, rtol=0, atol=1e-5)


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


def test_fused_mode_through_the_model_and_its_lifecycle(reference_model, reference):
    x = wave("c", reference)
    audio = reference_model.audio
    try:
        audio.set_compute_mode("fused")
        with torch.no_grad():
            out = reference_model.encode_audio(x)
        assert isinstance(audio._fast_head, FastAudioHead)
        assert rel_error(out, reference["audio_c_embed"]) <= 1e-4
        assert not any("_fast_head" in k for k in reference_model.state_dict())
        # gradients on: the default computation runs (the fast copy has none)
        out = audio(x)
        assert out.requires_grad
        # weights changed in place: the copy is rebuilt from the new weights
        built = audio._fast_head
        with torch.no_grad():
            audio.fc.bias.add_(1.0)
            moved = reference_model.encode_audio(x)
            audio.fc.bias.sub_(1.0)
        assert audio._fast_head is not built
        assert torch.allclose(moved - out.detach(), torch.ones_like(moved), atol=2e-3)
    finally:
        audio.set_compute_mode("default")
    assert audio._fast_head is None


# -- reduced precision ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["b", "c"])
def test_bf16_trunk_is_within_its_documented_tolerance(head, reference, case):
    fast = build_fast_head(head, "bf16")
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
    fast = build_fast_head(head, "int8", calibration=wave("a", reference))
    quantized = [m for m in fast.trunk.modules() if "quantized" in type(m).__module__]
    assert quantized, "no quantised modules in the int8 trunk"
    for case in ("b", "c"):
        with torch.no_grad():
            out = fast(wave(case, reference))
        assert rel_error(out, reference[f"audio_{case}_embed"]) <= INT8_REL_ERROR, case
        assert min_cosine(out, reference[f"audio_{case}_embed"]) >= INT8_MIN_COSINE, case


def test_int8_needs_calibration_and_the_cpu():
    head = tiny_head()
    with pytest.raises(ValueError, match="calibration"):
        build_fast_head(head, "int8")
    with pytest.raises(ValueError, match="calibration"):
        build_fast_head(head, "int8", calibration=[])
