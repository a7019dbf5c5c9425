"""Unsupervised faiss baselines at the same bit budget, trained on the encoder's own features.

Every baseline is reduced to the additive form the project scores with: codebooks (M, K, D') and
uint8 codes (N, M), so one AQD/LUT scorer serves all rows of the report table.
- PQ / OPQ: sub-space codebooks are embedded block-diagonally into full-dimensional codewords
  (zeros outside their sub-space). faiss PQ needs D divisible by M, so features are zero-padded to
  the next multiple of M (padding adds nothing to any inner product). OPQ's rotation A is folded
  into the codewords (q·(Aᵀc) = (Aq)·c), so queries stay un-rotated.
- residual (``ResidualQuantizer``, beam search) and LSQ (``LocalSearchQuantizer``) already are additive.
- random: Gaussian codebooks scaled to the features' spread and uniform random codes (fixed seed),
  the floor any learned code must beat.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eval.faiss_export import _faiss
from shards.config_checks import at_least, one_of

METHODS = ("pq", "opq", "residual", "lsq", "random")


class BaselineError(ValueError):
    """A baseline that cannot be trained on these inputs; the evaluation notes it and goes on."""


@dataclass
class BaselineConfig:
    """Which baselines to train and how hard (LSQ is the slow one)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seed: int = 0
    max_train: int = 50_000  # features sampled for training (faiss warns below ~39 K points)
    lsq_train_iters: int = 10
    opq_iters: int = 10  # alternations of rotation / PQ (faiss default 50)
    rq_beam_size: int = 4

    def __post_init__(self):
        one_of(self, "methods", METHODS, many=True)
        for key in ("max_train", "lsq_train_iters", "opq_iters", "rq_beam_size"):
            at_least(self, key, 1)


@dataclass
class BaselineCodes:
    """One baseline's codebooks (M, K, D') and the database / query codes; ``pad`` columns added."""

    method: str
    codebooks: np.ndarray
    db_codes: np.ndarray
    query_codes: np.ndarray
    pad: int

    def pad_queries(self, x: np.ndarray) -> np.ndarray:
        return _pad(x, self.pad)


def _pad(x: np.ndarray, pad: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.hstack([x, np.zeros((len(x), pad), np.float32)]) if pad else x


def _pq_codebooks(pq, d: int) -> np.ndarray:
    faiss = _faiss()
    m, k, dsub = pq.M, pq.ksub, pq.dsub
    sub = faiss.vector_to_array(pq.centroids).reshape(m, k, dsub)
    full = np.zeros((m, k, d), np.float32)
    for j in range(m):
        full[j, :, j * dsub:(j + 1) * dsub] = sub[j]
    return full


def train_baseline(method: str, train: np.ndarray, db: np.ndarray, queries: np.ndarray, m: int,
                   nbits: int = 8, cfg: BaselineConfig | None = None) -> BaselineCodes:
    """Train ``method`` on ``train`` features and encode ``db`` and ``queries`` with M x nbits bits.

    Inputs faiss cannot train on (e.g. fewer vectors than centroids) raise ``BaselineError``
    naming the method and the sizes, never a faiss traceback."""
    try:
        return _train_baseline(method, train, db, queries, m, nbits, cfg)
    except RuntimeError as exn:  # faiss's C++ checks, e.g. "Number of training points (45) should be ..."
        reason = str(exn).split("failed: ", 1)[-1].strip().splitlines()[0]
        raise BaselineError(f"{method}: faiss cannot train it on {len(train)} vectors of {train.shape[1]} "
                            f"dimensions at {m}x{nbits} bits: {reason} (skipped)") from None


def _train_baseline(method: str, train: np.ndarray, db: np.ndarray, queries: np.ndarray, m: int,
                    nbits: int, cfg: BaselineConfig | None) -> BaselineCodes:
    faiss = _faiss()
    cfg = cfg or BaselineConfig()
    d = train.shape[1]
    k = 2 ** nbits
    rng = np.random.default_rng(cfg.seed)
    if len(train) > cfg.max_train:
        train = train[np.sort(rng.choice(len(train), cfg.max_train, replace=False))]
    if method in ("pq", "opq"):
        pad = (-d) % m
        dp = d + pad
        xt, xb, xq = _pad(train, pad), _pad(db, pad), _pad(queries, pad)
        if method == "opq":
            if len(xt) < dp:  # faiss's OPQ training corrupts memory (munmap_chunk abort) when n < d
                raise BaselineError(f"opq: {len(xt)} training vectors for {dp} dimensions; OPQ needs at "
                                    f"least as many vectors as dimensions (skipped)")
            opq = faiss.OPQMatrix(dp, m)
            opq.niter = cfg.opq_iters
            opq.train(xt)
            a = faiss.vector_to_array(opq.A).reshape(dp, dp)
            rot = lambda x: np.ascontiguousarray(x @ a.T, dtype=np.float32)  # noqa: E731
            xt, xb_r, xq_r = rot(xt), rot(xb), rot(xq)
        else:
            xb_r, xq_r = xb, xq
        pq = faiss.ProductQuantizer(dp, m, nbits)
        pq.train(xt)
        cb = _pq_codebooks(pq, dp)
        if method == "opq":
            cb = cb @ a  # codeword in the rotated space -> original space: Aᵀc
        codes_b, codes_q = pq.compute_codes(xb_r), pq.compute_codes(xq_r)
        return BaselineCodes(method, cb.astype(np.float32), _unpack(codes_b, m, nbits),
                             _unpack(codes_q, m, nbits), pad)
    if method in ("residual", "lsq"):
        if method == "residual" and len(train) <= d:  # its PCA initialisation needs n > d
            raise BaselineError(f"residual: {len(train)} training vectors for {d} dimensions; faiss's residual "
                                f"quantizer needs more vectors than dimensions (skipped)")
        if method == "residual":
            aq = faiss.ResidualQuantizer(d, m, nbits)
            aq.max_beam_size = cfg.rq_beam_size
        else:
            aq = faiss.LocalSearchQuantizer(d, m, nbits)
            aq.train_iters = cfg.lsq_train_iters
            aq.random_seed = cfg.seed
        aq.train(np.ascontiguousarray(train, dtype=np.float32))
        cb = faiss.vector_to_array(aq.codebooks).reshape(m, k, d)
        enc = lambda x: _unpack(aq.compute_codes(np.ascontiguousarray(x, dtype=np.float32)), m, nbits)  # noqa: E731
        return BaselineCodes(method, cb, enc(db), enc(queries), 0)
    if method == "random":
        scale = float(np.std(train)) if len(train) else 1.0
        cb = (rng.standard_normal((m, k, d)) * scale / np.sqrt(m)).astype(np.float32)
        return BaselineCodes(method, cb, rng.integers(0, k, (len(db), m)).astype(np.uint8),
                             rng.integers(0, k, (len(queries), m)).astype(np.uint8), 0)
    raise ValueError(f"unknown baseline {method!r}; known: {', '.join(METHODS)}")


def _unpack(packed: np.ndarray, m: int, nbits: int) -> np.ndarray:
    if nbits == 8:
        return np.ascontiguousarray(packed, dtype=np.uint8)
    return _faiss().unpack_bitstrings(packed, m, nbits).astype(np.uint8)
