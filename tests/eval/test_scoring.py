import numpy as np

from eval.metrics import top_k
from eval.scoring import Codebooks, aqd_scores, search_aqd, search_features
from tests.eval.conftest import brute_scores


def _data(seed=0, n=500, q=7, m=4, k=16, d=12):
    rng = np.random.default_rng(seed)
    cb = rng.standard_normal((m, k, d)).astype(np.float32)
    codes = rng.integers(0, k, size=(n, m)).astype(np.uint8)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    return cb, codes, queries


def test_aqd_equals_brute_force_decode_and_dot_product():
    cb, codes, queries = _data()
    lut = Codebooks(cb).tables(queries)
    brute = queries @ Codebooks(cb).decoded(codes).T
    np.testing.assert_allclose(aqd_scores(lut, codes), brute, rtol=1e-5, atol=1e-5)
    # a prefix of the code decodes the first levels only (progressive codes)
    np.testing.assert_allclose(aqd_scores(lut, codes[:, :2]), queries @ Codebooks(cb).decoded(codes[:, :2]).T,
                               rtol=1e-5, atol=1e-5)


def test_chunked_aqd_search_equals_full_sort_of_brute_force_scores():
    cb, codes, queries = _data(1)
    brute = brute_scores(queries, codes, cb)
    s, i = search_aqd(Codebooks(cb).tables(queries), codes, k=30, db_chunk=64)
    ref = np.argsort(-brute, axis=1, kind="stable")[:, :30]
    assert np.array_equal(i, ref)
    np.testing.assert_allclose(s, np.take_along_axis(brute, ref, 1), rtol=1e-5, atol=1e-5)


def test_chunked_search_with_massive_ties_is_deterministic_by_index():
    # one 4-word codebook: only 4 distinct scores over 500 items
    cb, codes, queries = _data(2, m=1, k=4)
    s, i = search_aqd(Codebooks(cb).tables(queries), codes, k=100, db_chunk=37)
    full = aqd_scores(Codebooks(cb).tables(queries), codes)
    assert np.array_equal(i, top_k(full, 100)[1])
    assert np.array_equal(i, np.argsort(-full, axis=1, kind="stable")[:, :100])


def test_feature_search_ranks_by_raw_inner_product():
    rng = np.random.default_rng(3)
    q, db = rng.standard_normal((4, 8)), rng.standard_normal((90, 8))
    _, i = search_features(q, db, k=90, db_chunk=20)
    assert np.array_equal(i, np.argsort(-(q.astype(np.float32) @ db.astype(np.float32).T), 1, kind="stable"))


def test_faiss_backed_searcher_equals_the_torch_scan_also_with_massive_ties():
    from eval.scoring import AQDSearcher

    for seed, m, k in ((4, 3, 256), (5, 1, 4)):  # real-valued scores; 4 distinct scores only
        cb, codes, queries = _data(seed, n=700, m=m, k=k)
        a = AQDSearcher(cb, codes, "faiss", db_chunk=100).search(queries, 60)
        b = AQDSearcher(cb, codes, "torch", db_chunk=100).search(queries, 60)
        assert np.array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
        brute = brute_scores(queries, codes, cb)
        assert np.array_equal(a[1], np.argsort(-brute, axis=1, kind="stable")[:, :60])


def test_tied_rows_reranked_in_batches_equal_the_full_stable_sort():
    from eval.scoring import AQDSearcher, TIE_ROWS

    # 8 distinct scores, 2.5 batches of tied query rows: every row goes through the exact routine
    cb, codes, queries = _data(6, n=900, q=2 * TIE_ROWS + TIE_ROWS // 2, m=1, k=8)
    ref = np.argsort(-brute_scores(queries, codes, cb), axis=1, kind="stable")[:, :50]
    for backend in ("torch", "faiss"):
        _, i = AQDSearcher(cb, codes, backend, db_chunk=300).search(queries, 50)
        assert np.array_equal(i, ref), backend
