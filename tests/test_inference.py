"""Embedding and zero-shot classification of files, on a tiny model and generated media."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

from audioclip.inference import (
    DecodeOptions,
    classify,
    embed_files,
    expand_paths,
    shard,
    text_classifier,
    zero_shot,
)
from audioclip.cli.checks import read_list_file
from audioclip.media import MediaError, load_audio, load_image

SR = 44100


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


@pytest.fixture
def media(tmp_path):
    """A folder of good and bad files."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    sf.write(good / "five.wav", tone(5.0), SR, subtype="PCM_16")
    sf.write(good / "long_stereo.flac", tone(7.0, sr=22050, channels=2), 22050)
    sf.write(good / "short.wav", tone(0.3, sr=16000), 16000)
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(good / "pic.png")
    (good / "notes.txt").write_text("not media")
    (bad / "text.wav").write_text("this is not audio at all " * 20)
    (bad / "empty.wav").write_bytes(b"")
    sf.write(bad / "nan.wav", np.full((1000, 1), np.nan, dtype=np.float32), SR, subtype="FLOAT")
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 10)
    return tmp_path


def test_expand_paths_walks_folders_and_ignores_non_media(media):
    files, ignored = expand_paths([media / "good", media / "good" / "five.wav", media / "missing.wav"])
    names = sorted(p.rsplit("/", 1)[-1] for p in files)
    assert names == ["five.wav", "long_stereo.flac", "missing.wav", "pic.png", "short.wav"]
    assert [p.rsplit("/", 1)[-1] for p in ignored] == ["notes.txt"]


def test_shards_cover_every_path_once_whatever_the_order():
    paths = [f"/data/clip_{i}.wav" for i in range(50)]
    parts = [shard(paths, k, 3) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(paths)
    assert all(parts)  # 50 paths over 3 shards: none empty
    assert shard(list(reversed(paths)), 1, 3) == list(reversed(parts[1]))
    with pytest.raises(ValueError):
        shard(paths, 3, 3)


def test_embed_files_reports_bad_files_and_keeps_the_good(tiny_model, media):
    paths, _ = expand_paths([media / "good", media / "bad", media / "missing.wav"])
    results = list(embed_files(tiny_model, paths, batch_size=3))
    assert [r.path for r in results] == paths  # input order
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in results}
    for name in ("text.wav", "empty.wav", "nan.wav", "broken.jpg", "missing.wav"):
        assert not by_name[name].ok and by_name[name].error, name
        assert by_name[name].embeddings == []
    assert "empty" in by_name["empty.wav"].error
    assert "no such file" in by_name["missing.wav"].error
    for name in ("five.wav", "long_stereo.flac", "short.wav", "pic.png"):
        assert by_name[name].ok, (name, by_name[name].error)

    kinds = lambda r: [(e.kind, e.start, e.end) for e in r.embeddings]  # noqa: E731
    assert kinds(by_name["five.wav"]) == [("window", 0.0, 5.0), ("pooled", 0.0, 5.0)]
    # 7 s in 5 s windows: the second window is aligned to the end of the clip
    assert [k for k, *_ in kinds(by_name["long_stereo.flac"])] == ["window", "window", "pooled"]
    assert by_name["long_stereo.flac"].embeddings[1].end == pytest.approx(7.0)
    assert kinds(by_name["pic.png"]) == [("image", None, None)]
    for r in results:
        for e in r.embeddings:
            assert e.vector.shape == (tiny_model.embed_dim,)
            assert e.vector.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_embeddings_equal_the_model_on_the_decoded_file(tiny_model, media):
    path = str(media / "good" / "five.wav")
    pic = str(media / "good" / "pic.png")
    a, i = list(embed_files(tiny_model, [path, pic]))
    with torch.no_grad():
        direct_audio = F.normalize(tiny_model.encode_audio(load_audio(path)[None]), dim=-1)[0]
        direct_image = F.normalize(tiny_model.encode_image(load_image(pic, image_size=64)[None]), dim=-1)[0]
    assert torch.allclose(a.embeddings[0].vector, direct_audio, atol=1e-5)
    assert torch.allclose(i.embeddings[0].vector, direct_image, atol=1e-5)


