"""Quantizers: ICM, the ridge LS update from statistics, progressive codes, persistence, look-ups."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.quantizers import (AdditiveQuantizer, CodebookStatistics, ProgressiveQuantizer,
                                distortion, icm_encode, load_quantizer, solve_codebooks)


def clustered(n: int, d: int, seed: int, centers: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centers, d, generator=g)
    return c[torch.randint(centers, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


def one_hot(codes: torch.Tensor, K: int) -> torch.Tensor:
    N, M = codes.shape
    H = torch.zeros(N, M * K, dtype=torch.float64)
    H[torch.arange(N)[:, None], codes.long() + torch.arange(M) * K] = 1
    return H


@pytest.mark.parametrize("weighted", [False, True])
def test_icm_with_one_codebook_is_exhaustive_search(weighted):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64)
    C = torch.randn(1, 32, 12, generator=g, dtype=torch.float64)
    V = torch.randn(20, 12, generator=g, dtype=torch.float64) if weighted else None
    err = x[:, None, :] - C[0][None]
    if weighted:
        err = err @ V.T
    exhaustive = (err ** 2).sum(-1).argmin(1)
    codes = icm_encode(x, C, V, sweeps=3)
    assert torch.equal(codes[:, 0], exhaustive)


@pytest.mark.parametrize("weighted", [False, True])
def test_each_icm_sweep_never_increases_the_distortion(weighted):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 16, generator=g, dtype=torch.float64)
    C = torch.randn(4, 16, 16, generator=g, dtype=torch.float64)
    V = torch.randn(24, 16, generator=g, dtype=torch.float64) if weighted else None
    flat = C.reshape(-1, 16)
    totals = []
    for sweeps in range(1, 6):
        # Same seed: the first s-1 block orders are shared, so sweeps=s continues sweeps=s-1.
        codes = icm_encode(x, C, V, sweeps, torch.Generator().manual_seed(7), batch_size=128)
        recon = one_hot(codes, 16) @ flat
        per_sample = distortion(x, recon, V)
        if totals:
            assert torch.all(per_sample <= previous + 1e-9)
        previous = per_sample
        totals.append(float(per_sample.sum()))
    assert totals[-1] < totals[0]  # ICM after the greedy sweep really improves


def test_icm_result_does_not_depend_on_the_batch_size():
    g = torch.Generator().manual_seed(2)
    x, C = torch.randn(300, 8, generator=g), torch.randn(3, 16, 8, generator=g)
    a = icm_encode(x, C, None, 3, torch.Generator().manual_seed(0), batch_size=300)
    b = icm_encode(x, C, None, 3, torch.Generator().manual_seed(0), batch_size=7)
    assert torch.equal(a, b)


def test_ls_update_equals_numpy_lstsq_on_the_ridge_augmented_system():
    g = torch.Generator().manual_seed(3)
    M, K, D, N, ridge = 3, 8, 5, 200, 1e-3
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    codes = torch.randint(K, (N, M), generator=g)
    stats = CodebookStatistics.accumulate(x, codes, K)
    C, dead = solve_codebooks(stats, M, K, ridge)
    H = one_hot(codes, K).numpy()
    A = np.vstack([H, np.sqrt(ridge) * np.eye(M * K)])
    b = np.vstack([x.numpy(), np.zeros((M * K, D))])
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(C.reshape(M * K, D).numpy(), expected, rtol=1e-9, atol=1e-10)
    assert np.array_equal(stats.G.numpy(), H.T @ H)  # bincount build equals the dense product
    assert not dead.any()


def test_statistics_over_four_chunks_solve_to_the_one_shot_codebooks():
    x = clustered(1200, 10, seed=4)
    q = AdditiveQuantizer(10, M=2, K=16)
    q.init_kmeans(x)
    codes = q.encode(x)
    whole = q.statistics(x, codes)
    chunks = [q.statistics(x[i:i + 300], codes[i:i + 300]) for i in range(0, 1200, 300)]
    summed = chunks[0] + chunks[1] + chunks[2] + chunks[3]
    assert summed.n == whole.n == 1200
    assert torch.equal(summed.G, whole.G)
    C_whole, _ = solve_codebooks(whole, 2, 16)
    C_sum, _ = solve_codebooks(summed, 2, 16)
    torch.testing.assert_close(C_sum, C_whole, rtol=1e-12, atol=1e-12)


def test_flat_statistics_round_trip_and_sum_like_an_all_reduce():
    g = torch.Generator().manual_seed(5)
    M, K, D = 2, 8, 6
    x = torch.randn(100, D, generator=g)
    codes = torch.randint(K, (100, M), generator=g)
    whole = CodebookStatistics.accumulate(x, codes, K)
    back = CodebookStatistics.from_flat(whole.flatten(), M, K, D)
    assert torch.equal(back.G, whole.G) and torch.equal(back.R, whole.R) and back.n == 100
    halves = [CodebookStatistics.accumulate(x[s], codes[s], K) for s in (slice(0, 37), slice(37, 100))]
    summed = halves[0].flatten() + halves[1].flatten()
    assert summed.dtype == torch.float64 and summed.numel() == (M * K) ** 2 + M * K * D + 1
    torch.testing.assert_close(summed, whole.flatten(), rtol=1e-13, atol=1e-12)
    with pytest.raises(ValueError, match="must have 353 values"):
        CodebookStatistics.from_flat(summed[:-1], M, K, D)


def test_dead_codewords_keep_their_previous_values():
    x = clustered(400, 8, seed=6)
    q = AdditiveQuantizer(8, M=2, K=16)
    q.init_kmeans(x)
    before = q.codebooks.clone()
    codes = q.encode(x).long()
    codes[:, 0] %= 8  # nobody chooses codewords 8..15 of codebook 0
    dead = q.solve(q.statistics(x, codes))
    assert dead[0, 8:].all() and not dead[0, :8].any()
    assert torch.equal(q.codebooks[0, 8:], before[0, 8:])
    assert not torch.equal(q.codebooks[0, :8], before[0, :8])
    assert torch.equal(q.statistics(x, codes).counts(2)[0, 8:], torch.zeros(8, dtype=torch.float64))


def test_kmeans_init_is_block_diagonal_and_ls_iterations_reduce_the_error():
    x = clustered(2000, 12, seed=7)
    q = AdditiveQuantizer(12, M=3, K=16)
    q.init_kmeans(x, seed=0)
    for m in range(3):
        outside = torch.ones(12, dtype=torch.bool)
        outside[4 * m: 4 * m + 4] = False
        assert torch.count_nonzero(q.codebooks[m][:, outside]) == 0
        assert torch.count_nonzero(q.codebooks[m][:, ~outside]) > 0
    with q.block_orders_from(torch.Generator().manual_seed(0)):  # a trainer's stream of block orders
        err_init = float(distortion(x, q.decode(q.encode(x))).mean())
        for _ in range(3):
            q.solve(q.statistics(x, q.encode(x)))
        err_ls = float(distortion(x, q.decode(q.encode(x))).mean())
    assert err_ls < 0.9 * err_init


def test_progressive_encode_is_argmax_cosine_on_hand_computed_residuals():
    q = ProgressiveQuantizer(2, M=2, K=3)
    with torch.no_grad():
        q.codebooks.copy_(torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]],
                                        [[0.5, 0.0], [0.0, -0.5], [0.0, 0.1]]]))
    x = torch.tensor([[3.0, 0.5], [0.2, 1.0], [-2.0, -1.5]])
    # level 1 (cosines): [3,.5] -> c0 ; [.2,1] -> c1 ; [-2,-1.5] -> c2
    # residuals: [2,.5] -> c0 ; [.2,-1] -> c1 ; [-1,-.5] -> cos: c0 -.89, c1 .45, c2 .45 -> c1 (first max)
    expected = torch.tensor([[0, 0], [1, 1], [2, 1]], dtype=torch.uint8)
    assert torch.equal(q.encode(x), expected)
    out = q(x)
    assert torch.equal(out.codes, expected)
    torch.testing.assert_close(out.hard[1], torch.tensor([[1.5, 0.0], [0.0, 1.5], [-1.0, -1.5]]))


def test_progressive_prefix_codes_decode_to_prefix_sums():
    x = clustered(600, 16, seed=8)
    q = ProgressiveQuantizer(16, M=4, K=32).fit(x, seed=0)
    codes = q.encode(x)
    C = q.codebooks.detach()
    out = q(x)
    for level in range(1, 5):
        by_hand = sum(C[m][codes[:, m].long()] for m in range(level))
        torch.testing.assert_close(q.decode(codes[:, :level]), by_hand)
        torch.testing.assert_close(out.hard[level - 1], by_hand)
    errors = [float(distortion(x, q.decode(codes[:, :level])).mean()) for level in range(1, 5)]
    assert errors == sorted(errors, reverse=True) and errors[3] < 0.5 * errors[0]


def test_progressive_soft_path_with_large_gamma_approaches_the_hard_path():
    x = clustered(200, 8, seed=9)
    q = ProgressiveQuantizer(8, M=2, K=16).fit(x)
    q.gamma = 1.0
    with torch.no_grad():
        gap_1 = float((q(x).soft[1] - q(x).hard[1]).abs().mean())
        q.gamma = 1e4
        gap_big = float((q(x).soft[1] - q(x).hard[1]).abs().mean())
    assert gap_big < 1e-3 < gap_1


@pytest.mark.parametrize("kind", ["additive", "progressive"])
def test_save_load_round_trip_gives_identical_codes_and_decodes(kind, tmp_path):
    x = clustered(800, 20, seed=10)
    if kind == "additive":  # a metric and ICM settings of its own: saved, so the codes come back
        V = torch.randn(7, 20, generator=torch.Generator().manual_seed(2))
        q = AdditiveQuantizer(20, M=2, K=32, icm_sweeps=2, icm_restarts=2,
                              weights=V, seed=3).fit(x, iterations=2)
    else:
        q = ProgressiveQuantizer(20, M=3, K=32, gamma=5.0).fit(x)
    q.save(tmp_path / "q.npz")
    back = load_quantizer(tmp_path / "q.npz")
    assert type(back) is type(q) and back.kind == kind and (back.M, back.K, back.D) == (q.M, q.K, 20)
    assert torch.equal(back.encode(x), q.encode(x))  # one signature, encode(x), for both kinds
    assert torch.equal(back.decode(q.encode(x)), q.decode(q.encode(x)))
    if kind == "additive":
        assert torch.equal(back.weights, V) and (back.icm_sweeps, back.icm_restarts, back.seed) == (2, 2, 3)
        plain = AdditiveQuantizer(20, M=2, K=32, icm_sweeps=2, icm_restarts=2, seed=3)
        plain.codebooks, plain.is_trained = q.codebooks.clone(), True
        assert not torch.equal(plain.encode(x), q.encode(x))  # the metric changes the codes: it had to travel
    assert type(q).load(tmp_path / "q.npz").kind == kind
    other = ProgressiveQuantizer if kind == "additive" else AdditiveQuantizer
    with pytest.raises(ValueError, match=f"holds a '{kind}' quantizer"):
        other.load(tmp_path / "q.npz")


def test_load_names_the_file_that_is_not_a_quantizer(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a quantizer file"):
        load_quantizer(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: cannot read"):
        load_quantizer(tmp_path / "junk.npz")


@pytest.mark.parametrize("kind", ["additive", "progressive"])
def test_lut_contracted_with_one_hot_codes_equals_query_dot_decode(kind):
    x = clustered(500, 10, seed=11)
    q = (AdditiveQuantizer(10, 3, 16).fit(x, iterations=1) if kind == "additive"
         else ProgressiveQuantizer(10, 3, 16).fit(x))
    queries = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    codes = q.encode(x[:50])
    table = q.lut(queries)
    assert table.shape == (7, 3, 16)
    H = one_hot(codes, 16).float().reshape(50, 3, 16)
    torch.testing.assert_close(torch.einsum("qmk,nmk->qn", table, H), queries @ q.decode(codes).T,
                               rtol=1e-5, atol=1e-5)


def test_numpy_inputs_are_accepted_and_bad_shapes_name_the_argument():
    x = clustered(300, 6, seed=12)
    q = AdditiveQuantizer(6, 2, 8)
    with pytest.raises(RuntimeError, match="not trained"):
        q.encode(x)
    q.fit(x.numpy(), iterations=1)
    assert torch.equal(q.encode(x.numpy()), q.encode(x))
    assert q.decode(q.encode(x).numpy()).shape == (300, 6)
    with pytest.raises(ValueError, match="x: expected dimension 6, got 5"):
        q.encode(x[:, :5])
    with pytest.raises(ValueError, match=r"codes: values must lie in \[0, 8\)"):
        q.decode(np.full((2, 2), 9))
    with pytest.raises(ValueError, match="weights: expected V of shape"):
        AdditiveQuantizer(6, 2, 8, weights=np.ones((4, 5)))


def test_cached_icm_tables_follow_codebook_and_weight_changes():
    x = clustered(400, 8, seed=13)
    q = AdditiveQuantizer(8, 2, 16).fit(x, iterations=1)
    V = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    fresh = lambda V: icm_encode(x, q.codebooks, V, 3, torch.Generator().manual_seed(0)).to(torch.uint8)  # noqa: E731

    def encode(V):
        q.weights = V
        return q.encode(x)

    assert torch.equal(encode(V), fresh(V))
    assert torch.equal(encode(V.clone()), fresh(V))  # equal V: reused
    assert torch.equal(encode(3 * V[[1, 0, 2, 3, 4]] + 1), fresh(3 * V[[1, 0, 2, 3, 4]] + 1))
    assert torch.equal(encode(None), fresh(None))
    with torch.no_grad():
        q.codebooks[0] = q.codebooks[0].flip(0)  # in place: the version counter moves
    assert torch.equal(encode(None), fresh(None))
    q.solve(q.statistics(x, q.encode(x)))  # replaced
    assert torch.equal(encode(V), fresh(V))


def test_first_icm_sweep_is_greedy_on_the_residual_in_the_drawn_block_order():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    C = torch.randn(3, 8, 6, generator=g, dtype=torch.float64)
    order = torch.randperm(3, generator=torch.Generator().manual_seed(5)).tolist()
    r, expected = x.clone(), torch.zeros(200, 3, dtype=torch.long)
    for m in order:  # empty codes: each block sees the residual of the blocks already chosen
        expected[:, m] = ((r[:, None, :] - C[m][None]) ** 2).sum(-1).argmin(1)
        r -= C[m][expected[:, m]]
    assert torch.equal(icm_encode(x, C, None, 1, torch.Generator().manual_seed(5)), expected)


def test_progressive_forward_sends_gradients_to_codebooks_through_soft_and_hard_paths():
    x = clustered(64, 8, seed=15)
    q = ProgressiveQuantizer(8, M=2, K=16)
    out = q(x)
    out.soft[1].pow(2).sum().backward()
    assert torch.count_nonzero(q.codebooks.grad) == q.codebooks.numel()  # softmax touches every codeword
    q.codebooks.grad = None
    q(x).hard[0].pow(2).sum().backward()
    used = torch.unique(out.codes[:, 0].long())
    touched = q.codebooks.grad[0].abs().sum(1) > 0
    assert torch.equal(torch.nonzero(touched).flatten(), used)


@pytest.mark.parametrize("weighted", [False, True])
def test_icm_restarts_keep_each_samples_best_code(weighted):
    g = torch.Generator().manual_seed(16)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64)
    C = torch.randn(4, 16, 16, generator=g, dtype=torch.float64)
    V = torch.randn(24, 16, generator=g, dtype=torch.float64) if weighted else None
    err = lambda codes: distortion(x, one_hot(codes, 16) @ C.reshape(-1, 16), V)  # noqa: E731
    seed = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    one = icm_encode(x, C, V, 3, seed())
    many = icm_encode(x, C, V, 3, seed(), restarts=4)
    # restart r uses draws 3r .. 3r+2 of the same order stream: rebuild each run by hand
    runs = []
    for r in range(4):
        rg = seed()
        for _ in range(3 * r):
            torch.randperm(4, generator=rg)
        runs.append(err(icm_encode(x, C, V, 3, rg)))
    torch.testing.assert_close(err(many), torch.stack(runs).min(0).values, rtol=1e-12, atol=1e-9)
    assert torch.all(err(many) <= err(one) + 1e-9) and float(err(many).sum()) < float(err(one).sum())


def test_dead_codewords_are_reseeded_from_the_worst_coded_rows_as_their_residuals():
    g = torch.Generator().manual_seed(5)
    q = AdditiveQuantizer(3, M=2, K=4)
    q.codebooks = torch.randn(2, 4, 3, generator=g)
    q.is_trained = True
    x = torch.randn(50, 3, generator=g) * 3
    old = q.codebooks.clone()
    codes = q.encode(x).long()
    err = ((x - q.decode(codes)) ** 2).sum(1)
    worst = torch.argsort(err, descending=True, stable=True)
    dead = torch.zeros(2, 4, dtype=torch.bool)
    dead[0, 2] = dead[1, 1] = True
    assert q.reseed_dead(dead, x, generator=torch.Generator().manual_seed(0)) == 2
    i, j = worst[0], worst[1]  # (0, 2) takes the worst row, (1, 1) the next
    torch.testing.assert_close(q.codebooks[0, 2], x[i] - old[1, codes[i, 1]])
    torch.testing.assert_close(q.codebooks[1, 1], x[j] - old[0, codes[j, 0]])
    live = ~dead
    assert torch.equal(q.codebooks[live], old[live])
    # the worst row is now exactly reconstructable: codeword (0, 2) with its old codebook-1 word
    torch.testing.assert_close(q.codebooks[0, 2] + q.codebooks[1, codes[i, 1]], x[i])
    assert q.reseed_dead(torch.zeros(2, 4, dtype=torch.bool), x) == 0


def test_without_faiss_quantizers_load_encode_and_decode_and_k_means_names_the_extra(tmp_path):
    """faiss is an optional extra for real: Python's import system told it is absent
    (``sys.modules["faiss"] = None``), everything but k-means still runs."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["faiss"] = None
import torch
import eval.encode, eval.evaluate, trainer.inference, trainer.methods, trainer.train
from trainer.quantizers import AdditiveQuantizer, load_quantizer
q = AdditiveQuantizer(8, 2, 4)
q.codebooks, q.is_trained = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0)), True
q.save({str(tmp_path / "q.npz")!r})
x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
codes = load_quantizer({str(tmp_path / "q.npz")!r}).encode(x)
print("codes", tuple(codes.shape), bool(torch.equal(codes, q.encode(x))))
try:
    AdditiveQuantizer(8, 2, 4).init_kmeans(x, 0)
except ImportError as e:
    print("error:", e)
"""
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "codes (6, 2) True",
        "error: k-means (the codebooks' start) needs faiss: pip install 'wsdhq[faiss]' (faiss-cpu)"]
