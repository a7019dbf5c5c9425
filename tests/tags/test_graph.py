import pytest
import numpy as np
import scipy.sparse as sp

from shards.config import ConfigError, from_dict
from trainer.tags import TagConfig
from trainer.tags.graph import (GraphConfig, dbscan_groups, enhance, enhance_counts, enhance_ppmi,
                                eps_for_target, merge_units, ppmi_weights)


def test_enhancement_mixes_each_tag_with_row_normalised_neighbours():
    v = np.eye(3, dtype=np.float32)
    cooc = sp.csr_matrix(np.array([[9, 2, 0], [2, 9, 1], [0, 1, 9]]))  # diagonal is ignored
    out = enhance_counts(v, cooc, alpha=1.0, self_loop="identity")
    # row 0: (1*e0 + 2*e1) / 3, then unit length
    assert np.allclose(out[0], np.array([1, 2, 0]) / np.sqrt(5), atol=1e-6)
    assert np.allclose(out[1], np.array([2, 1, 1]) / np.sqrt(6), atol=1e-6)
    deg = enhance_counts(v, cooc, alpha=1.0, self_loop="degree")
    # "degree": own vector weighted like all neighbours together -> row 1 = 3*e1 + 2*e0 + 1*e2
    assert np.allclose(deg[1], np.array([2, 3, 1]) / np.sqrt(14), atol=1e-6)


def test_isolated_tag_keeps_its_own_direction_even_without_self_loop():
    v = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out = enhance_counts(v, sp.csr_matrix(np.diag([3, 3])), alpha=0.0, self_loop="identity")
    assert np.allclose(out, v)


def test_dbscan_merges_near_duplicates_and_keeps_distinct_tags_apart():
    x = np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [0, 0.999, 0.04], [0, 0, 1]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = dbscan_groups(x, eps=0.01, min_samples=1)
    groups, emb = merge_units(labels, x)
    assert groups == [[0, 1], [2, 3], [4]]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1)
    assert np.allclose(emb[2], [0, 0, 1])
    mean01 = (x[0] + x[1]) / np.linalg.norm(x[0] + x[1])
    assert np.allclose(emb[0], mean01, atol=1e-6)


def test_noise_points_become_singletons_when_min_samples_exceeds_one():
    x = np.array([[1, 0], [0.9999, 0.01], [0.99995, 0.005], [0, 1]], dtype=np.float32)
    labels = dbscan_groups(x / np.linalg.norm(x, axis=1, keepdims=True), eps=0.01, min_samples=3)
    assert len(set(labels[:3])) == 1 and labels[3] not in labels[:3]


def test_eps_bisection_reaches_the_target_number_of_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    eps = eps_for_target(x, target=150, min_samples=1)
    assert len(np.unique(dbscan_groups(x, eps, 1))) == 150


def test_ppmi_weights_equal_a_hand_computation_on_three_tags():
    # 20 images; image frequencies on the diagonal: a on 4, b on 5, c on 8
    cooc = sp.csr_matrix(np.array([[4, 3, 3], [3, 5, 2], [3, 2, 8]]))
    w = ppmi_weights(cooc, n_images=20).toarray()
    ab, ac = np.log(3 * 20 / (4 * 5)), np.log(3 * 20 / (4 * 8))   # log 3, log 1.875
    bc = np.log(2 * 20 / (5 * 8))                                  # log 1 = 0: no weight
    assert bc == 0
    assert np.allclose(w, [[0, ab / (ab + ac), ac / (ab + ac)], [1, 0, 0], [1, 0, 0]])
    # a tag on every image has PMI exactly 0 with every tag: its row and column are all zero
    every = ppmi_weights(sp.csr_matrix(np.array([[4, 3, 4], [3, 5, 5], [4, 5, 10]])), n_images=10).toarray()
    assert np.allclose(every, [[0, 1, 0], [1, 0, 0], [0, 0, 0]])


def _noise_and_two_synonym_pairs():
    """Tags n1, n2 on every image; synonym pair a1/a2 on 10 images, b1/b2 on 10 others."""
    lists = [["n1", "n2", "a1", "a2"]] * 10 + [["n1", "n2", "b1", "b2"]] * 10
    names = ["n1", "n2", "a1", "a2", "b1", "b2"]
    x = np.array([[t in l for t in names] for l in lists], dtype=np.float64)
    v = np.array([[0, 0, 1, 0], [0, 0, 0, 1], [1, .2, 0, 0], [1, -.2, 0, 0], [.2, 1, 0, 0], [-.2, 1, 0, 0]])
    return sp.csr_matrix(x.T @ x), (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_a_tag_on_every_image_is_not_merged_with_unrelated_synonym_groups():
    cooc, v = _noise_and_two_synonym_pairs()
    ppmi = enhance(v, cooc, GraphConfig(weights="ppmi", mix=0.5), n_images=20)
    # noise has PMI 0 with everything: it keeps its own vector and lends none to the synonyms
    assert np.allclose(ppmi[:2], v[:2], atol=1e-6)
    assert dbscan_groups(ppmi, eps=0.3, min_samples=1).tolist() == [0, 1, 2, 2, 3, 3]
    # the methods.md proposal on raw counts pulls every synonym towards the noise tags' vectors
    # (10 co-occurrences each against a self weight of 1), and at the same eps all six chain together
    counts = enhance(v, cooc, GraphConfig(weights="counts", alpha=1.0), n_images=20)
    assert dbscan_groups(counts, eps=0.3, min_samples=1).tolist() == [0] * 6


def test_synonyms_that_always_co_occur_are_pulled_together_by_the_computed_amount():
    # s1 and s2 always together (4 images), n on all 8 images; v(s1) ⟂ v(s2) ⟂ v(n)
    cooc = sp.csr_matrix(np.array([[4, 4, 4], [4, 4, 4], [4, 4, 8]]))
    v = np.eye(3, dtype=np.float32)
    out = enhance_ppmi(v, cooc, n_images=8, mix=0.25)
    # Â(s1) = e_s2 only (PMI(s, n) = 0): ṽ_s1 ∝ 0.75 e1 + 0.25 e2, ṽ_s2 ∝ 0.25 e1 + 0.75 e2
    # cos = (2 * 0.75 * 0.25) / (0.75² + 0.25²) = 0.375 / 0.625 = 0.6 (was 0)
    assert float(out[0] @ out[1]) == pytest.approx(0.6, abs=1e-6)
    assert np.allclose(out[2], v[2])
    # mix = 0.5 makes an exclusive pair identical; mix = 0 leaves every vector as it was
    half = enhance_ppmi(v, cooc, n_images=8, mix=0.5)
    assert float(half[0] @ half[1]) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(enhance_ppmi(v, cooc, n_images=8, mix=0.0), v)


def test_unknown_weighting_or_mix_outside_unit_interval_is_refused_naming_the_key():
    v, cooc = np.eye(2, dtype=np.float32), sp.csr_matrix(np.array([[2, 1], [1, 2]]))
    with pytest.raises(ValueError, match="graph.weights"):
        enhance(v, cooc, GraphConfig(weights="pmi"), n_images=3)
    with pytest.raises(ValueError, match="graph.mix"):
        enhance_ppmi(v, cooc, n_images=3, mix=1.5)
    with pytest.raises(ConfigError, match=r"^graph.mix: must be in \[0, 1\], got 1.5$"):  # when the config loads
        from_dict(TagConfig, {"graph": {"mix": 1.5}})
