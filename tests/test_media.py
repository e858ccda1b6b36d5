"""audioclip.media: files in, encoder-ready tensors out. Every file is written here, in tmp_path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchvision.transforms as T
from media_make import (
    grey_levels,
    peak_frequency,
    require_encoder,
    sine,
    write_audio_ffmpeg,
    write_video,
)
from PIL import Image

from audioclip.media import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    SAMPLE_RATE,
    VIDEO_EXTENSIONS,
    AudioWindow,
    MediaError,
    load_audio,
    load_image,
    load_video_frames,
    sniff_modality,
    split_windows,
)
from audioclip.media.image import CLIP_MEAN, CLIP_STD, clip_preprocess

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_wav(path: Path, wave: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "FLOAT", **kw) -> Path:
    soundfile.write(path, wave, rate, subtype=subtype, **kw)
    return path


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def assert_media_error(excinfo, path: Path, reason: str) -> None:
    """One line naming the file and giving the expected reason, and nothing else."""
    error = excinfo.value
    assert type(error) is MediaError
    assert error.path == str(path)
    assert reason in error.reason
    assert str(error) == f"{path}: {error.reason}"
    assert "\n" not in str(error)


# -- audio: lossless formats and bit depths ------------------------------------------------


@pytest.mark.parametrize(
    "ext, subtype, bits",
    [
        ("wav", "PCM_U8", 8),
        ("wav", "PCM_16", 16),
        ("wav", "PCM_24", 24),
        ("wav", "PCM_32", 32),
        ("flac", "PCM_16", 16),
        ("flac", "PCM_24", 24),
        ("aiff", "PCM_16", 16),
    ],
)
def test_integer_pcm_maps_to_unit_range_exactly(tmp_path, ext, subtype, bits):
    rng = np.random.default_rng(bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    ints = np.concatenate([[lo, hi, 0, -1, 1], rng.integers(lo, hi + 1, 2000)]).astype(np.int64)
    # soundfile writes int32 data to a b-bit file by keeping its top b bits
    path = tmp_path / f"x.{ext}"
    soundfile.write(path, (ints << (32 - bits)).astype(np.int32), SAMPLE_RATE, subtype=subtype)

    wave = load_audio(path)

    assert wave.dtype == torch.float32 and wave.shape == (1, len(ints)) and wave.is_contiguous()
    expected = torch.from_numpy((ints.astype(np.float32) / np.float32(2 ** (bits - 1)))[None])
    torch.testing.assert_close(wave, expected, rtol=0, atol=2**-24)
    if bits == 16:
        assert torch.equal(wave, expected)  # the standard int16 / 32768 mapping, bit for bit
    assert wave.min() == -1 and wave.max() <= 1  # (2^31 - 1) / 2^31 rounds to 1 in float32


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_wav_is_read_as_stored(tmp_path, subtype):
    data = sine(1000, SAMPLE_RATE, 0.2, channels=2, amp=0.99)
    wave = load_audio(write_wav(tmp_path / "x.wav", data, subtype=subtype))
    assert wave.shape == (2, len(data))
    assert torch.equal(wave, torch.from_numpy(data.T.copy()))


# -- audio: lossy formats, via libsndfile and via FFmpeg ------------------------------------


def _sf_writer(fmt, subtype):
    def write(path, wave, rate):
        soundfile.write(path, wave, rate, format=fmt, subtype=subtype)
        return path

    return write


def _ff_writer(codec, format=None):
    return lambda path, wave, rate: write_audio_ffmpeg(path, wave, rate, codec, format)


LOSSY = {
    "ogg-vorbis": ("ogg", 44100, _sf_writer("OGG", "VORBIS")),
    "ogg-opus": ("opus", 48000, _sf_writer("OGG", "OPUS")),
    "mp3": ("mp3", 44100, _sf_writer("MP3", "MPEG_LAYER_III")),
    "mp3-ffmpeg-22k": ("mp3", 22050, _ff_writer("libmp3lame")),
    "m4a-aac": ("m4a", 44100, _ff_writer("aac")),
    "adts-aac": ("aac", 48000, _ff_writer("aac", "adts")),
    "webm-opus": ("webm", 48000, _ff_writer("libopus")),
    "mka-opus": ("mka", 48000, _ff_writer("libopus")),
}


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_formats_decode_close_to_the_source(tmp_path, name):
    ext, rate, write = LOSSY[name]
    source = sine(440, rate, 1.0, channels=2)  # 440 Hz left, 880 Hz right
    try:
        path = write(tmp_path / f"x.{ext}", source, rate)
    except soundfile.LibsndfileError as e:
        pytest.skip(f"this libsndfile cannot write {name}: {e}")

    wave = load_audio(path)

    assert wave.dtype == torch.float32 and wave.shape[0] == 2
    # encoders add priming/padding of up to a couple of codec frames
    assert abs(wave.shape[1] / SAMPLE_RATE - 1.0) < 0.06
    middle = wave[:, SAMPLE_RATE // 5 : 4 * SAMPLE_RATE // 5].numpy()
    assert abs(peak_frequency(middle[0], SAMPLE_RATE) - 440) < 3
    assert abs(peak_frequency(middle[1], SAMPLE_RATE) - 880) < 3
    rms = np.sqrt((middle**2).mean(axis=1))
    np.testing.assert_allclose(rms, 0.5 / np.sqrt(2), rtol=0.1)


def test_unknown_extension_falls_back_to_ffmpeg(tmp_path):
    # ADTS AAC under a name libsndfile does not know and a content it cannot read
    path = write_audio_ffmpeg(tmp_path / "clip.bin", sine(440, 44100, 0.5), 44100, "aac", "adts")
    wave = load_audio(path)
    assert wave.shape[0] == 1 and abs(wave.shape[1] - SAMPLE_RATE // 2) < 2500


# -- audio: resampling and channels ----------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 48000, 96000])
def test_resampling_to_44k1_keeps_length_and_pitch(tmp_path, rate):
    source = sine(440, rate, 1.3)
    wave = load_audio(write_wav(tmp_path / "x.wav", source, rate, subtype="PCM_16"))
    assert wave.shape == (1, round(len(source) * SAMPLE_RATE / rate))
    middle = wave[0, 4410:-4410].numpy()
    assert abs(peak_frequency(middle, SAMPLE_RATE) - 440) < 1
    assert abs(np.abs(middle).max() - 0.5) < 0.005  # level preserved


def test_resampling_to_another_rate(tmp_path):
    wave = load_audio(write_wav(tmp_path / "x.wav", sine(440, 44100, 1.0)), sample_rate=16000)
    assert wave.shape == (1, 16000)
    assert abs(peak_frequency(wave[0].numpy(), 16000) - 440) < 1


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channels_are_kept_in_order_and_mono_averages(tmp_path, channels):
    source = sine(300, 22050, 0.5, channels=channels, amp=0.3)  # channel c at 300 * (c + 1) Hz
    path = write_wav(tmp_path / "x.wav", source, 22050)

    wave = load_audio(path)
    assert wave.shape == (channels, SAMPLE_RATE // 2)
    for c in range(channels):
        assert abs(peak_frequency(wave[c].numpy(), SAMPLE_RATE) - 300 * (c + 1)) < 3

    mono = load_audio(path, mono=True)
    assert mono.shape == (1, SAMPLE_RATE // 2)
    torch.testing.assert_close(mono, wave.mean(dim=0, keepdim=True), rtol=0, atol=1e-6)


def test_six_channel_aac_keeps_every_channel(tmp_path):
    path = write_audio_ffmpeg(tmp_path / "x.m4a", sine(200, 48000, 0.5, channels=6, amp=0.2), 48000, "aac")
    assert load_audio(path).shape[0] == 6


def test_max_duration_limits_decoding(tmp_path):
    source = sine(440, 44100, 3.0, channels=2)
    full = load_audio(write_wav(tmp_path / "a.wav", source))
    part = load_audio(tmp_path / "a.wav", max_duration=1.0)
    assert part.shape == (2, 44100)
    assert torch.equal(part, full[:, :44100])

    # resampled: the cut lands where decoding the whole file would put it, nearly unchanged
    write_wav(tmp_path / "b.wav", sine(440, 16000, 3.0), 16000)
    full = load_audio(tmp_path / "b.wav")
    part = load_audio(tmp_path / "b.wav", max_duration=1.5)
    assert part.shape == (1, round(1.5 * SAMPLE_RATE))
    torch.testing.assert_close(part, full[:, : part.shape[1]], rtol=0, atol=1e-4)

    # longer than the file: the whole file; FFmpeg path too
    assert load_audio(tmp_path / "b.wav", max_duration=10).shape == full.shape
    m4a = write_audio_ffmpeg(tmp_path / "c.m4a", sine(440, 44100, 2.0), 44100, "aac")
    assert load_audio(m4a, max_duration=0.5).shape == (1, 22050)


# -- audio: levels -----------------------------------------------------------------------------


def test_silence_is_valid(tmp_path):
    wave = load_audio(write_wav(tmp_path / "x.wav", np.zeros((1000, 1), np.float32), subtype="PCM_16"))
    assert wave.shape == (1, 1000) and not wave.any()


def test_small_overshoot_is_clipped(tmp_path):
    data = np.array([[0.5], [1.5], [-1.9], [0.25]], np.float32)
    wave = load_audio(write_wav(tmp_path / "x.wav", data))
    assert wave.tolist() == [[0.5, 1.0, -1.0, 0.25]]


# -- audio: bad input --------------------------------------------------------------------------


def _jpeg(path: Path) -> Path:
    Image.new("RGB", (32, 32), "red").save(path, format="JPEG")
    return path


def _wav_bytes(tmp_path: Path, seconds: float = 1.0) -> bytes:
    write_wav(tmp_path / "src.wav", sine(440, 44100, seconds), subtype="PCM_16")
    return (tmp_path / "src.wav").read_bytes()


BAD_AUDIO = {
    "missing": (lambda d: d / "nope.wav", "no such file"),
    "directory": (lambda d: _folder(d / "dir.wav"), "is a directory"),
    "zero bytes": (lambda d: _file(d / "x.wav", b""), "empty file"),
    "zero frames": (
        lambda d: write_wav(d / "x.wav", np.zeros((0, 1), np.float32), subtype="PCM_16"),
        "contains no audio samples",
    ),
    "header only": (
        lambda d: _file(d / "x.wav", _wav_bytes(d)[:44]),
        "contains no audio samples",
    ),
    "text named .wav": (
        lambda d: _file(d / "x.wav", b"hello, I am not a sound\n" * 20),
        "not a readable audio file",
    ),
    "random bytes named .flac": (
        lambda d: _file(d / "x.flac", np.random.default_rng(0).bytes(5000)),
        "not a readable audio file",
    ),
    "jpeg named .wav": (lambda d: _jpeg(d / "x.wav"), "is an image, not audio"),
    "jpeg": (lambda d: _jpeg(d / "x.jpg"), "is an image, not audio"),
    "video without sound": (
        lambda d: write_video(d / "x.mp4", grey_levels(5), audio_codec=None),
        "has no audio stream (video only)",
    ),
    "truncated m4a": (
        lambda d: _file(
            d / "x.m4a",
            write_audio_ffmpeg(d / "src.m4a", sine(440, 44100, 1.0), 44100, "aac").read_bytes()[:3000],
        ),
        "not a readable audio file",
    ),
    "NaN": (
        lambda d: write_wav(d / "x.wav", np.array([[0.1], [np.nan], [0.2]], np.float32)),
        "contains NaN or infinite samples",
    ),
    "infinity": (
        lambda d: write_wav(d / "x.wav", np.array([[0.1], [-np.inf]], np.float32)),
        "contains NaN or infinite samples",
    ),
    "int16-scaled floats": (
        lambda d: write_wav(d / "x.wav", sine(440, 44100, 0.1) * 32767),
        "samples far outside [-1, 1] (peak 16383)",
    ),
}


@pytest.mark.parametrize("case", BAD_AUDIO)
def test_bad_audio_raises_one_clear_media_error(tmp_path, case):
    make, reason = BAD_AUDIO[case]
    path = make(tmp_path)
    with pytest.raises(MediaError) as excinfo:
        load_audio(path)
    assert_media_error(excinfo, path, reason)


def test_truncated_wav_returns_the_prefix(tmp_path):
    data = _wav_bytes(tmp_path, 1.0)
    (tmp_path / "cut.wav").write_bytes(data[: 44 + 2 * 20000])  # header + 20000 int16 samples
    full = load_audio(tmp_path / "src.wav")
    wave = load_audio(tmp_path / "cut.wav")
    assert wave.shape == (1, 20000)
    assert torch.equal(wave, full[:, :20000])


def _damaged(path: Path, keep: float, scramble: bool) -> Path:
    """Keep the first ``keep`` of the file; optionally overwrite every 7th byte past 200."""
    data = bytearray(path.read_bytes()[: int(len(path.read_bytes()) * keep)])
    if scramble:
        data[200::7] = bytes((b * 31 + 7) & 255 for b in data[200::7])
    damaged = path.with_name("damaged" + path.suffix)
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize("suffix", ["flac", "ogg", "mp3", "m4a", "mp4"])
@pytest.mark.parametrize("keep, scramble", [(0.5, False), (1.0, True)])
def test_damaged_files_give_a_prefix_or_a_media_error(tmp_path, suffix, keep, scramble):
    source = tmp_path / f"x.{suffix}"
    if suffix == "m4a":
        write_audio_ffmpeg(source, sine(440, 44100, 1.0), 44100, "aac")
    elif suffix == "mp4":
        write_video(source, grey_levels(10))
    else:  # noise, so that the compressed data dwarfs the headers
        soundfile.write(source, np.random.default_rng(0).uniform(-0.3, 0.3, 88200), 44100)
    path = _damaged(source, keep, scramble)
    readers = [load_audio] + ([load_video_frames] if suffix == "mp4" else [])
    for read in readers:
        try:
            out = read(path)
        except MediaError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        else:
            assert torch.isfinite(out).all() and out.shape[-1] > 0


def test_media_error_pickles():
    error = pickle.loads(pickle.dumps(MediaError("a/b.wav", "no such file")))
    assert (error.path, error.reason, str(error)) == ("a/b.wav", "no such file", "a/b.wav: no such file")


def test_bad_arguments_are_value_errors(tmp_path):
    path = write_wav(tmp_path / "x.wav", sine(440, 44100, 0.1))
    with pytest.raises(ValueError):
        load_audio(path, max_duration=0)
    with pytest.raises(ValueError):
        load_audio(path, sample_rate=0)


# -- windows -----------------------------------------------------------------------------------


def _ramp(length: int, channels: int = 2) -> torch.Tensor:
    return torch.arange(1, length + 1, dtype=torch.float32).repeat(channels, 1)  # no zeros inside


def _starts(windows: list[AudioWindow], rate: int) -> list[int]:
    return [round(w.start * rate) for w in windows]


@pytest.mark.parametrize("length, left, right", [(3, 3, 4), (4, 3, 3), (9, 0, 1), (1, 4, 5)])
def test_short_clip_is_centre_padded_into_one_window(length, left, right):
    (w,) = split_windows(_ramp(length), sample_rate=10, window=1.0)
    assert w.wave.shape == (2, 10)
    assert (w.start, w.end) == (0.0, length / 10)
    assert not w.wave[:, :left].any() and not w.wave[:, 10 - right :].any()
    assert torch.equal(w.wave[:, left : left + length], _ramp(length))


def test_clip_of_exactly_one_window_is_not_padded():
    wave = _ramp(44100 * 5)
    (w,) = split_windows(wave)
    assert w.wave.shape == wave.shape and torch.equal(w.wave, wave)
    assert (w.start, w.end) == (0.0, 5.0)


def test_exact_multiple_has_no_duplicate_window():
    windows = split_windows(_ramp(30), sample_rate=10, window=1.0)
    assert _starts(windows, 10) == [0, 10, 20]
    assert [w.end for w in windows] == [1.0, 2.0, 3.0]


def test_last_window_is_aligned_to_the_clip_end():
    wave = _ramp(25)
    windows = split_windows(wave, sample_rate=10, window=1.0)
    assert _starts(windows, 10) == [0, 10, 15]
    assert [(w.start, w.end) for w in windows] == [(0.0, 1.0), (1.0, 2.0), (1.5, 2.5)]
    for w in windows:  # full-length real audio, no padding
        start = round(w.start * 10)
        assert torch.equal(w.wave, wave[:, start : start + 10])


def test_hop_overlaps_windows():
    assert _starts(split_windows(_ramp(25), sample_rate=10, window=1.0, hop=0.5), 10) == [0, 5, 10, 15]
    assert _starts(split_windows(_ramp(27), sample_rate=10, window=1.0, hop=0.5), 10) == [0, 5, 10, 15, 17]


def test_real_rate_windows_of_a_long_clip():
    windows = split_windows(torch.zeros(1, 44100 * 12), window=5.0, hop=2.5)
    assert [w.start for w in windows] == [0.0, 2.5, 5.0, 7.0]
    assert [w.end for w in windows] == [5.0, 7.5, 10.0, 12.0]
    assert all(w.wave.shape == (1, 220500) for w in windows)


def test_one_dimensional_wave_gets_a_channel_axis():
    (w,) = split_windows(torch.ones(5), sample_rate=10, window=1.0)
    assert w.wave.shape == (1, 10)


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": -1}, {"hop": 0}, {"hop": -0.5}])
def test_bad_window_arguments(kwargs):
    with pytest.raises(ValueError):
        split_windows(torch.zeros(1, 100), **kwargs)


# -- images ------------------------------------------------------------------------------------


def _photo(width: int = 300, height: int = 200) -> Image.Image:
    """A smooth, non-symmetric RGB test picture."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def test_rgb_jpeg_equals_torchvision_clip_preprocessing(tmp_path):
    path = tmp_path / "x.jpg"
    _photo().save(path, quality=90)
    reference = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )(Image.open(path).convert("RGB"))
    image = load_image(path)
    assert image.dtype == torch.float32 and image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(image, reference)


