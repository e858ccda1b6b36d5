"""audioclip.detection: frame scores (windows, columns), events from scores, the public detect()."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from audioclip.detection import postprocess as pp
from audioclip.detection.postprocess import PostProcessing, events_from_scores

# -- post-processing on hand-made score sequences -----------------------------------------------


def _cells(n, step=1.0):
    start = np.arange(n) * step
    return start, start + step


def _events(scores, labels=("a",), step=1.0, **settings):
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    start, end = _cells(len(scores), step)
    return [(e["label"], e["start_s"], e["end_s"]) for e in
            events_from_scores(scores, start, end, list(labels), PostProcessing(**settings))]


def test_threshold_gives_runs_at_or_above_it():
    assert _events([0.1, 0.5, 0.9, 0.4, 0.6, 0.6, 0.2], threshold=0.5) == [("a", 1, 3), ("a", 4, 6)]


def test_event_score_is_peak_and_mean_of_the_given_scores():
    start, end = _cells(4)
    (event,) = events_from_scores(np.array([[0.2], [0.6], [0.8], [0.1]]), start, end, ["a"],
                                  PostProcessing(threshold=0.5))
    assert event["score"] == pytest.approx(0.8) and event["mean_score"] == pytest.approx(0.7)


def test_hysteresis_extends_an_event_while_above_the_low_threshold():
    scores = [0.3, 0.45, 0.7, 0.45, 0.35, 0.45, 0.1]
    # high only: just the peak; with low 0.4 the run 0.45 0.7 0.45 (frames 1-3); a run above low without a
    # frame above high (frame 5) is no event
    assert _events(scores, threshold=0.6) == [("a", 2, 3)]
    assert _events(scores, threshold=0.6, threshold_low=0.4) == [("a", 1, 4)]
    np.testing.assert_array_equal(pp.hysteresis(np.array(scores)[:, None], 0.6, 0.4)[:, 0],
                                  [False, True, True, True, False, False, False])


def test_merge_gap_joins_events_then_min_duration_drops_short_ones():
    scores = [0.9, 0.9, 0.0, 0.9, 0.0, 0.0, 0.0, 0.9, 0.0]
    step = 0.5
    assert _events(scores, step=step, threshold=0.5) == [("a", 0, 1), ("a", 1.5, 2), ("a", 3.5, 4)]
    # a gap of 0.5 s is merged, one of 1.5 s is not
    assert _events(scores, step=step, threshold=0.5, merge_gap_s=0.5) == [("a", 0, 2), ("a", 3.5, 4)]
    # merged first (2 s), then the lone 0.5 s event is too short
    assert _events(scores, step=step, threshold=0.5, merge_gap_s=0.5, min_duration_s=1.0) == [("a", 0, 2)]
    assert _events(scores, step=step, threshold=0.5, min_duration_s=1.0) == [("a", 0, 1)]


def test_median_filter_removes_a_one_frame_blip_and_fills_a_one_frame_hole():
    assert _events([0, 0, 1, 0, 0], threshold=0.5, median_filter_s=3) == []
    assert _events([1, 1, 0, 1, 1], threshold=0.5, median_filter_s=3) == [("a", 0, 5)]
    np.testing.assert_array_equal(pp.median_filter(np.array([[5.0], [0], [5], [5], [0]]), 3)[:, 0], [5, 5, 5, 5, 0])


def test_top_k_keeps_only_the_best_labels_of_each_frame():
    scores = np.array([[0.9, 0.8, 0.1], [0.6, 0.7, 0.65]])
    np.testing.assert_array_equal(pp.top_k_mask(scores, 1), [[True, False, False], [False, True, False]])
    assert _events(scores, labels="abc", threshold=0.5) == [("a", 0, 2), ("b", 0, 2), ("c", 1, 2)]
    assert _events(scores, labels="abc", threshold=0.5, top_k=1) == [("a", 0, 1), ("b", 1, 2)]


def test_per_label_thresholds():
    scores = np.array([[0.6, 0.6], [0.6, 0.9]])
    assert _events(scores, labels="ab", threshold=(0.5, 0.8)) == [("a", 0, 2), ("b", 1, 2)]


@pytest.mark.parametrize("bad", [dict(threshold=1.5), dict(threshold=-0.1), dict(threshold=0.5, threshold_low=0.6),
                                 dict(min_duration_s=-1), dict(top_k=0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        PostProcessing(**bad)


# -- frame scores ---------------------------------------------------------------------------------

LABELS = ["dog", "rain", "siren"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """13.3 s of noise with a louder tone burst in the middle (mono, 44.1 kHz)."""
    rng = np.random.default_rng(0)
    n = int(13.3 * 44100)
    wave = rng.standard_normal(n).astype(np.float32) * 0.05
    t = np.arange(n) / 44100
    wave[(t > 6) & (t < 8)] += 0.5 * np.sin(2 * np.pi * 880 * t[(t > 6) & (t < 8)]).astype(np.float32)
    path = tmp_path_factory.mktemp("detect") / "rec.wav"
    sf.write(path, wave, 44100)
    return str(path)


def test_window_scores_equal_classify_on_the_window_cut_out_of_the_file(tiny_model, recording):
    import audioclip
    from audioclip.detection import zero_shot_scorer
    from audioclip.detection.scores import frame_scores
    from audioclip.media import load_audio

    scores = frame_scores(tiny_model, recording, LABELS, zero_shot_scorer(tiny_model, LABELS), method="windows",
                          window=2.0, hop=0.5)
    wave = load_audio(recording)
    assert len(scores.start_s) == 24  # starts 0, 0.5, ... 11.0, then one ending at 13.3 s
    assert scores.end_s[-1] == pytest.approx(13.3)
    for i in (0, 5, 13, len(scores.start_s) - 1):
        a = round(scores.start_s[i] * 44100)
        cut = wave[:, a: a + 2 * 44100]
        expected = audioclip.classify(tiny_model, LABELS, audio=cut[None])[0].numpy()
        np.testing.assert_allclose(scores.scores[i], expected, atol=1e-4)
    # the cells tile the recording: each window stands for the hop around its centre
    assert scores.cell_start[0] == 0 and scores.cell_end[-1] == pytest.approx(13.3)
    np.testing.assert_allclose(scores.cell_end[:-1], scores.cell_start[1:])
    np.testing.assert_allclose(scores.cell_end[1:-2] - scores.cell_start[1:-2], 0.5)


def _column_pass_whole(model, wave):
    from audioclip.detection.scores import _column_pass, n_columns

    cfg = model.audio.config
    n = n_columns(model, wave.shape[1])
    length = n * 32 * cfg.hop_length + cfg.win_length - cfg.hop_length
    return _column_pass(model, torch.nn.functional.pad(wave, (0, length - wave.shape[1])))


def test_columns_describe_32_frames_each(tiny_model):
    from audioclip.detection.scores import column_times, n_columns

    cfg = tiny_model.audio.config  # hop 256, window 400
    cell = 32 * cfg.hop_length
    for samples in (1, cfg.win_length, cell, cell + 1, 5 * cell + cfg.win_length - cfg.hop_length,
                    5 * cell + cfg.win_length - cfg.hop_length + 1, 44100 * 3):
        frames = 1 + max(0, samples - cfg.win_length + cfg.hop_length - 1) // cfg.hop_length
        assert n_columns(tiny_model, samples) == -(-frames // 32)
        wave = torch.zeros(1, samples)
        wave[0, ::7] = 0.1
        # the trunk's feature map has exactly that many time columns
        assert _column_pass_whole(tiny_model, wave).shape[0] == n_columns(tiny_model, samples)
    start, end, cell_start, cell_end = column_times(tiny_model, 4, 1.0)
    np.testing.assert_allclose(start, np.arange(4) * cell / 44100)
    np.testing.assert_allclose(end, (np.arange(4) * cell + 31 * cfg.hop_length + cfg.win_length) / 44100)
    np.testing.assert_allclose(cell_end[:-1], cell_start[1:])
    assert cell_end[-1] == 1.0


def test_a_column_depends_on_its_own_stretch_of_audio_not_on_audio_far_away(tiny_model):
    """Changing the audio in column 40's stretch changes columns near 40 only."""
    cfg = tiny_model.audio.config
    cell = 32 * cfg.hop_length
    torch.manual_seed(1)
    wave = torch.randn(1, 70 * cell) * 0.05
    changed = wave.clone()
    changed[0, 40 * cell: 41 * cell] += 0.5 * torch.sin(torch.arange(cell) * 0.3)
    a, b = _column_pass_whole(tiny_model, wave), _column_pass_whole(tiny_model, changed)
    moved = (a - b).abs().amax(dim=1)
    assert int(moved.argmax()) in (39, 40, 41)
    assert moved[:30].max() < 1e-5 and moved[52:].max() < 1e-5


