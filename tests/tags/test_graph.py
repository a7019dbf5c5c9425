import numpy as np
import scipy.sparse as sp

from trainer.tags.graph import dbscan_groups, enhance, eps_for_target, merge_units


def test_enhancement_mixes_each_tag_with_row_normalised_neighbours():
    v = np.eye(3, dtype=np.float32)
    cooc = sp.csr_matrix(np.array([[9, 2, 0], [2, 9, 1], [0, 1, 9]]))  # diagonal is ignored
    out = enhance(v, cooc, alpha=1.0, self_loop="identity")
    # row 0: (1*e0 + 2*e1) / 3, then unit length
    assert np.allclose(out[0], np.array([1, 2, 0]) / np.sqrt(5), atol=1e-6)
    assert np.allclose(out[1], np.array([2, 1, 1]) / np.sqrt(6), atol=1e-6)
    deg = enhance(v, cooc, alpha=1.0, self_loop="degree")
    # "degree": own vector weighted like all neighbours together -> row 1 = 3*e1 + 2*e0 + 1*e2
    assert np.allclose(deg[1], np.array([2, 3, 1]) / np.sqrt(14), atol=1e-6)


def test_isolated_tag_keeps_its_own_direction_even_without_self_loop():
    v = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out = enhance(v, sp.csr_matrix(np.diag([3, 3])), alpha=0.0, self_loop="identity")
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
