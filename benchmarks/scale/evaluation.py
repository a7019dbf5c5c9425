"""mAP evaluation cost vs database size, with K fixed (mAP@1000) and K = "all".

    .venv/bin/python -m benchmarks.scale.evaluation [--sizes 10000 100000 1000000] [--all-sizes ...]

Code sets are written to disk in the encode job's format (``eval.codes.pack_code_file`` files of
100,000 rows + ``write_manifest``; random M=4 x K=256 codes and codebooks, d=64, 24 ground-truth
labels with long-tailed frequencies, database without features as a huge one would be), then each
point runs in a fresh process: ``eval.codes.load_code_set`` for both sets and ``eval.evaluate.evaluate``
with the AQD scoring only (no baselines), 100 queries. Reported: load seconds, evaluate seconds,
the AQD row's own seconds (search + relevance + AP), peak RSS.

With K fixed the search keeps k+1 candidates per query (faiss's heap, or ``torch.topk`` per
database chunk; the exact ``eval.metrics.top_k`` is an ``argpartition`` for tied rows), so the
ranking is O(N) per query, never a full sort. K = "all" ranks the whole database, O(N log N) per
query, and holds (query chunk x N) scores and indices.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.scale.serving import IMG, by, conditions, finish, in_fresh_process, plot_slopes, report, rss_mb

D, M, K, LABELS, QUERIES, FILE_ROWS = 64, 4, 256, 24, 100, 100_000


def _label_lists(rng: np.random.Generator, n: int) -> list[list[str]]:
    """Multi-hot over LABELS names with long-tailed frequencies (~1.6 labels per item, ~20% none)."""
    p = 0.25 / np.arange(1, LABELS + 1) ** 0.7
    hot = rng.random((n, LABELS)) < p
    pattern, inverse = np.unique(np.packbits(hot, axis=1, bitorder="little"), axis=0, return_inverse=True)
    bits = np.unpackbits(pattern, axis=1, bitorder="little")[:, :LABELS]
    lists = [[f"l{j}" for j in np.flatnonzero(b)] for b in bits]
    return [lists[i] for i in inverse.ravel()]


def write_code_set(out: Path, n: int, prefix: str, features: bool, seed: int) -> None:
    """A finished code set of ``n`` random items as ``eval.encode`` writes one (keys ``<prefix>/im<i>``)."""
    import torch

    from eval.codes import pack_code_file, write_manifest
    from trainer.quantizers import AdditiveQuantizer

    out.mkdir(parents=True, exist_ok=True)
    q = AdditiveQuantizer(D, M, K)
    q.codebooks = torch.from_numpy(np.random.default_rng(0).standard_normal((M, K, D), dtype=np.float32))
    q.is_trained = True
    q.save(out / "quantizer.npz")
    (out / "meta.json").write_text(json.dumps({"method": "wsdhq"}))
    rng = np.random.default_rng(seed)
    files = []
    for start in range(0, n, FILE_ROWS):
        rows = min(FILE_ROWS, n - start)
        data = pack_code_file([f"{prefix}/im{i:09d}" for i in range(start, start + rows)],
                              np.arange(start, start + rows), rng.integers(0, K, (rows, M), dtype=np.uint8),
                              _label_lists(rng, rows),
                              rng.standard_normal((rows, D), dtype=np.float32) if features else None)
        name = f"codes-shard-{start // FILE_ROWS:06d}.npz"
        (out / name).write_bytes(data)
        files.append({"url": name, "shard": name, "rows": rows, "sha256": hashlib.sha256(data).hexdigest()})
    info = {"quantizer_kind": "additive", "M": M, "K": K, "D": D, "bits": 8 * M, "method": "wsdhq",
            "checkpoint": "synthetic", "checkpoint_sha256": {"model.pt": "synthetic"},
            "tag_semantics_hash": "synthetic", "has_features": features,
            "source": {"url": "synthetic", "split": prefix, "total": n, "source": "benchmarks.scale.evaluation"},
            "label_names": [f"l{j}" for j in range(LABELS)]}
    write_manifest(str(out), info, files)


def measure(query: str, database: str, top_k: int | str) -> dict:
    """Load both code sets and evaluate the AQD row, timing each part (run in a fresh process)."""
    from eval.codes import load_code_set
    from eval.evaluate import EvaluateConfig, evaluate

    base = rss_mb()
    t = time.perf_counter()
    q, db = load_code_set(query), load_code_set(database, with_features=False)
    load_s = time.perf_counter() - t
    cfg = EvaluateConfig(top_k=top_k, scorings=["aqd"])
    cfg.baselines.methods = []
    t = time.perf_counter()
    out, _ = evaluate(q, db, cfg, log=lambda s: None)
    row = out["rows"][0]
    return {"n": len(db), "top_k": top_k, "queries": len(q), "load_s": round(load_s, 2),
            "evaluate_s": round(time.perf_counter() - t, 2), "aqd_row_s": row["seconds"],
            "mAP_skip": round(row["metrics"]["mAP"]["skip"], 4), "rss_after_imports_mb": round(base, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="database sizes for mAP@--k")
    p.add_argument("--all-sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                   help="database sizes for mAP@all")
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--work", default="/tmp/wsdhq-scale-eval", help="where the code sets are written (kept)")
    p.add_argument("--plot", default=str(IMG / "serve_evaluate.png"))
    p.add_argument("--rows", help="also write the rows as JSON here")
    a = p.parse_args(argv)
    work = Path(a.work)
    print(f"# evaluation scaling, {conditions()}; {QUERIES} queries, M={M} x K={K}, d={D}, {LABELS} labels")
    if not (work / "query" / "codes_manifest.json").exists():
        write_code_set(work / "query", QUERIES, "query", features=True, seed=1)
    rows = []
    for top_k, sizes in ((a.k, a.sizes), ("all", a.all_sizes)):
        for n in sizes:
            db = work / f"db{n}"
            if not (db / "codes_manifest.json").exists():
                t = time.perf_counter()
                write_code_set(db, n, "db", features=False, seed=2)
                size = sum(f.stat().st_size for f in db.glob("codes-*.npz"))
                print(f"# wrote {n:,} codes in {time.perf_counter() - t:.1f}s: {size / n:.1f} bytes/item on disk")
            rows.append(report(in_fresh_process("benchmarks.scale.evaluation:measure", query=str(work / "query"),
                                                database=str(db), top_k=top_k)))
    finish(rows, a.rows, plot, a.plot)


def plot(rows: list[dict], path: str) -> None:
    series = {}
    for top_k, sel in by(rows, "top_k").items():
        n = [r["n"] for r in sel]
        series[f"mAP@{top_k}: evaluate s"] = (n, [r["evaluate_s"] for r in sel])
        series[f"mAP@{top_k}: load s"] = (n, [r["load_s"] for r in sel])
        series[f"mAP@{top_k}: peak RSS GB"] = (n, [r["peak_rss_mb"] / 1024 for r in sel])
    plot_slopes(path, f"mAP evaluation ({QUERIES} queries) vs database size", "database size N (codes)",
                "seconds / GB", series, "cost")

if __name__ == "__main__":
    main()
