"""Retrieval metrics: hand-computed rankings, ties, leave-one-out, and agreement with scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from crossgap_index.evaluation import metrics
from crossgap_index.evaluation.metrics import rank_order, retrieval_metrics


def test_hand_computed_ranking():
    # ranking by score: g0 (rel), g1, g2 (rel), g3, g4 -> hits at ranks 1 and 3, R = 2
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    result = retrieval_metrics(scores, ["a"], ["a", "b", "a", "c", "b"])
    assert result.per_query["map"][0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result.per_query["map_at_r"][0] == pytest.approx((1 / 1) / 2)  # only rank 1 is within R
    assert result.per_query["r_precision"][0] == pytest.approx(1 / 2)
    assert result.per_query["recall_at_1"][0] == 1.0


def test_second_query_and_means():
    scores = np.array([[0.1, 0.9, 0.2], [0.3, 0.2, 0.1]])
    # q0 (label 1): order g1 (0), g2 (1), g0 (0) -> AP 1/2, mAP@R 0, R-precision 0, Recall@1 0
    # q1 (label 0): order g0 (0), g1 (0), g2 (1) -> AP 1, mAP@R 1, R-precision 1, Recall@1 1
    result = retrieval_metrics(scores, [1, 0], [0, 0, 1])
    np.testing.assert_allclose(result.per_query["map"], [1 / 2, 1])
    np.testing.assert_allclose(result.per_query["map_at_r"], [0, 1])
    np.testing.assert_allclose(result.per_query["r_precision"], [0, 1])
    np.testing.assert_allclose(result.per_query["recall_at_1"], [0, 1])
    assert result.means()["map"] == pytest.approx(3 / 4)
    assert result.n_queries == 2 and result.n_skipped == 0


def test_ties_are_broken_by_gallery_index():
    scores = np.zeros((1, 4))
    result = retrieval_metrics(scores, ["a"], ["b", "a", "b", "a"])  # order 0, 1, 2, 3
    assert result.per_query["map"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.per_query["recall_at_1"][0] == 0.0
    assert rank_order(np.array([[0.5, 1.0, 0.5, 1.0]])).tolist() == [[1, 3, 0, 2]]


def test_leave_one_out_equals_removing_the_item():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 5))
    labels = rng.integers(0, 3, 12)
    scores = feats @ feats.T
    loo = retrieval_metrics(scores, labels, labels, np.eye(12, dtype=bool))
    for q in range(12):
        keep = np.arange(12) != q
        alone = retrieval_metrics(scores[q : q + 1, keep], labels[q : q + 1], labels[keep])
        for name, values in loo.per_query.items():
            np.testing.assert_allclose(values[q], alone.per_query[name][0])


def test_query_without_relevant_items_is_skipped():
    scores = np.array([[0.9, 0.1], [0.5, 0.4]])
    result = retrieval_metrics(scores, ["a", "z"], ["a", "b"])
    assert np.isnan(result.per_query["map"][1])
    assert result.n_queries == 1 and result.n_skipped == 1
    assert result.means() == {"map": 1.0, "map_at_r": 1.0, "r_precision": 1.0, "recall_at_1": 1.0}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_average_precision_agrees_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(25, 60))
    query_labels, gallery_labels = rng.integers(0, 4, 25), rng.integers(0, 4, 60)
    result = retrieval_metrics(scores, query_labels, gallery_labels)
    for q in range(25):
        relevant = gallery_labels == query_labels[q]
        assert result.per_query["map"][q] == pytest.approx(average_precision_score(relevant, scores[q]), abs=1e-12)


def test_chunked_ranking_gives_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(30, 20))
    labels = rng.integers(0, 3, 30)
    exclude = rng.random((30, 20)) < 0.1
    whole = retrieval_metrics(scores, labels, labels[:20], exclude)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 45)  # two rows per chunk
    chunked = retrieval_metrics(scores, labels, labels[:20], exclude)
    for name in whole.per_query:
        np.testing.assert_array_equal(whole.per_query[name], chunked.per_query[name])


def test_bad_shapes_and_values_are_refused():
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(np.zeros((2, 3)), [0], [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0]]), [0], [0, 1])
    with pytest.raises(ValueError, match="exclude"):
        retrieval_metrics(np.zeros((1, 2)), [0], [0, 1], np.zeros((2, 2), bool))
