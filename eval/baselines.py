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

Projections (``BaselineConfig.projections``) put a linear map A (D x k) in front of any of them:
``pca`` (PCA-k of the training features) or ``tags`` (the simple weak-tag baseline: a ridge map from
the features onto an SVD-k of the training items' tag matrix, then an unsupervised quantizer on the
mapped features). Codewords c found in the k-dim space are folded back as A c, so the score stays
q·(A c) = (Aᵀq)·c: the same asymmetric inner-product reading (AQD) as every other row, with the query
projected by the same map and never quantized.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eval.faiss_export import _faiss
from shards.config import at_least, one_of

METHODS = ("pq", "opq", "residual", "lsq", "random")
PROJECTIONS = ("none", "pca", "tags")


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
    # What the baselines quantize: the encoder's features stored in the code sets ("encoder"), or
    # the input features (feat.npy) of the shard sets the model was fed ("inputs": "on the same
    # inputs", needs --query-shards / --database-shards [/ --train-shards]).
    on: str = "encoder"
    projections: list[str] = field(default_factory=lambda: ["none"])  # none | pca | tags (see above)
    projection_dim: int = 64
    ridge: float = 0.0  # the tags projection's ridge; 0: chosen by leave-one-out CV on the training items
    # L2-normalise the features first (the cosine reading: pooled CNN features and raw pixels rank
    # better by direction than by inner product with their norms; measured in docs/results.md)
    normalize: bool = False

    def __post_init__(self):
        one_of(self, "methods", METHODS, many=True)
        for key in ("max_train", "lsq_train_iters", "opq_iters", "rq_beam_size", "projection_dim"):
            at_least(self, key, 1)
        at_least(self, "ridge", 0)
        one_of(self, "on", ("encoder", "inputs"))
        one_of(self, "projections", PROJECTIONS, many=True)


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


def projection(kind: str, train: np.ndarray, dim: int, train_tags: list[list[str]] | None = None,
               ridge: float = 0.0) -> np.ndarray | None:
    """The map A (D x k) of a projection (None for "none"); see the module docstring."""
    x = np.asarray(train, dtype=np.float64)
    if kind == "none":
        return None
    if kind == "pca":
        xc = x - x.mean(0)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        return np.ascontiguousarray(vt[: min(dim, len(vt))].T, dtype=np.float32)
    if kind == "tags":
        if train_tags is None:
            raise BaselineError("tags projection: needs the training items' tags (--train-shards with "
                                "baselines.on=inputs)")
        tagged = [i for i, t in enumerate(train_tags) if t]
        vocab = sorted({t for i in tagged for t in train_tags[i]})
        if len(tagged) < 2 or len(vocab) < 2:
            raise BaselineError(f"tags projection: {len(tagged)} tagged training items, {len(vocab)} tags (skipped)")
        col = {t: j for j, t in enumerate(vocab)}
        bag = np.zeros((len(tagged), len(vocab)))
        for r, i in enumerate(tagged):
            bag[r, [col[t] for t in train_tags[i]]] = 1.0
        u, sv, _ = np.linalg.svd(bag - bag.mean(0), full_matrices=False)
        k = min(dim, len(sv))
        target = u[:, :k] * sv[:k]
        xt = x[tagged]
        if ridge > 0:
            a = np.linalg.solve(xt.T @ xt + ridge * np.eye(x.shape[1]), xt.T @ target)
        else:  # efficient leave-one-out over a grid: tags of the training items only, no labels
            from sklearn.linear_model import RidgeCV

            a = RidgeCV(alphas=np.logspace(-2, 3, 11), fit_intercept=False).fit(xt, target).coef_.T
        return np.ascontiguousarray(a, dtype=np.float32)
    raise ValueError(f"unknown projection {kind!r}; known: {', '.join(PROJECTIONS)}")


def train_baseline(method: str, train: np.ndarray, db: np.ndarray, queries: np.ndarray, m: int,
                   nbits: int = 8, cfg: BaselineConfig | None = None, project: np.ndarray | None = None
                   ) -> BaselineCodes:
    """Train ``method`` on ``train`` features and encode ``db`` and ``queries`` with M x nbits bits,
    after the map ``project`` (D x k, see ``projection``) when given.

    Inputs faiss cannot train on (e.g. fewer vectors than centroids) raise ``BaselineError``
    naming the method and the sizes, never a faiss traceback."""
    if project is not None:
        mapped = [np.ascontiguousarray(np.asarray(x, np.float32) @ project) for x in (train, db, queries)]
        b = train_baseline(method, *mapped, m, nbits, cfg)
        k = project.shape[1]
        cb = b.codebooks[:, :, :k] @ project.T  # padding columns carry nothing: drop them
        return BaselineCodes(method, np.ascontiguousarray(cb, dtype=np.float32), b.db_codes, b.query_codes, 0)
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
            inner = _quiet(faiss.ProductQuantizer(dp, m, 8))  # what OPQ trains with when given none
            opq.pq = inner  # (the Python reference keeps it alive through train)
            opq.train(xt)
            a = faiss.vector_to_array(opq.A).reshape(dp, dp)
            rot = lambda x: np.ascontiguousarray(x @ a.T, dtype=np.float32)  # noqa: E731
            xt, xb_r, xq_r = rot(xt), rot(xb), rot(xq)
        else:
            xb_r, xq_r = xb, xq
        pq = _quiet(faiss.ProductQuantizer(dp, m, nbits))
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
            aq = _quiet(faiss.ResidualQuantizer(d, m, nbits))
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


# faiss's k-means prints "please provide at least 39·K training points" to stderr once per sub-quantizer
# and iteration (dozens of lines for OPQ); evaluate states it once in the report's notes instead
# (``few_points_note``). The threshold only decides the warning, never the clustering.
FAISS_MIN_POINTS_PER_CENTROID = 39


def _quiet(quantizer):
    quantizer.cp.min_points_per_centroid = 1
    return quantizer


def few_points_note(n: int, nbits: int, methods) -> str | None:
    """The report's note when the baselines train on fewer vectors than faiss's k-means asks for."""
    kmeans = [m for m in methods if m in ("pq", "opq", "residual")]
    need = FAISS_MIN_POINTS_PER_CENTROID * 2 ** nbits
    if not kmeans or n >= need:
        return None
    return (f"{', '.join(kmeans)}: trained on {n:,} vectors, fewer than the {need:,} faiss's k-means asks for "
            f"({FAISS_MIN_POINTS_PER_CENTROID} per centroid, K={2 ** nbits}); they are compared as faiss trains them at this size")


def _unpack(packed: np.ndarray, m: int, nbits: int) -> np.ndarray:
    if nbits == 8:
        return np.ascontiguousarray(packed, dtype=np.uint8)
    return _faiss().unpack_bitstrings(packed, m, nbits).astype(np.uint8)
