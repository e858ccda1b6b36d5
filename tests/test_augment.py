"""The paper's augmentations (section 4.2): each one's statistics, and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audioclip.data.augment import (
    AudioAugment,
    CropPad,
    GaussianNoise,
    TimeFlip,
    TimeScale,
    resample_by,
    sample_generator,
)

DRAWS = 2000
SR = 44100


def generators(n=DRAWS, seed=0, epoch=0):
    return (sample_generator(seed, epoch, i) for i in range(n))


def dominant_hz(x: torch.Tensor, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x.double().numpy() * np.hanning(x.shape[-1])))
    return float(np.argmax(spectrum) * rate / x.shape[-1])


# -- time scaling -----------------------------------------------------------------


def test_time_scale_factor_is_log_uniform_within_max():
    scale = TimeScale(max_scale=1.5)
    factors = np.array([scale.factor(g) for g in generators()])
    assert factors.min() >= 1 / 1.5 - 1e-12 and factors.max() <= 1.5 + 1e-12
    u = np.log(factors) / np.log(1.5)  # should be U(-1, 1)
    assert abs(u.mean()) < 0.05
    assert abs(u.var() - 1 / 3) < 0.03
    # both halves are used: stretching and squeezing equally often
    assert abs((factors > 1).mean() - 0.5) < 0.04
    # coarse uniformity: each tenth of [-1, 1] gets about 10 %
    hist, _ = np.histogram(u, bins=10, range=(-1, 1))
    assert hist.min() > 0.07 * DRAWS and hist.max() < 0.13 * DRAWS


def test_time_scale_changes_duration_and_pitch_together():
    t = torch.arange(SR) / SR
    tone = torch.sin(2 * math.pi * 1000.0 * t).unsqueeze(0)  # (1, 1 s) at 1 kHz
    scale = TimeScale(1.5)
    for i in range(12):
        g1, g2 = sample_generator(3, 0, i), sample_generator(3, 0, i)
        factor = scale.factor(g1)
        out = scale(tone, g2)
        assert out.shape == (1, round(SR * factor))
        # stretched by f -> lasts f times longer and sounds f times lower
        assert dominant_hz(out[0]) == pytest.approx(1000.0 / factor, abs=2.0)


def test_resample_keeps_channels_and_level():
    stereo = torch.stack([torch.sin(torch.arange(8000) * 0.05), 0.5 * torch.cos(torch.arange(8000) * 0.05)])
    out = resample_by(stereo, 1.3)
    assert out.shape == (2, 10400)
    assert out[0].abs().max() == pytest.approx(1.0, abs=0.02)
    assert out[1].abs().max() == pytest.approx(0.5, abs=0.02)


# -- time inversion ---------------------------------------------------------------


def test_time_flip_reverses_time_not_channels_with_probability_half():
    wave = torch.stack([torch.arange(100.0), -torch.arange(100.0)])  # distinct channels
    flip = TimeFlip(p=0.5)
    flipped = 0
    for g in generators():
        out = flip(wave, g)
        if torch.equal(out, wave):
            continue
        assert torch.equal(out, wave.flip(-1)), "must reverse along time, channel order kept"
        flipped += 1
    assert abs(flipped / DRAWS - 0.5) < 0.04


def test_time_flip_works_on_mono():
    # the original flipped axis 0 of a (channels, samples) clip: a no-op on mono audio
    mono = torch.arange(10.0).unsqueeze(0)
    outs = {tuple(TimeFlip(1.0)(mono, g)[0].tolist()) for g in generators(3)}
    assert outs == {tuple(range(9, -1, -1))}


# -- crop / pad ------------------------------------------------------------------


def test_random_crop_offsets_are_uniform_and_eval_is_centred():
    n, length = 1000, 600
    ramp = torch.arange(float(n)).unsqueeze(0)
    crop = CropPad(length, train=True)
    offsets = []
    for g in generators():
        out = crop(ramp, g)
        assert out.shape == (1, length)
        start = int(out[0, 0])
        assert torch.equal(out[0], torch.arange(float(start), start + length))  # contiguous, no swap
        offsets.append(start)
    offsets = np.array(offsets)
    slack = n - length
    assert offsets.min() >= 0 and offsets.max() <= slack
    assert abs(offsets.mean() - slack / 2) < 0.04 * slack
    assert abs(offsets.std() - slack / math.sqrt(12)) < 0.04 * slack
    assert offsets.min() < 0.02 * slack and offsets.max() > 0.98 * slack
    centre = CropPad(length, train=False)(ramp)
    assert int(centre[0, 0]) == slack // 2


def test_random_pad_places_clip_uniformly_with_zeros():
    clip = torch.ones(2, 300)
    pad = CropPad(1000, train=True)
    lefts = []
    for g in generators(1000):
        out = pad(clip, g)
        assert out.shape == (2, 1000)
        nz = torch.nonzero(out[0]).flatten()
        left = int(nz[0])
        assert int(nz[-1]) == left + 299 and out.sum() == 600  # the clip whole, zeros elsewhere
        lefts.append(left)
    lefts = np.array(lefts)
    assert abs(lefts.mean() - 350) < 25 and lefts.min() < 20 and lefts.max() > 680
    centred = CropPad(1000, train=False)(clip)
    assert int(torch.nonzero(centred[0])[0]) == 350


def test_crop_never_swaps_a_quiet_segment_unless_asked():
    # loud head, silent rest: most crops are silent and must stay so
    wave = torch.zeros(1, 10000)
    wave[0, :1000] = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    plain, original = CropPad(2000, train=True), CropPad(2000, train=True, quiet_swap=True)
    silent_plain = silent_orig = 0
    for i in range(200):
        silent_plain += int(plain(wave, sample_generator(1, 0, i)).abs().max() == 0)
        silent_orig += int(original(wave, sample_generator(1, 0, i)).abs().max() == 0)
    assert silent_plain > 100  # about 7 in 9 offsets fall in the silence
    assert silent_orig == 0  # the original's crop swaps in the head


def test_edge_padding_is_the_original_option():
    clip = torch.full((1, 10), 0.25)
    out = CropPad(20, train=False, pad="edge")(clip)
    assert torch.allclose(out, torch.full((1, 20), 0.25))


# -- noise ---------------------------------------------------------------------------


def test_noise_probability_and_snr_distribution():
    t = torch.arange(4410) / SR
    wave = torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.2 * torch.sin(2 * math.pi * 660 * t)])
    power = float(wave.double().square().mean())
    noise = GaussianNoise(p=0.25, snr_min=10.0, snr_max=120.0)
    snrs = []
    for g in generators():
        out = noise(wave, g)
        if torch.equal(out, wave):
            continue
        residual = float((out - wave).double().square().mean())
        snrs.append(10 * math.log10(power / residual))
    snrs = np.array(snrs)
    assert abs(len(snrs) / DRAWS - 0.25) < 0.03
    assert snrs.min() > 10 - 0.5 and snrs.max() < 120 + 0.5  # float32 rounding matters only near 120 dB
    assert abs(snrs.mean() - 65.0) < 4.0
    assert abs((snrs < 37.5).mean() - 0.25) < 0.06 and abs((snrs > 92.5).mean() - 0.25) < 0.06


def test_noise_is_white_gaussian():
    wave = torch.full((1, 20000), 0.5)
    out = GaussianNoise(p=1.0, snr_min=20.0, snr_max=20.0)(wave, sample_generator(0, 0, 0))
    n = (out - wave)[0].double().numpy()
    expected_std = math.sqrt(0.25 / 100.0)
    assert n.std() == pytest.approx(expected_std, rel=0.03)
    assert abs(n.mean()) < 4 * expected_std / math.sqrt(len(n))
    kurtosis = ((n - n.mean()) ** 4).mean() / n.var() ** 2
    assert kurtosis == pytest.approx(3.0, abs=0.2)
    lag1 = np.corrcoef(n[:-1], n[1:])[0, 1]
    assert abs(lag1) < 0.03


def test_noise_leaves_silence_alone():
    silent = torch.zeros(1, 100)
    assert torch.equal(GaussianNoise(p=1.0)(silent, sample_generator(0, 0, 0)), silent)


# -- the chain --------------------------------------------------------------------------


def test_chain_is_reproducible_per_seed_epoch_and_sample():
    wave = torch.randn(1, 30000, generator=torch.Generator().manual_seed(5)) * 0.1
    aug = AudioAugment(22050, train=True)
    a = aug(wave, sample_generator(7, 2, 11))
    b = aug(wave, sample_generator(7, 2, 11))
    assert a.shape == (1, 22050) and torch.equal(a, b)
    assert not torch.equal(a, aug(wave, sample_generator(7, 2, 12)))  # another sample
    assert not torch.equal(a, aug(wave, sample_generator(7, 3, 11)))  # another epoch
    assert not torch.equal(a, aug(wave, sample_generator(8, 2, 11)))  # another seed


def test_eval_chain_only_centres():
    wave = torch.arange(30000.0).unsqueeze(0)
    aug = AudioAugment(20000, train=False)
    assert aug.steps == [] and aug.noise is None
    assert torch.equal(aug(wave), wave[:, 5000:25000])
    with pytest.raises(ValueError, match="generator"):
        AudioAugment(100, train=True)(wave)


def test_steps_can_be_switched_off():
    aug = AudioAugment(100, train=True, config={"time_flip": None, "time_scale": {"max_scale": 1.0},
                                                "noise": {"p": 0.0}})
    assert aug.steps == [] and aug.noise is None
    wave = torch.arange(300.0).unsqueeze(0)
    out = aug(wave, sample_generator(0, 0, 0))
    start = int(out[0, 0])
    assert torch.equal(out[0], torch.arange(float(start), start + 100))
