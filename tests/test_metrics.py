"""The evaluation metrics against scikit-learn, torchmetrics and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioclip.metrics import (
    RECALL_LEVELS,
    accuracy,
    confusion_matrix,
    mean_average_precision,
    per_class_accuracy,
    retrieval_metrics,
    retrieval_metrics_torchmetrics,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (test extra) is needed for cross-checks")


# -- classification ----------------------------------------------------------------------


def test_accuracy_and_confusion_match_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 7))
    targets = rng.integers(0, 7, 200)
    assert accuracy(scores, targets) == pytest.approx(sklearn_metrics.accuracy_score(targets, scores.argmax(1)))
    matrix = confusion_matrix(scores, targets)
    np.testing.assert_array_equal(matrix, sklearn_metrics.confusion_matrix(targets, scores.argmax(1), labels=range(7)))
    recall = sklearn_metrics.recall_score(targets, scores.argmax(1), average=None, labels=range(7), zero_division=0)
    np.testing.assert_allclose(per_class_accuracy(matrix), recall)


def test_accuracy_ties_and_absent_classes():
    # a tie for the best score goes to the lower class index
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 5.0]])
    targets = np.array([0, 2, 2])
    assert accuracy(scores, targets) == pytest.approx(2 / 3)
    matrix = confusion_matrix(scores, targets)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 0], [0, 1, 1]])
    per_class = per_class_accuracy(matrix)
    assert per_class[0] == 1.0 and np.isnan(per_class[1]) and per_class[2] == 0.5  # class 1 has no items: NaN
    assert np.isnan(accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))


# -- multi-label mAP -------------------------------------------------------------------------


def test_map_matches_sklearn_with_ties_and_a_class_without_positives():
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 6)) < 0.3).astype(int)
    labels[:, 4] = 0  # no positive: left out of the mean
    scores = np.round(rng.normal(size=(60, 6)), 1)  # rounding makes many ties
    value, per_class = mean_average_precision(scores, labels)
    have = [0, 1, 2, 3, 5]
    expected = sklearn_metrics.average_precision_score(labels[:, have], scores[:, have], average=None)
    np.testing.assert_allclose(per_class[have], expected, atol=1e-6)
    assert np.isnan(per_class[4])
    assert value == pytest.approx(np.mean(expected), abs=1e-6)


def test_map_of_large_logits_is_not_flattened_by_a_sigmoid():
    # AudioCLIP logits are 100 x cosine: a sigmoid in float32 would turn most of them into ties at 1.0
    rng = np.random.default_rng(2)
    cos = rng.uniform(0.2, 0.9, size=(80, 4))
    labels = (rng.random((80, 4)) < 0.4).astype(int)
    value, per_class = mean_average_precision(100 * cos, labels)
    expected = sklearn_metrics.average_precision_score(labels, cos, average=None)
    np.testing.assert_allclose(per_class, expected, atol=1e-6)


def test_map_hand_computed():
    # class 0: positives ranked 1st and 3rd -> (1 + 2/3) / 2; class 1: positive ranked 2nd -> 1/2
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.7, 0.9], [0.1, 0.2]])
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    value, per_class = mean_average_precision(scores, labels)
    np.testing.assert_allclose(per_class, [(1 + 2 / 3) / 2, 0.5])
    assert value == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)


# -- retrieval ----------------------------------------------------------------------------------


def test_retrieval_matches_torchmetrics_and_sklearn_without_ties():
    rng = np.random.default_rng(3)
    sim = rng.uniform(-1, 1, size=(25, 40))  # cosine-like: many negative scores
    rel = rng.random((25, 40)) < 0.15
    rel[0] = False  # a query without relevant targets
    ex = rng.random((25, 40)) < 0.05
    ours = retrieval_metrics(sim, rel, k=1, exclude=ex, max_pairs=90)  # several chunks
    ref = retrieval_metrics_torchmetrics(sim, rel, k=1, exclude=ex)
    np.testing.assert_allclose(ours.precision_at_k, ref.precision_at_k)
    np.testing.assert_allclose(ours.recall_at_k, ref.recall_at_k, equal_nan=True, rtol=1e-6)
    np.testing.assert_allclose(ours.average_precision, ref.average_precision, equal_nan=True, rtol=1e-6)
    np.testing.assert_array_equal(ours.num_relevant, ref.num_relevant)
    for q in range(1, 25):
        keep = ~ex[q]
        if rel[q][keep].any():
            ap = sklearn_metrics.average_precision_score(rel[q][keep], sim[q][keep])
            assert ours.average_precision[q] == pytest.approx(ap)
    # larger k too
    ours5 = retrieval_metrics(sim, rel, k=5)
    ref5 = retrieval_metrics_torchmetrics(sim, rel, k=5)
    np.testing.assert_allclose(ours5.precision_at_k, ref5.precision_at_k)
    np.testing.assert_allclose(ours5.recall_at_k, ref5.recall_at_k, equal_nan=True, rtol=1e-6)


def test_retrieval_with_only_negative_scores_is_unchanged():
    # torchmetrics' own functions would count these targets as "not retrieved"; ours rank them
    sim = np.array([[-0.9, -0.2, -0.5, -0.7]])
    rel = np.array([[True, False, True, False]])
    s = retrieval_metrics(sim, rel)
    # ranking: t1 (no), t2 (yes), t3 (no), t0 (yes) -> AP = (1/2 + 2/4) / 2
    assert s.precision_at_k[0] == 0.0 and s.recall_at_k[0] == 0.0
    assert s.average_precision[0] == pytest.approx(0.5)
    assert s.average_precision[0] == pytest.approx(sklearn_metrics.average_precision_score(rel[0], sim[0]))


def test_retrieval_hand_computed_ties_and_empty_queries():
    sim = torch.tensor([
        [0.5, 0.5, 0.1, 0.0],   # tie at the top: target 0 ranks before target 1
        [0.5, 0.5, 0.1, 0.0],
        [0.9, 0.5, 0.5, 0.5],   # three-way tie below the top
        [0.3, 0.2, 0.1, 0.0],   # no relevant target
    ])
    rel = torch.tensor([
        [False, True, False, False],
        [True, False, False, True],
        [False, False, True, True],
        [False, False, False, False],
    ])
    s = retrieval_metrics(sim, rel, k=1)
    np.testing.assert_allclose(s.precision_at_k, [0, 1, 0, 0])
    np.testing.assert_allclose(s.recall_at_k, [0, 0.5, 0, np.nan], equal_nan=True)
    np.testing.assert_allclose(s.average_precision, [0.5, (1 + 2 / 4) / 2, (1 / 3 + 2 / 4) / 2, np.nan], equal_nan=True)
    np.testing.assert_array_equal(s.num_relevant, [1, 2, 2, 0])
    assert list(s.valid) == [True, True, True, False]
    # scikit-learn scores a tie as one threshold instead (query 2: AP 0.5, not 0.4167): a different
    # convention, which is why ours is stated in the docs
    assert sklearn_metrics.average_precision_score(rel[2], sim[2]) == pytest.approx(0.5)


def test_retrieval_exclusion_and_interpolated_precision():
    sim = np.array([[1.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    rel = np.array([[True, False, True, False, False, True]])
    # without the query itself (target 0): ranking 1 (no), 2 (yes), 3, 4, 5 (yes)
    s = retrieval_metrics(sim, rel, exclude=np.array([[True, False, False, False, False, False]]))
    assert s.num_relevant[0] == 2
    assert s.precision_at_k[0] == 0.0
    assert s.average_precision[0] == pytest.approx((1 / 2 + 2 / 5) / 2)
    curve = s.interpolated_precision[0]
    assert curve.shape == RECALL_LEVELS.shape
    # recall <= 0.5 reachable at rank 2 (precision 1/2); beyond needs rank 5 (2/5)
    np.testing.assert_allclose(curve[RECALL_LEVELS <= 0.5], 0.5)
    np.testing.assert_allclose(curve[RECALL_LEVELS > 0.5], 0.4)
    # without exclusion: precision 1 at recall 1/3, then 2/3 at 2/3, then 1/2 at 1
    s = retrieval_metrics(sim, rel)
    assert s.average_precision[0] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    curve = s.interpolated_precision[0]
    assert curve[0] == 1.0 and curve[-1] == pytest.approx(0.5)


def test_retrieval_rejects_bad_shapes():
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 4), bool))
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 3), bool), k=0)


def test_querying_relevance_and_label_set_averaging():
    from audioclip.evaluate.protocols import _group_mean, _rank_queries

    # one text query for the label set {0, 1}; targets {0, 1}, {0}, {2}
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]], dtype=torch.float64)
    exact = _rank_queries(q, t, [(0, 1)], [-1], [(0, 1), (0,), (2,)], [0, 1, 2], 3, "exact", True, 1000)
    overlap = _rank_queries(q, t, [(0, 1)], [-1], [(0, 1), (0,), (2,)], [0, 1, 2], 3, "overlap", True, 1000)
    # exact: only target 0 is relevant, ranked 3rd; overlap: targets 0 and 1 (ranked 3rd and 1st)
    assert exact.num_relevant[0] == 1 and exact.average_precision[0] == pytest.approx(1 / 3)
    assert overlap.num_relevant[0] == 2 and overlap.average_precision[0] == pytest.approx((1 + 2 / 3) / 2)
    # group macro: label set A has queries 1.0 and 0.0, label set B one query 1.0 -> (0.5 + 1) / 2
    values = np.array([1.0, 0.0, 1.0, np.nan])
    groups = np.array([0, 0, 1, 1])
    valid = np.array([True, True, True, False])
    assert _group_mean(values, groups, valid) == pytest.approx(0.75)


# -- the one score of training's model selection ---------------------------------------------


def test_training_score_is_the_reported_metric():
    # training picks its best epoch by the same code that evaluation reports with (ties: one threshold)
    from audioclip.metrics import score

    scores = np.array([[0.5, 0.1], [0.5, 0.7], [0.2, 0.9], [0.1, 0.2]])
    labels = np.array([[1, 0], [0, 1], [0, 0], [1, 0]])
    name, value = score(scores, labels, multilabel=True)
    assert name == "mAP" and value == pytest.approx(mean_average_precision(scores, labels)[0])
    # class 0: positives at 0.5 (tied with a negative) and 0.1 (last): AP = (1/2 + 2/4) / 2, as scikit-learn
    assert value == pytest.approx((0.5 + sklearn_metrics.average_precision_score(labels[:, 1], scores[:, 1])) / 2)
    name, value = score(scores, np.array([0, 1, 1, 0]), multilabel=False)
    assert (name, value) == ("accuracy", pytest.approx(3 / 4))


def test_mean_std_skips_missing_values():
    from audioclip.metrics import mean_std

    mean, std = mean_std([1.0, None, float("nan"), 3.0])
    assert mean == 2.0 and std == pytest.approx(2**0.5)
    mean, std = mean_std([4.0])
    assert mean == 4.0 and np.isnan(std)
    assert all(np.isnan(mean_std([None])))
