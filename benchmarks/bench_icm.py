"""ICM encoding throughput and error of the WSDHQ additive quantizer against faiss's own encoders.

Same data for every method: clustered 300-d vectors (features of a trained network cluster by
content), N_train to learn codebooks, N_encode to encode. Each method learns its own codebooks on
the training set (ours: faiss k-means init + LS/ICM iterations; faiss LSQ and RQ: their ``train``),
then encodes the second set; encoding is timed alone. One more row isolates the encoder: our ICM on
LSQ's codebooks, versus LSQ's own encoder (ICM + iterated local search) on those codebooks.

    .venv/bin/python -m benchmarks.bench_icm [--train 20000] [--encode 20000] [--threads 2]
    .venv/bin/python -m benchmarks.bench_icm --data mirflickr --train 10000 --encode 10000
"""
from __future__ import annotations

import argparse
import time

from pathlib import Path

import faiss
import numpy as np
import torch

from trainer.quantizers import AdditiveQuantizer, icm_encode

MIRFLICKR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirflickr25k_real"


def clustered(n: int, d: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    """Gaussian clusters with per-cluster anisotropic spread, squashed by tanh like fc8 features."""
    which = rng.integers(len(centers), size=n)
    scales = 0.15 + 0.35 * rng.random((len(centers), d))
    return np.tanh(centers[which] + scales[which] * rng.standard_normal((n, d))).astype(np.float32)


def mirflickr_tag_features(d: int, n_train: int, n_encode: int) -> tuple[np.ndarray, np.ndarray]:
    """Real data: MIRFLICKR-25K Cleared-Set tag bags (20,015 x 1386) L2-normalised, reduced to d by
    TruncatedSVD; the first n_train rows train, the last n_encode rows are encoded."""
    from sklearn.decomposition import TruncatedSVD

    path = MIRFLICKR / "cleared20015_tags1386_labels24.npz"
    if not path.is_file():
        raise SystemExit(f"--data mirflickr: {path} not found")
    with np.load(path, allow_pickle=False) as z:
        tags = z["tags"].astype(np.float32)
    if n_train + n_encode > len(tags):
        raise SystemExit(f"--data mirflickr has {len(tags)} rows; --train + --encode must not exceed it")
    tags /= np.maximum(np.linalg.norm(tags, axis=1, keepdims=True), 1e-12)
    feats = TruncatedSVD(d, random_state=0).fit_transform(tags).astype(np.float32)
    feats /= feats.std()  # unit scale, comparable MSE ratios across --data
    return feats[:n_train], feats[-n_encode:]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def mse(x: np.ndarray, xhat: np.ndarray) -> float:
    """Mean squared reconstruction error per vector (sum over dims)."""
    return float(((x.astype(np.float64) - xhat) ** 2).sum(1).mean())


def _encode(q: AdditiveQuantizer, x: np.ndarray, **settings) -> torch.Tensor:
    """``q.encode(x)`` with some of its ICM settings (``icm_sweeps``, ``icm_restarts``) changed for the call."""
    before = {k: getattr(q, k) for k in settings}
    for k, v in settings.items():
        setattr(q, k, v)
    try:
        return q.encode(x)
    finally:
        for k, v in before.items():
            setattr(q, k, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--encode", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--M", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=10, help="our LS/ICM training iterations")
    ap.add_argument("--sweeps", type=int, nargs="+", default=[1, 3, 5], help="ICM sweeps to time")
    ap.add_argument("--restarts", type=int, nargs="*", default=[2, 4], help="ICM restarts to time (3 sweeps)")
    ap.add_argument("--repeats", type=int, default=5, help="encode timings keep the best of this many")
    ap.add_argument("--batch-size", type=int, default=8192, help="our ICM encode batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", choices=["clustered", "mirflickr"], default="clustered",
                    help="synthetic clustered vectors, or real MIRFLICKR tag features (SVD to --dim)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    centers = rng.standard_normal((64, a.dim)) * 0.8
    if a.data == "mirflickr":
        xt, xb = mirflickr_tag_features(a.dim, a.train, a.encode)
    else:
        xt, xb = clustered(a.train, a.dim, rng, centers), clustered(a.encode, a.dim, rng, centers)
    energy = float((xb.astype(np.float64) ** 2).sum(1).mean())
    # name -> (train seconds, encode closure, decode of its codes); encodes are timed round-robin
    # so that load from other processes hits every method alike, and each keeps its best time.
    methods: dict[str, tuple] = {}
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    t = time.perf_counter()
    aq = AdditiveQuantizer(a.dim, a.M, 256, encode_batch_size=a.batch_size).fit(
        xt, iterations=a.iterations, seed=a.seed)
    aq_train = time.perf_counter() - t
    for s in a.sweeps:
        methods[f"ours: ICM {s} sweep{'s' * (s > 1)} (own codebooks)"] = (
            aq_train, lambda s=s: _encode(aq, xb, icm_sweeps=s), lambda c: aq.decode(c).numpy())
    for r in a.restarts:
        methods[f"ours: ICM 3 sweeps x {r} restarts (own codebooks)"] = (
            aq_train, lambda r=r: _encode(aq, xb, icm_restarts=r), lambda c: aq.decode(c).numpy())

    lsq = faiss.LocalSearchQuantizer(a.dim, a.M, 8)
    lsq.random_seed = a.seed
    t = time.perf_counter()
    lsq.train(xt)
    lsq_train = time.perf_counter() - t
    methods["faiss LSQ encode (own codebooks)"] = (lsq_train, lambda: lsq.compute_codes(xb), lsq.decode)
    lsq_C = torch.from_numpy(faiss.vector_to_array(lsq.codebooks).reshape(a.M, 256, a.dim))
    xb_t = torch.from_numpy(xb)
    for s in a.sweeps:
        methods[f"ours: ICM {s} sweep{'s' * (s > 1)} on LSQ codebooks"] = (
            lsq_train, lambda s=s: icm_encode(xb_t, lsq_C, None, s, gen(), a.batch_size).numpy().astype(np.uint8),
            lsq.decode)
    for r in a.restarts:
        methods[f"ours: ICM 3 sweeps x {r} restarts on LSQ codebooks"] = (
            lsq_train, lambda r=r: icm_encode(xb_t, lsq_C, None, 3, gen(), a.batch_size,
                                              restarts=r).numpy().astype(np.uint8), lsq.decode)

    rq = faiss.ResidualQuantizer(a.dim, a.M, 8)
    t = time.perf_counter()
    rq.train(xt)
    rq_train = time.perf_counter() - t
    methods["faiss RQ encode, beam 5 (own codebooks)"] = (rq_train, lambda: rq.compute_codes(xb), rq.decode)

    best: dict[str, float] = {}
    codes: dict[str, object] = {}
    for _ in range(a.repeats):
        for name, (_, encode, _) in methods.items():
            sec, codes[name] = timed(encode)
            best[name] = min(best.get(name, float("inf")), sec)
    rows = [(name, tr, best[name], mse(xb, decode(codes[name]))) for name, (tr, _, decode) in methods.items()]
    lsq_sec, lsq_mse = next((sec, err) for name, _, sec, err in rows if name.startswith("faiss LSQ"))
    print(f"data={a.data} D={a.dim} M={a.M} K=256 train={a.train} encode={a.encode} threads={a.threads} "
          f"batch={a.batch_size} best of {a.repeats} round-robin encodes; "
          f"mean ||x||^2={energy:.2f}")
    print("| method | train s | encode s | vectors/s | speed vs LSQ | MSE | MSE / ||x||^2 | MSE vs LSQ |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tr, sec, err in rows:
        print(f"| {name} | {tr:.1f} | {sec:.3f} | {a.encode / sec:,.0f} | {lsq_sec / sec:.2f}x | "
              f"{err:.3f} | {err / energy:.4f} | {err / lsq_mse:.3f} |")


if __name__ == "__main__":
    main()
