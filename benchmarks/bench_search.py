"""Exhaustive search speed: the project's AQD scan (eval.scoring.search_aqd) vs faiss on 10^6 codes.

    .venv/bin/python -m benchmarks.bench_search [--n 1000000] [--queries 200] [--k 100]

The project's searcher (eval.scoring.AQDSearcher) scans with faiss's additive LUT index and adds the
deterministic index tie-breaking; its pure-torch scan is timed alongside. Same codes and sizes for every contender: M x 8-bit codes over d=64, inner product, top-k.
faiss rows: IndexPQ (sub-space LUTs, its fastest exhaustive 8-bit scan) and the additive index the
project exports (IndexResidualQuantizer, ST_LUT_nonorm). Also checks that the project's top-k scores
equal faiss's additive scores on the same data.
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch

from eval.faiss_export import additive_index
from eval.scoring import AQDSearcher


def timed(fn, repeat: int = 2) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--d", type=int, default=64)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"n={a.n:,} queries={a.queries} k={a.k} d={a.d} threads: faiss {faiss.omp_get_max_threads()}, "
          f"torch {torch.get_num_threads()}")
    for m in (4, 8):
        cb = rng.standard_normal((m, 256, a.d)).astype(np.float32)
        codes = rng.integers(0, 256, (a.n, m)).astype(np.uint8)
        q = rng.standard_normal((a.queries, a.d)).astype(np.float32)
        ours = AQDSearcher(cb, codes, "faiss")
        t_ours, (s_ours, _) = timed(lambda: ours.search(q, a.k))
        torch_scan = AQDSearcher(cb, codes, "torch")
        t_torch, (s_torch, _) = timed(lambda: torch_scan.search(q, a.k), repeat=1)
        aq = additive_index(cb, codes, "progressive")
        t_aq, (d_aq, _) = timed(lambda: aq.search(q, a.k))
        pq = faiss.IndexPQ(a.d, m, 8, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(cb[:, :, : a.d // m].ravel(), pq.pq.centroids)
        pq.is_trained = True
        pq.add_sa_codes(codes)
        t_pq, _ = timed(lambda: pq.search(q, a.k))
        same = np.allclose(s_ours, d_aq, rtol=1e-4, atol=1e-4) and np.allclose(s_torch, d_aq, rtol=1e-4, atol=1e-4)
        qps = lambda t: a.queries / t  # noqa: E731
        print(f"M={m} ({m * 8} bits): project AQD (faiss scan + exact ties) {qps(t_ours):8.1f} q/s | "
              f"project torch scan {qps(t_torch):8.1f} q/s | faiss additive LUT "
              f"{qps(t_aq):8.1f} q/s | faiss IndexPQ {qps(t_pq):8.1f} q/s | "
              f"speed ratio IndexPQ/project {t_ours / t_pq:.2f}x, faiss-additive/project {t_ours / t_aq:.2f}x | "
              f"top-{a.k} scores of both project paths equal faiss additive: {same}")


if __name__ == "__main__":
    main()
