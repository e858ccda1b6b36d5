"""Audio mode "spectrum64": the front end's spectrum in float64 (audioclip.model.transforms.float64_spectrum)."""

from __future__ import annotations

import copy
import itertools
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audioclip import AudioCLIP, ESResNeXtFbsp
from audioclip.model.esresnext import AudioHeadConfig
from audioclip.model.transforms import (
    Float64SpectrumESResNeXtFbsp,
    FrozenFbspFilterbank,
    apply_audio_mode,
    float64_spectrum,
    freeze_fbsp_kernel,
)


def full_front_end_head(seed: int = 0) -> ESResNeXtFbsp:
    """The published front end (n_fft 2048: the one whose quiet bins move with the rounding), a small trunk."""
    torch.manual_seed(seed)
    config = AudioHeadConfig(layers=(1, 1, 1, 1), groups=8, width_per_group=4)
    assert config.n_fft == 2048
    return ESResNeXtFbsp(num_classes=16, config=config).eval()


def clips(silent: bool, count: int = 8, seconds: float = 1.0) -> torch.Tensor:
    """``count`` mono clips of noise; ``silent``: the first half of each is digital silence (exact zeros)."""
    samples = int(seconds * 44100)
    rng = np.random.default_rng(1)
    wave = torch.from_numpy((0.1 * rng.standard_normal((count, 1, samples))).astype(np.float32))
    if silent:
        wave[..., : samples // 2] = 0.0
    return wave


def settings_spread(fn, wave: torch.Tensor) -> float:
    """Largest |difference| of ``fn`` over threads 1, 2 and batch sizes 1, len(wave), against threads 1, batch 1."""
    threads = torch.get_num_threads()
    outputs = []
    try:
        for t, batch in itertools.product((1, 2), (1, len(wave))):
            torch.set_num_threads(t)
            with torch.inference_mode():
                outputs.append(torch.cat([fn(wave[i: i + batch]) for i in range(0, len(wave), batch)]))
    finally:
        torch.set_num_threads(threads)
    return max(float((out - outputs[0]).abs().max()) for out in outputs)


def test_the_spectrum_of_a_silent_clip_is_the_same_at_any_thread_count_and_batch_size():
    """The default path's quiet bins follow float32 rounding (on a 2-core Xeon they moved by 3.3 dB
    between 1 and 2 threads); in float64 they do not move (measured: 0 dB)."""
    head = full_front_end_head()
    wave = clips(silent=True)
    default = freeze_fbsp_kernel(head)
    stable = float64_spectrum(head)
    spread_default = settings_spread(default.log_power, wave)
    spread_stable = settings_spread(stable.log_power, wave)
    assert spread_stable <= 1e-3, spread_stable  # dB
    assert spread_stable <= spread_default
    with torch.inference_mode():
        got = stable.log_power(wave[:1])
    assert got.dtype == torch.float32 and got.shape == default.log_power(wave[:1]).shape


def test_spectrum64_is_close_to_default_on_clips_without_digital_silence():
    head = full_front_end_head()
    wave = clips(silent=False, count=4)
    default, stable = freeze_fbsp_kernel(head), apply_audio_mode(head, "spectrum64")
    with torch.inference_mode():
        expected, got = default(wave), stable(wave)
    assert got.dtype == torch.float32
    assert float(F.cosine_similarity(got.double(), expected.double()).min()) > 0.99


def test_spectrum64_is_a_transform_like_the_others():
    torch.manual_seed(0)
    model = AudioCLIP("AudioCLIP-tiny").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = apply_audio_mode(model, "spectrum64")
    assert out is not model and not out.training
    assert type(model.audio) is ESResNeXtFbsp and type(model.audio.fbsp).__name__ == "FbspFilterbank"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the input is left alone
    after = out.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)  # same keys, values
    assert isinstance(out.audio, Float64SpectrumESResNeXtFbsp) and isinstance(out.audio.fbsp, FrozenFbspFilterbank)
    x = clips(silent=False, count=1, seconds=0.5)
    image = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(out.encode_image(image), model.encode_image(image))
        expected = out.encode_audio(x)
        for clone in (copy.deepcopy(out), pickle.loads(pickle.dumps(out))):
            assert torch.equal(clone.encode_audio(x), expected)
    assert float64_spectrum(model, inplace=True) is model
    with pytest.raises(TypeError, match="takes no options"):
        apply_audio_mode(model, "spectrum64", compile=True)
    with pytest.raises(TypeError, match="frozen"):
        float64_spectrum(freeze_fbsp_kernel(AudioCLIP("AudioCLIP-tiny")))
