import numpy as np
import pytest

from eval.metrics import (average_precision, mean_ap, merge_top_k, ranking_metrics, relevance, top_k)


def test_ap_on_hand_made_rankings_matches_the_formula_normalised_within_top_k():
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=bool)
    ap, r_q = average_precision(rel)
    np.testing.assert_allclose(ap, [5 / 6, 0.0, 23 / 36])
    assert r_q.tolist() == [2, 0, 3]
    assert mean_ap(ap, r_q, "skip") == pytest.approx(53 / 72)
    assert mean_ap(ap, r_q, "zero") == pytest.approx(53 / 108)


def test_unknown_convention_is_refused_by_name():
    with pytest.raises(ValueError, match="'both'"):
        mean_ap(np.zeros(1), np.zeros(1, dtype=int), "both")


def test_relevance_means_sharing_at_least_one_label():
    q = np.array([[1, 0, 1], [0, 0, 0]], dtype=np.uint8)
    db = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    assert relevance(q, db).tolist() == [[True, False, True], [False, False, False]]


def test_top_k_breaks_ties_by_database_index_also_at_the_boundary():
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0, 9.0]])
    s, i = top_k(scores, 2)
    assert i.tolist() == [[1, 2], [5, 0]]
    assert s.tolist() == [[2.0, 2.0], [9.0, 5.0]]
    s, i = top_k(scores, 6, offset=10)
    assert i[0].tolist() == [11, 12, 13, 15, 10, 14]


def test_top_k_agrees_with_a_full_stable_sort_on_heavily_tied_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(20, 300)).astype(np.float32)
    _, i = top_k(scores, 50)
    ref = np.argsort(-scores, axis=1, kind="stable")[:, :50]
    assert np.array_equal(i, ref)


def test_merging_chunk_top_lists_equals_top_k_of_the_whole_row():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(5, 40)).astype(np.float32)
    merged = merge_top_k(top_k(scores[:, :25], 7), top_k(scores[:, 25:], 7, offset=25), 7)
    whole = top_k(scores, 7)
    assert np.array_equal(merged[1], whole[1]) and np.array_equal(merged[0], whole[0])


def test_ranking_metrics_precision_and_pr_curve_on_a_known_ranking():
    rel = np.array([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=bool)
    m = ranking_metrics(rel, total_relevant=np.array([4, 3]), precision_ks=(1, 4),
                        cutoffs=np.array([1, 2, 4]))
    assert m.precision_at == {1: 0.5, 4: pytest.approx((2 / 4 + 3 / 4) / 2)}
    assert m.pr_precision == pytest.approx([0.5, 0.5, 0.625])
    assert m.pr_recall == pytest.approx([(1 / 4 + 0) / 2, (1 / 4 + 1 / 3) / 2, (2 / 4 + 1) / 2])
    assert m.map_skip == pytest.approx((5 / 6 + 23 / 36) / 2)
    assert m.queries_without_relevant == 0
