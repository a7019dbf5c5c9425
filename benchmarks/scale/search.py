"""Exhaustive search cost vs database size: queries/s and peak memory for 10^4 .. 10^7 codes.

    .venv/bin/python -m benchmarks.scale.search [--sizes 10000 100000 1000000 10000000] [--m 1 2 4 8]

Random uint8 codes (K=256, M = 1/2/4/8, i.e. 8-64 bits) over random codebooks (d=64), top-100 by
inner product. Contenders, each point in a fresh process (its own ``ru_maxrss``):
- ``project``: ``eval.scoring.AQDSearcher`` as evaluation uses it (faiss additive LUT scan asked
  for k+1, re-sorted by (-score, index), rows tied at the k-th score re-ranked by the exact torch
  scan: at 8 bits, with 256 distinct scores, that is nearly every query);
- ``project_torch``: the same searcher's pure torch ``embedding_bag`` scan, chunked (the fallback);
- ``faiss``: the exported index alone (``eval.faiss_export.additive_index``, ``ST_LUT_nonorm``),
  no tie handling.
Memory is reported as the peak and as the peak above the process's resident size after imports
(the codes, the index's copy of them, and the scan's working memory). Also the bytes each item
costs in the searchable store (``sa_code_size``) and in a code file on disk
(``eval.codes.pack_code_file``: key, index, codes, labels; features optional).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.scale.serving import IMG, conditions, finish, in_fresh_process, plot_slopes, report, rss_mb

D, K, TOP = 64, 256, 100


def queries_for(n: int) -> int:
    """Enough queries for a stable rate, few enough that 10^7 codes take seconds, not minutes."""
    return int(np.clip(2e8 / n, 20, 256))  # 256 = evaluate's query_chunk


def measure(n: int, m: int, backend: str, seed: int = 0, queries: int = 0, db_chunk: int = 1 << 18) -> dict:
    """One point: build the searcher over ``n`` random codes and time ``queries`` (default
    ``queries_for(n)``) top-100 queries; ``db_chunk`` is the torch scan's database chunk."""
    import torch

    from eval.faiss_export import additive_index
    from eval.scoring import AQDSearcher

    torch.set_num_threads(2)
    base = rss_mb()
    rng = np.random.default_rng(seed)
    cb = rng.standard_normal((m, K, D), dtype=np.float32)
    codes = rng.integers(0, K, (n, m), dtype=np.uint8)
    nq = queries or queries_for(n)
    q = rng.standard_normal((nq, D), dtype=np.float32)
    t = time.perf_counter()
    if backend == "faiss":
        index = additive_index(cb, codes, "additive")
        search = index.search
        item_bytes = index.sa_code_size()
    else:
        index = AQDSearcher(cb, codes, "auto" if backend == "project" else "torch", db_chunk)
        search = index.search
        item_bytes = codes.shape[1]
    build_s = time.perf_counter() - t
    search(q[:2], TOP)  # warm-up
    best = float("inf")
    for _ in range(2 if n <= 1_000_000 else 1):
        t = time.perf_counter()
        search(q, TOP)
        best = min(best, time.perf_counter() - t)
    return {"n": n, "M": m, "bits": 8 * m, "backend": backend, "queries": nq, "qps": round(nq / best, 2),
            "ms_per_query": round(1000 * best / nq, 3), "build_s": round(build_s, 3),
            "store_bytes_per_item": item_bytes, "rss_after_imports_mb": round(base, 1)}


def code_file_bytes_per_item(m: int, n: int = 10_000, feat_dim: int = 0) -> float:
    """Bytes per item of an ``eval.encode`` code file (keys like the shards', two short labels)."""
    from eval.codes import pack_code_file

    rng = np.random.default_rng(0)
    keys = [f"mirflickr/im{i:08d}" for i in range(n)]
    labels = [["sky", "people"] if i % 2 else ["water"] for i in range(n)]
    feat = rng.standard_normal((n, feat_dim), dtype=np.float32) if feat_dim else None
    data = pack_code_file(keys, np.arange(n), rng.integers(0, K, (n, m), dtype=np.uint8), labels, feat)
    return len(data) / n


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--backends", nargs="+", default=["project", "project_torch", "faiss"])
    p.add_argument("--plot", default=str(IMG / "serve_search.png"))
    p.add_argument("--rows", help="also write the rows as JSON here (re-plot with --replot)")
    p.add_argument("--queries", type=int, default=0,
                   help="queries per point at every N (0: fewer as N grows, see queries_for); memory is "
                        "O(queries x db_chunk), so compare memory across N at a fixed count")
    p.add_argument("--replot", help="only plot rows saved with --rows")
    p.add_argument("--memory-rows", help="with --replot: rows (saved with --rows) for the memory plot")
    a = p.parse_args(argv)
    if a.replot:
        rows = json.loads(Path(a.replot).read_text())
        return plot(rows, a.plot, json.loads(Path(a.memory_rows).read_text()) if a.memory_rows else rows)
    print(f"# search scaling, {conditions()}; top-{TOP}, d={D}, K={K}")
    for m in a.m:
        for fd in (0, 64):
            print(f"# code file, M={m}, features {fd or 'off'}: "
                  f"{code_file_bytes_per_item(m, feat_dim=fd):.1f} bytes/item (codes alone: {m})")
    rows = [report(in_fresh_process("benchmarks.scale.search:measure", n=n, m=m, backend=b, queries=a.queries))
            for n in a.sizes for m in a.m for b in a.backends]
    finish(rows, a.rows, plot, a.plot)


def plot(rows: list[dict], path: str, memory_rows: list[dict] | None = None) -> None:
    """Time per query (project searcher and faiss, every code length) and memory above the imports
    (every backend at 8 and 64 bits, into ``<path>`` with ``_memory`` before the suffix)."""
    def series(backends, ms, value, rows=rows):
        out = {}
        for b in backends:
            for m in ms:
                pts = sorted((r["n"], value(r)) for r in rows if r["backend"] == b and r["M"] == m)
                if pts:
                    out[f"{b} {8 * m} bits"] = tuple(zip(*pts))
        return out

    ms = sorted({r["M"] for r in rows})
    plot_slopes(path, "Exhaustive AQD search: time per query vs database size", "database size N (codes)",
                f"ms per query (top-{TOP})", series(["project", "faiss"], ms, lambda r: r["ms_per_query"]),
                "ms/query")
    memory_rows = memory_rows or rows
    nq = "/".join(map(str, sorted({r["queries"] for r in memory_rows})))
    plot_slopes(str(Path(path).with_name(Path(path).stem + "_memory" + Path(path).suffix)),
                f"Exhaustive AQD search: peak memory above the imports, {nq} queries",
                "database size N (codes)", "peak RSS - RSS after imports (MB)",
                series(["project", "project_torch", "faiss"], [ms[0], ms[-1]],
                       lambda r: r["peak_rss_mb"] - r["rss_after_imports_mb"], memory_rows),
                "peak memory above imports")

if __name__ == "__main__":
    main()