def test_columns_run_in_stretches_equal_one_pass_over_the_whole_recording(tiny_model):
    from audioclip.detection.scores import column_embeddings

    torch.manual_seed(2)
    wave = torch.randn(1, 44100 * 31) * 0.05
    whole = _column_pass_whole(tiny_model, wave)
    blocks = list(wave.split(44100 * 3, dim=1))
    stretched = torch.cat([e for _, e, _ in column_embeddings(tiny_model, blocks, stretch=16, context=8)])
    assert stretched.shape == whole.shape
    torch.testing.assert_close(stretched, whole, atol=1e-5, rtol=0)


def test_column_frame_scores_cover_the_recording(tiny_model, recording):
    from audioclip.detection import zero_shot_scorer
    from audioclip.detection.scores import frame_scores, n_columns

    scores = frame_scores(tiny_model, recording, LABELS, zero_shot_scorer(tiny_model, LABELS))
    assert scores.scores.shape == (n_columns(tiny_model, int(13.3 * 44100)), 3)
    np.testing.assert_allclose(scores.scores.sum(axis=1), 1, atol=1e-5)
    assert scores.cell_start[0] == 0 and scores.cell_end[-1] == pytest.approx(13.3)
    assert scores.end_s.max() <= 13.3 + 1e-9


# -- the public function --------------------------------------------------------------------------


