import faiss
import numpy as np
import pytest

from eval.baselines import METHODS, BaselineConfig, BaselineError, train_baseline
from eval.faiss_export import additive_index, export
from eval.scoring import Codebooks, search_aqd
from tests.eval.conftest import brute_scores


@pytest.mark.parametrize("kind", ["additive", "progressive"])
def test_faiss_export_ranking_equals_project_aqd_ranking(kind, tmp_path):
    rng = np.random.default_rng(0)
    cb = rng.standard_normal((4, 256, 16)).astype(np.float32)
    codes = rng.integers(0, 256, (3000, 4)).astype(np.uint8)
    q = rng.standard_normal((25, 16)).astype(np.float32)
    ours_s, ours_i = search_aqd(Codebooks(cb).tables(q), codes, k=50, db_chunk=1000)
    export(cb, codes, tmp_path / "codes.faiss", kind)
    index = faiss.read_index(str(tmp_path / "codes.faiss"))
    d, i = index.search(q, 50)
    assert np.array_equal(i, ours_i)
    np.testing.assert_allclose(d, ours_s, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(index.sa_decode(codes[:5]), Codebooks(cb).decoded(codes[:5]), rtol=1e-5, atol=1e-5)


def test_faiss_export_packs_4_bit_codes():
    rng = np.random.default_rng(1)
    cb = rng.standard_normal((3, 16, 8)).astype(np.float32)
    codes = rng.integers(0, 16, (400, 3)).astype(np.uint8)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    d, _ = additive_index(cb, codes).search(q, 10)
    # identical 12-bit codes tie exactly, and faiss orders ties its own way: compare the scores
    np.testing.assert_allclose(d, search_aqd(Codebooks(cb).tables(q), codes, k=10)[0], rtol=1e-5, atol=1e-5)


def test_faiss_export_refuses_codes_with_the_wrong_m():
    cb = np.zeros((4, 256, 8), np.float32)
    with pytest.raises(ValueError, match=r"shape \(10, 3\).*M=4"):
        additive_index(cb, np.zeros((10, 3), np.uint8))


def test_every_baseline_yields_additive_codes_and_learned_ones_beat_random():
    rng = np.random.default_rng(2)
    # low-rank features so 2 x 8-bit codes can capture most of them; D=10 is not a multiple of M=4
    x = (rng.standard_normal((1000, 3)) @ rng.standard_normal((3, 10))).astype(np.float32)
    cfg = BaselineConfig(lsq_train_iters=3, opq_iters=3)
    err = {}
    for method in METHODS:
        b = train_baseline(method, x, x[:500], x[500:510], m=4, nbits=4, cfg=cfg)
        assert b.db_codes.shape == (500, 4) and b.db_codes.dtype == np.uint8
        assert b.query_codes.shape == (10, 4) and b.codebooks.shape[:2] == (4, 16)
        assert int(b.db_codes.max()) < 16
        rec = Codebooks(b.codebooks).decoded(b.db_codes)[:, :10]
        err[method] = float(((rec - x[:500]) ** 2).sum() / (x[:500] ** 2).sum())
    assert err["random"] > 0.9
    for method in ("pq", "opq", "residual", "lsq"):
        assert err[method] < 0.2, (method, err)


def test_pq_baseline_in_additive_form_decodes_like_faiss_pq():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    b = train_baseline("pq", x, x[:50], x[:2], m=2)
    pq = faiss.ProductQuantizer(8, 2, 8)
    pq.train(x)  # same data and seed -> same k-means
    np.testing.assert_allclose(Codebooks(b.codebooks).decoded(b.db_codes), pq.decode(pq.compute_codes(x[:50])),
                               rtol=1e-4, atol=1e-4)


def test_unknown_baseline_is_named():
    with pytest.raises(ValueError, match="'itq'"):
        train_baseline("itq", np.zeros((10, 4), np.float32), np.zeros((1, 4)), np.zeros((1, 4)), m=2)


def test_opq_and_residual_with_fewer_training_vectors_than_dimensions_are_refused_not_a_crash():
    # faiss's OPQMatrix aborts the process (munmap_chunk) when trained on n < d vectors
    x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    with pytest.raises(BaselineError, match="opq: 40 training vectors for 64 dimensions"):
        train_baseline("opq", x, x[:5], x[:2], m=2)
    with pytest.raises(BaselineError, match="residual: 40 training vectors for 64 dimensions"):
        train_baseline("residual", x, x[:5], x[:2], m=2)
    with pytest.raises(BaselineError, match=r"pq: faiss cannot train it on 40 vectors of 64 dimensions at 2x8 "
                                            r"bits: Number of training points \(40\) should be at least"):
        train_baseline("pq", x, x[:5], x[:2], m=2)
    assert train_baseline("pq", x, x[:5], x[:2], m=2, nbits=4).db_codes.shape == (5, 2)


def _tied_codes(seed, n, m, k, d=16, q=30):
    """Random codebooks and codes in which a block of items shares one code and pairs repeat: the
    ranking's ties (equal codes score equal) sit inside the top-k and at its boundary."""
    rng = np.random.default_rng(seed)
    cb = rng.standard_normal((m, k, d)).astype(np.float32)
    codes = rng.integers(0, k, (n, m)).astype(np.uint8)
    codes[n // 3: n // 3 + 150] = codes[7]
    codes[n // 2: n // 2 + n // 10] = codes[: n // 10]
    return cb, codes, rng.standard_normal((q, d)).astype(np.float32)


@pytest.mark.parametrize("m,k,kind", [(4, 256, "pq"), (8, 16, "fastscan"), (3, 16, "pq"), (2, 10, "fastscan")])
def test_exported_index_ranks_exactly_as_the_projects_aqd_scoring_ties_included(m, k, kind, tmp_path):
    from eval.scoring import AQDSearcher

    cb, codes, q = _tied_codes(10 + m, 4000, m, k)
    brute = brute_scores(q, codes, cb)
    ref = np.argsort(-brute, axis=1, kind="stable")[:, :100]
    assert any(len(np.unique(row)) < 100 for row in np.take_along_axis(brute, ref, 1))  # ties in the top-100
    export(cb, codes, tmp_path / "codes.faiss", kind)
    index = faiss.read_index(str(tmp_path / "codes.faiss"))  # plain D-dim queries: tiling is in the file
    assert index.d == 16 and index.ntotal == 4000
    searcher = AQDSearcher(cb, codes, "faiss", index=index)
    assert searcher.fastscan == (kind == "fastscan")
    s, i = searcher.search(q, 100)
    assert np.array_equal(i, ref)
    np.testing.assert_allclose(s, np.take_along_axis(brute, ref, 1), rtol=1e-5, atol=1e-4)
    if kind == "pq":  # the bare file too: same scores as the project (faiss orders ties its own way)
        d, _ = index.search(q, 100)
        np.testing.assert_allclose(d, s, rtol=1e-5, atol=1e-4)
    else:  # FastScan alone is approximate; the re-ranking made it exact, the exact scan rarely needed
        assert searcher.fallback_rows <= len(q) // 10
        np.testing.assert_allclose(index.search(q, 100)[0], s, atol=0.05 * np.abs(s).max())


def test_fastscan_rows_whose_certificate_fails_are_answered_by_the_exact_scan():
    from eval.scoring import AQDSearcher

    # one 16-word level: 16 distinct scores, ~190 items each; the 66 candidates (rerank=1: k + 16)
    # all share the best score, so nothing certifies that the items left out score lower
    cb, codes, q = _tied_codes(20, 3000, 1, 16)
    searcher = AQDSearcher(cb, codes, "faiss", fastscan=True, rerank=1)
    _, i = searcher.search(q, 50)
    assert np.array_equal(i, np.argsort(-brute_scores(q, codes, cb), axis=1, kind="stable")[:, :50])
    assert searcher.fallback_rows == len(q)


def test_searcher_scans_with_the_tiled_pq_index_by_default():
    from eval.faiss_export import bare
    from eval.scoring import AQDSearcher

    cb, codes, _ = _tied_codes(30, 100, 4, 256)
    assert isinstance(bare(AQDSearcher(cb, codes).index), faiss.IndexPQ)
    assert isinstance(bare(AQDSearcher(cb[:, :16], codes % 16, fastscan=True).index), faiss.IndexPQFastScan)


def test_projected_baselines_keep_the_inner_product_reading_of_the_mapped_space():
    """A baseline behind a projection A (D x k) folds its codewords back as A c, so it scores
    q·(A c) = (Aᵀq)·c: exactly what the same quantizer trained on the mapped features gives for the
    mapped query, i.e. the same AQD reading as every other row."""
    from eval.baselines import projection, train_baseline

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 24)).astype(np.float32)
    tags = [[f"t{i % 7}", f"u{i % 3}"] if i % 5 else [] for i in range(400)]
    for kind in ("pca", "tags"):
        a = projection(kind, x, 8, tags)
        assert a.shape[0] == 24 and 1 <= a.shape[1] <= 8
        folded = train_baseline("pq", x, x[:50], x[:5], 2, 4, project=a)
        direct = train_baseline("pq", x @ a, x[:50] @ a, x[:5] @ a, 2, 4)
        assert np.array_equal(folded.db_codes, direct.db_codes)

        def scores(b, q):
            recon = b.codebooks[np.arange(2)[None, :], b.db_codes.astype(int)].sum(1)
            return b.pad_queries(q) @ recon.T

        np.testing.assert_allclose(scores(folded, x[:5]), scores(direct, x[:5] @ a), rtol=1e-4, atol=1e-4)
    pca = projection("pca", x, 8)
    np.testing.assert_allclose(pca.T @ pca, np.eye(8), atol=1e-5)  # orthonormal principal directions
    assert projection("none", x, 8) is None


def test_baselines_on_few_vectors_train_silently_and_the_report_says_so_once(capfd):
    """faiss's k-means prints its 'please provide at least 39·K training points' line per sub-quantizer
    and iteration (dozens for OPQ); the baselines silence it without changing the clustering (the
    threshold only gates the message) and evaluate states it once as a note."""
    from eval.baselines import few_points_note

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    for method in ("pq", "opq", "residual"):
        b = train_baseline(method, x, x[:20], x[:5], 2, 8)
        assert b.db_codes.shape == (20, 2)
    assert capfd.readouterr().err == ""
    assert few_points_note(300, 8, ["pq", "opq", "lsq", "random"]) == (
        "pq, opq: trained on 300 vectors, fewer than the 9,984 faiss's k-means asks for (39 per centroid, "
        "K=256); they are compared as faiss trains them at this size")
    assert few_points_note(624, 4, ["pq", "residual"]) is None  # 39 x 16: enough
    assert few_points_note(300, 8, ["lsq", "random"]) is None  # no k-means among them