def test_worker_processes_give_the_same_results(tiny_model, media):
    paths, _ = expand_paths([media / "good", media / "bad"])
    inline = list(embed_files(tiny_model, paths, batch_size=4, workers=0))
    parallel = list(embed_files(tiny_model, paths, batch_size=4, workers=2))
    assert [(r.path, r.error is None) for r in inline] == [(r.path, r.error is None) for r in parallel]
    for x, y in zip(inline, parallel):
        for ex, ey in zip(x.embeddings, y.embeddings):
            assert torch.allclose(ex.vector, ey.vector, atol=1e-5)


def test_overlapping_windows(tiny_model, media):
    path = str(media / "good" / "long_stereo.flac")
    (result,) = embed_files(tiny_model, [path], options=DecodeOptions(window=2.0, hop=1.0, image_size=64))
    starts = [e.start for e in result.embeddings if e.kind == "window"]
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_zero_shot_probabilities(tiny_model):
    labels = ["dog", "rain", "siren"]
    classes = text_classifier(tiny_model, labels, ["a sound of {}", "{}"])
    audio = F.normalize(torch.randn(2, tiny_model.embed_dim), dim=-1)
    image = F.normalize(torch.randn(2, tiny_model.embed_dim), dim=-1)
    both = zero_shot(tiny_model, classes, audio=audio, image=image)
    assert both.shape == (2, 3)
    assert torch.allclose(both.sum(dim=1), torch.ones(2))
    scales = tiny_model.logit_scales()
    expected = (scales["audio_text"] * audio @ classes.T + scales["image_text"] * image @ classes.T).softmax(-1)
    assert torch.allclose(both, expected, atol=1e-6)
    with torch.no_grad():
        per_template = [F.normalize(tiny_model.encode_text([t.format(l) for l in labels]), dim=-1)
                        for t in ["a sound of {}", "{}"]]
    assert torch.allclose(classes, F.normalize(sum(per_template) / 2, dim=-1), atol=1e-6)


def test_model_classify_from_tensors_and_paths(tiny_model, media):
    labels = ["tone", "noise"]
    path = str(media / "good" / "five.wav")
    wave = load_audio(path)[None]
    from_tensor = classify(tiny_model, labels, audio=wave, template="a {}")
    from_path = classify(tiny_model, labels, audio=[path], template="a {}")
    assert from_tensor.shape == (1, 2)
    assert torch.allclose(from_tensor, from_path, atol=1e-5)
    image = classify(tiny_model, labels, image=[str(media / "good" / "pic.png")])
    assert torch.allclose(image.sum(), torch.tensor(1.0))
    with pytest.raises(MediaError, match="text.wav"):
        classify(tiny_model, labels, audio=[str(media / "bad" / "text.wav")])


def test_bad_labels_and_templates(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        text_classifier(tiny_model, ["dog"], "a photo")
    with pytest.raises(ValueError, match="distinct"):
        text_classifier(tiny_model, ["dog", "dog"])
    empty = tmp_path / "labels.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="labels.txt: no entries"):
        read_list_file(empty)
    (tmp_path / "ok.txt").write_text("dog\n# comment\n rain \n")
    assert read_list_file(tmp_path / "ok.txt") == ["dog", "rain"]


def test_real_esc10_clips_with_a_bad_file_among_them(tiny_model, tmp_path):
    from conftest import SHARED_DATA

    esc50 = SHARED_DATA / "esc50"
    if not (esc50 / "audio").is_dir():
        pytest.skip(f"real ESC-10 clips not found at {esc50} (the shared data folder is absent)")
    clips = sorted((esc50 / "audio").glob("*.flac"))[:3] + sorted((esc50 / "audio_16k").glob("*.flac"))[:2]
    bad = tmp_path / "renamed.flac"
    bad.write_bytes(b"ID3" + b"\x00" * 500)
    paths = [str(p) for p in clips[:2]] + [str(bad)] + [str(p) for p in clips[2:]]
    results = list(embed_files(tiny_model, paths, batch_size=4))
    assert [r.path for r in results] == paths
    assert not results[2].ok and "renamed.flac" not in results[2].error  # the reason, not the name again
    for result in results[:2] + results[3:]:
        assert result.ok, result.error
        # a 5 s ESC-50 clip (either rate) is exactly one window
        assert [(e.kind, e.start, e.end) for e in result.embeddings] == [("window", 0.0, 5.0), ("pooled", 0.0, 5.0)]