def test_detect_returns_events_and_frames(tiny_model, recording, tmp_path):
    import audioclip

    missing = str(tmp_path / "missing.wav")
    found = audioclip.detect(tiny_model, [recording, missing], labels=LABELS, threshold=0.0, method="windows",
                             window=2.0, hop=1.0)
    assert found.failed and found.failed[0][0] == missing
    # threshold 0: every label is active everywhere: one event per label over the whole recording
    assert sorted(e["label"] for e in found.events) == sorted(LABELS)
    assert all(e["start_s"] == 0 and e["end_s"] == pytest.approx(13.3) for e in found.events)
    table = found.frames_table()
    assert table.column_names == ["path", "start_s", "end_s", "label", "score"]
    assert table.num_rows == 3 * len(found.files[0].frames.start_s)
    assert found.settings["method"] == "windows" and found.settings["labels"] == LABELS


class _Head:
    """A stand-in for a fitted head: labels, a calibrated threshold, embeddings -> scores."""

    labels = ["loud", "quiet"]
    threshold = (0.5, 0.99)

    def scores(self, embeddings):
        first = torch.sigmoid(embeddings[:, 0] * 100)
        return torch.stack([first, 1 - first], dim=1)


def test_detect_with_a_head_uses_its_labels_and_threshold(tiny_model, recording):
    import audioclip

    found = audioclip.detect(tiny_model, recording, head=_Head())
    assert found.settings["labels"] == ["loud", "quiet"] and found.settings["threshold"] == [0.5, 0.99]
    frames = found.files[0].frames
    expected = events_from_scores(frames.scores, frames.cell_start, frames.cell_end, _Head.labels,
                                  PostProcessing(threshold=(0.5, 0.99)))
    assert found.files[0].events == expected
    with pytest.raises(ValueError, match="not both"):
        audioclip.detect(tiny_model, recording, labels=["a"], head=_Head())