def test_image_size_argument(tmp_path):
    _photo(120, 90).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", image_size=64).shape == (3, 64, 64)


def _grey_ramp() -> np.ndarray:
    return np.tile(np.arange(256, dtype=np.uint8), (32, 1))  # 32 x 256, every 8-bit level


def _with_alpha_half(img: Image.Image, mode: str) -> Image.Image:
    out = img.convert(mode)
    alpha = Image.new("L", img.size, 255)
    alpha.paste(0, (0, 0, img.width // 2, img.height))  # left half fully transparent
    out.putalpha(alpha)
    return out


def _white_left(img: Image.Image) -> Image.Image:
    out = img.convert("RGB")
    out.paste((255, 255, 255), (0, 0, img.width // 2, img.height))
    return out


def _mode_cases():
    ramp = _grey_ramp()
    colour = _photo(96, 64)
    gif = colour.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    gif.info["transparency"] = 3
    gif_expected = gif.convert("RGB")
    gif_expected_pixels = np.asarray(gif_expected).copy()
    gif_expected_pixels[np.asarray(gif) == 3] = 255
    bilevel = Image.fromarray((np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8), "L")  # checkers
    sixteen = (np.arange(256 * 32).reshape(32, 256) * 8 + 3).astype(np.uint16)  # 3 .. 65531
    return {
        # name: (image to save, file suffix, mode Pillow reopens it in, RGB picture it means)
        "RGB": (colour, "png", "RGB", colour),
        "L": (Image.fromarray(ramp, "L"), "png", "L", Image.fromarray(ramp, "L").convert("RGB")),
        "1": (bilevel.convert("1"), "png", "1", bilevel.convert("RGB")),
        "P": (colour.convert("P"), "png", "P", colour.convert("P").convert("RGB")),
        "P transparent": (gif, "gif", "P", Image.fromarray(gif_expected_pixels, "RGB")),
        "CMYK": (Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "tif", "CMYK", Image.new("RGB", (40, 30), "red")),
        "RGBA": (_with_alpha_half(colour, "RGBA"), "png", "RGBA", _white_left(colour)),
        "LA": (_with_alpha_half(colour.convert("L"), "LA"), "png", "LA", _white_left(colour.convert("L"))),
        # 16-bit: scaled by 65535/255 = 257 (65531 -> 255, 32768 -> 128), not clipped at 255
        "I;16": (
            Image.fromarray(sixteen),
            "png",
            "I;16",
            Image.fromarray(np.round(sixteen / 257).astype(np.uint8), "L").convert("RGB"),
        ),
        "I": (
            Image.fromarray(sixteen.astype(np.int32)),
            "tif",
            "I",
            Image.fromarray(np.round(sixteen / 257).astype(np.uint8), "L").convert("RGB"),
        ),
        "F in [0, 1]": (
            Image.fromarray(ramp.astype(np.float32) / 255),
            "tif",
            "F",
            Image.fromarray(ramp, "L").convert("RGB"),
        ),
        "F any range": (  # no nominal range: stretched min..max
            Image.fromarray(ramp.astype(np.float32) * 4 - 500),
            "tif",
            "F",
            Image.fromarray(ramp, "L").convert("RGB"),
        ),
    }


MODE_CASES = _mode_cases()


@pytest.mark.parametrize("name", MODE_CASES)
def test_every_mode_becomes_the_rgb_it_means(tmp_path, name):
    img, suffix, mode, expected = MODE_CASES[name]
    path = tmp_path / f"x.{suffix}"
    img.save(path)
    assert Image.open(path).mode == mode  # the case tests what it says
    image = load_image(path)
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(image, clip_preprocess(expected), rtol=0, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (160, 80), (255, 0, 0))
    stored.paste((0, 0, 255), (80, 0, 160, 80))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "x.jpg"
    stored.save(path, exif=exif, quality=95)

    image = load_image(path)

    # shown upright the picture is 80 x 160 with the red half on top
    pixels = image * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
    top, bottom = pixels[:, :100].mean(dim=(1, 2)), pixels[:, 124:].mean(dim=(1, 2))
    assert top[0] > 0.9 and top[2] < 0.1 and bottom[0] < 0.1 and bottom[2] > 0.9
    decoded = Image.open(path)
    decoded.load()
    upright = decoded.transpose(Image.Transpose.ROTATE_270)
    assert torch.equal(image, clip_preprocess(upright.convert("RGB")))


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "lime", "blue")]
    frames[0].save(tmp_path / "x.gif", save_all=True, append_images=frames[1:])
    torch.testing.assert_close(load_image(tmp_path / "x.gif"), clip_preprocess(frames[0]), rtol=0, atol=1e-6)


def _truncated_jpeg(d: Path) -> Path:
    _photo().save(d / "src.jpg", quality=95)
    data = (d / "src.jpg").read_bytes()
    (d / "x.jpg").write_bytes(data[: len(data) // 2])
    return d / "x.jpg"


BAD_IMAGES = {
    "missing": (lambda d: d / "nope.jpg", "no such file"),
    "directory": (lambda d: _folder(d / "dir.png"), "is a directory"),
    "zero bytes": (lambda d: _file(d / "x.png", b""), "empty file"),
    "text named .jpg": (
        lambda d: _file(d / "x.jpg", b"not a picture\n" * 10),
        "not an image",
    ),
    "sound": (lambda d: write_wav(d / "x.wav", sine(440, 8000, 0.1)), "not an image"),
    "truncated jpeg": (_truncated_jpeg, "truncated or corrupt image"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_raises_one_clear_media_error(tmp_path, case):
    make, reason = BAD_IMAGES[case]
    path = make(tmp_path)
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    assert_media_error(excinfo, path, reason)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # errors above twice this
    with pytest.raises(MediaError) as excinfo:
        load_image(path)
    reason = "image too large (10,000 pixels), refused as a possible decompression bomb"
    assert_media_error(excinfo, path, reason)


# -- video -------------------------------------------------------------------------------------


def frame_levels(frames: torch.Tensor, levels: list[int]) -> list[int]:
    """Index into ``levels`` of the grey each CLIP-normalised frame shows."""
    grey = (frames * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]) * 255
    means = grey.mean(dim=(1, 2, 3))
    return [int(np.argmin([abs(float(m) - level) for level in levels])) for m in means]


@pytest.fixture(scope="module")
def video_3s(tmp_path_factory) -> Path:
    """30 solid grey frames at 10 fps with stereo 44.1 kHz sound, MPEG-4 + AAC in MP4."""
    return write_video(tmp_path_factory.mktemp("video") / "x.mp4", grey_levels(30))


def test_central_frame_is_the_sixth_of_ten(video_3s):
    frames = load_video_frames(video_3s)
    assert frames.dtype == torch.float32 and frames.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    # frame 5 of 10 is taken at (5 + 0.5) * 3 s / 10 = 1.65 s: video frame 16
    assert frame_levels(frames, grey_levels(30)) == [16]


def test_all_frames_are_equally_spaced(video_3s):
    frames = load_video_frames(video_3s, which="all")
    assert frames.shape == (10, 3, IMAGE_SIZE, IMAGE_SIZE)
    # (i + 0.5) * 0.3 s -> video frames 1, 4, 7, ...
    assert frame_levels(frames, grey_levels(30)) == [3 * i + 1 for i in range(10)]


@pytest.mark.parametrize("name, codec", [("x.mkv", "mpeg4"), ("x.avi", "mpeg4"), ("x.h264", "libx264")])
def test_frame_times_in_other_containers(tmp_path, name, codec):
    # MKV states only the container's duration; raw H.264 has no timestamps at all
    levels = grey_levels(30)
    path = write_video(tmp_path / name, levels, codec=codec, audio_codec=None)
    assert frame_levels(load_video_frames(path, which="all"), levels) == [3 * i + 1 for i in range(10)]


def test_other_frame_counts_and_sizes(video_3s):
    frames = load_video_frames(video_3s, num_frames=3, which="all", image_size=32)
    assert frames.shape == (3, 3, 32, 32)
    assert frame_levels(frames, grey_levels(30)) == [5, 15, 25]
    assert frame_levels(load_video_frames(video_3s, num_frames=3), grey_levels(30)) == [15]


def test_random_frame_is_one_of_the_ten_and_seedable(video_3s):
    picks = []
    for seed in range(8):
        frames = load_video_frames(video_3s, which="random", generator=seed)
        assert frames.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        picks += frame_levels(frames, grey_levels(30))
    assert set(picks) <= {3 * i + 1 for i in range(10)} and len(set(picks)) > 1
    again = load_video_frames(video_3s, which="random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, load_video_frames(video_3s, which="random", generator=3))


def test_video_with_exactly_ten_frames_gives_each_once(tmp_path):
    levels = grey_levels(10)
    path = write_video(tmp_path / "x.mp4", levels, fps=5, audio_codec=None)
    assert frame_levels(load_video_frames(path, which="all"), levels) == list(range(10))
    assert frame_levels(load_video_frames(path), levels) == [5]


def test_video_with_fewer_frames_than_asked(tmp_path):
    levels = grey_levels(3)
    path = write_video(tmp_path / "x.mp4", levels, fps=3, audio_codec=None)
    # frames start at 0, 1/3, 2/3 s; the ten times are 0.05, 0.15, ..., 0.95 s
    assert frame_levels(load_video_frames(path, which="all"), levels) == [0] * 3 + [1] * 4 + [2] * 3


def test_webm_video_and_its_sound(tmp_path):
    levels = grey_levels(20)
    path = write_video(tmp_path / "x.webm", levels, codec="libvpx", audio_codec="libopus", audio_rate=48000)
    frames = load_video_frames(path, which="all")
    assert frame_levels(frames, levels) == [2 * i + 1 for i in range(10)]
    wave = load_audio(path)
    assert wave.shape[0] == 2 and abs(wave.shape[1] / SAMPLE_RATE - 2.0) < 0.06


def test_sound_of_a_video(video_3s):
    wave = load_audio(video_3s)
    assert wave.shape[0] == 2 and abs(wave.shape[1] / SAMPLE_RATE - 3.0) < 0.06
    assert abs(peak_frequency(wave[0, 22050:-22050].numpy(), SAMPLE_RATE) - 440) < 2
    assert load_audio(video_3s, mono=True, max_duration=1.0).shape == (1, 44100)


BAD_VIDEOS = {
    "missing": (lambda d: d / "nope.mp4", "no such file"),
    "zero bytes": (lambda d: _file(d / "x.mp4", b""), "empty file"),
    "text named .mp4": (
        lambda d: _file(d / "x.mp4", b"not a film\n" * 10),
        "not a readable video",
    ),
    "sound only": (
        lambda d: write_wav(d / "x.wav", sine(440, 8000, 0.1)),
        "has no video stream (audio only)",
    ),
    "m4a": (
        lambda d: write_audio_ffmpeg(d / "x.m4a", sine(440, 44100, 0.2), 44100, "aac"),
        "has no video stream (audio only)",
    ),
}


@pytest.mark.parametrize("case", BAD_VIDEOS)
def test_bad_video_raises_one_clear_media_error(tmp_path, case):
    make, reason = BAD_VIDEOS[case]
    path = make(tmp_path)
    with pytest.raises(MediaError) as excinfo:
        load_video_frames(path)
    assert_media_error(excinfo, path, reason)


def test_bad_video_arguments(video_3s):
    with pytest.raises(ValueError):
        load_video_frames(video_3s, which="middle")
    with pytest.raises(ValueError):
        load_video_frames(video_3s, num_frames=0)


# -- sniffing ----------------------------------------------------------------------------------


def test_extension_sets_are_lowercase_and_disjoint():
    for extensions in (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS):
        assert all(e.startswith(".") and e == e.lower() for e in extensions)
    assert not (AUDIO_EXTENSIONS & IMAGE_EXTENSIONS or AUDIO_EXTENSIONS & VIDEO_EXTENSIONS)
    assert not IMAGE_EXTENSIONS & VIDEO_EXTENSIONS


def test_sniff_by_extension_then_content(tmp_path, video_3s):
    assert sniff_modality("missing/clip.FLAC") == "audio"  # extension alone, no file needed
    assert sniff_modality("a.JPG") == "image" and sniff_modality("b.webm") == "video"
    assert sniff_modality(tmp_path / "nothing.bin") is None

    write_wav(tmp_path / "a.wav", sine(440, 8000, 0.1))
    _photo(20, 10).save(tmp_path / "b.png")
    _jpeg(tmp_path / "c.jpg")
    write_audio_ffmpeg(tmp_path / "d.m4a", sine(440, 44100, 0.1), 44100, "aac")
    soundfile.write(tmp_path / "e.flac", sine(440, 8000, 0.1), 8000)
    renamed = {
        "a.wav": "audio",
        "b.png": "image",
        "c.jpg": "image",
        "d.m4a": "audio",
        "e.flac": "audio",
    }
    for name, modality in renamed.items():
        blob = tmp_path / (name + ".blob")
        blob.write_bytes((tmp_path / name).read_bytes())
        assert sniff_modality(blob) == modality, name
    (tmp_path / "v.blob").write_bytes(video_3s.read_bytes())
    assert sniff_modality(tmp_path / "v.blob") == "video"
    (tmp_path / "t.blob").write_text("plain text")
    assert sniff_modality(tmp_path / "t.blob") is None


# -- real data ---------------------------------------------------------------------------------


def _shared(sub: str, pattern: str, count: int) -> list[Path]:
    files = sorted((SHARED_DATA / sub).glob(pattern))[:count]
    if not files:
        pytest.skip(f"no {pattern} under {SHARED_DATA / sub} (shared data not present)")
    return files


@pytest.mark.parametrize("sub", ["esc50/audio", "esc50/audio_16k"])
def test_esc50_clips_load_as_five_seconds_at_44k1(sub):
    for path in _shared(sub, "*.flac", 3):
        wave = load_audio(path)
        assert wave.shape == (1, 220500), path.name
        assert wave.abs().max() <= 1 and wave.abs().max() > 0
        (window,) = split_windows(wave)
        assert window.wave.shape == (1, 220500)


def test_shared_photos_load():
    for path in _shared("images", "*.jpg", 3):
        assert sniff_modality(path) == "image"
        image = load_image(path)
        assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(image).all()


def test_a_sound_whose_name_is_not_utf8_decodes(tmp_path):
    """libsndfile is handed the name's bytes: b'caf\\xe9.wav' opens like any other file."""
    import os

    import soundfile as sf

    from audioclip.media import load_audio

    name = tmp_path / os.fsdecode(b"caf\xe9.wav")  # the odd byte is a surrogate in Python
    sf.write(os.fsencode(name), np.full(4410, 0.25, np.float32), 44100)
    wave = load_audio(name)
    assert wave.shape == (1, 4410) and abs(float(wave.mean()) - 0.25) < 1e-3