def test_a_head_for_another_checkpoint_is_refused(recording):
    import warnings

    import audioclip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        model = audioclip.create_model("AudioCLIP-tiny")
    head = _Head()
    head.checkpoint = "some-other-weights@0000"
    with pytest.raises(ValueError, match="fitted on checkpoint"):
        audioclip.detect(model, recording, head=head)


def test_query_scores_give_one_query_over_time(tiny_model, recording):
    from audioclip.detection import query_scores
    from audioclip.inference import text_classifier

    timeline = query_scores(tiny_model, recording, "a dog barking")
    assert timeline.labels == ["a dog barking"] and timeline.scores.shape[1] == 1
    assert timeline.cell_end[-1] == pytest.approx(13.3)
    # the score is (1 + cosine) / 2 of the query's text and each column's audio embedding
    from audioclip.detection.scores import column_embeddings
    from audioclip.media import stream_audio

    vectors = torch.cat([e for _, e, _ in column_embeddings(tiny_model, stream_audio(recording))])
    text = text_classifier(tiny_model, ["a dog barking"])
    np.testing.assert_allclose(timeline.scores[:, 0], ((1 + vectors @ text.T) / 2)[:, 0].numpy(), atol=1e-6)


def test_a_fitted_head_scores_with_its_probabilities_and_leaves_out_its_background_class(tiny_model, recording):
    import torch

    import audioclip
    from audioclip.heads import Head

    dim = tiny_model.embed_dim
    weight = torch.randn(3, dim, generator=torch.Generator().manual_seed(0))
    head = Head(labels=["dog", "background", "rain"], weight=weight, bias=torch.zeros(3), background="background",
                threshold=0.4)
    found = audioclip.detect(tiny_model, recording, head=head)
    assert found.settings["labels"] == ["dog", "rain"] and found.settings["threshold"] == 0.4
    frames = found.files[0].frames
    assert frames.scores.shape[1] == 2
    # the scores are the head's class probabilities (softmax over all three classes), background column dropped
    assert float(frames.scores.max()) <= 1.0 and float(frames.scores.sum(axis=1).max()) <= 1.0 + 1e-6
    untrained = Head(labels=["dog", "rain"], weight=weight[[0, 2]], bias=torch.zeros(2))
    assert audioclip.detect(tiny_model, recording, head=untrained).settings["threshold"] == 0.5


def test_where_the_background_class_wins_no_class_of_a_head_is_active():
    import torch

    from audioclip.detection import head_scorer
    from audioclip.heads import Head

    # embeddings along axis 0 are "dog", along axis 1 "background"; thresholds per label
    weight = torch.zeros(3, 4)
    weight[0, 0], weight[1, 1], weight[2, 2] = 5.0, 5.0, 5.0
    head = Head(labels=["dog", "background", "rain"], weight=weight, bias=torch.zeros(3), background="background",
                threshold=0.3)
    labels, scorer, threshold = head_scorer(head)
    assert labels == ["dog", "rain"] and threshold == 0.3
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.3, 1.0, 0.0, 0.0]])
    scores = scorer(x)
    probs = head.probabilities(x)
    assert torch.allclose(scores[0], probs[0, [0, 2]])  # dog wins: its probability
    assert head.decide(probs)[1] == "none" and float(probs[1, 0]) > 0.0
    assert torch.equal(scores[1], torch.zeros(2))  # background wins: nothing is active, as the head decides
    per_label = Head(labels=["dog", "background", "rain"], weight=weight, bias=torch.zeros(3), background="background")
    per_label.threshold = [0.2, 0.9, 0.4]
    assert head_scorer(per_label)[2] == [0.2, 0.4]


def test_detect_takes_a_head_folder(tiny_model, recording, tmp_path):
    import torch

    import audioclip
    from audioclip.heads import Head

    weight = torch.randn(2, tiny_model.embed_dim, generator=torch.Generator().manual_seed(1))
    Head(labels=["dog", "rain"], weight=weight, bias=torch.zeros(2)).save(tmp_path / "head")
    found = audioclip.detect(tiny_model, recording, head=tmp_path / "head")
    assert found.settings["labels"] == ["dog", "rain"]
