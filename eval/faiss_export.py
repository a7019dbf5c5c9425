"""Load the project's learned codebooks and codes into faiss indexes (no retraining).

WSDHQ's ICM codes and DPQ's progressive codes both decode as a sum of full-dimensional codewords,
x̂ = Σ_m c_{m,b_m}, so the AQD score of a query q is Σ_m ⟨q, c_{m,b_m}⟩: a sum of M table look-ups,
the same work as product quantization's asymmetric scan. faiss's fastest exhaustive scans are PQ's,
and they serve additive codes unchanged through one identity:

    IndexPQ over d = M·D, inner product, sub-codebook m = additive codebook m (K x D),
    query q tiled M times [q, q, ..., q]  ->  Σ_m ⟨q, c_{m,b_m}⟩ = the AQD score.

``pq_index`` builds that index behind a ``LinearTransform`` that does the tiling (stacked identity
matrices; multiplying by 1 and adding zeros is exact in float), so the written file answers plain
D-dimensional queries in any faiss program. Codes go in as they are (``add_sa_codes``; 4-bit codes
bit-packed). K that is not a power of two is padded with zero codewords that no code uses.

``fastscan_index`` converts it to ``IndexPQFastScan`` for K <= 16 (4-bit codes: faiss's SIMD scan,
~10-20x the 8-bit scan). FastScan quantizes the look-up tables to 8 bits, so its scores are
approximate; ``eval.scoring.AQDSearcher`` re-ranks its candidates exactly (see there).

``additive_index`` keeps faiss's own additive indexes (``IndexLocalSearchQuantizer`` /
``IndexResidualQuantizer``, ``ST_LUT_nonorm``): the same scores, 2-3x slower than the PQ scan.
"""
from __future__ import annotations

import numpy as np

# kinds `export` writes: the tiled PQ scan (exact), its 4-bit FastScan form, faiss's additive indexes
KINDS = ("pq", "fastscan", "additive", "progressive")


def _faiss():
    try:
        import faiss
    except ImportError as e:  # faiss is an optional extra
        raise RuntimeError("faiss export needs faiss: pip install 'wsdhq[faiss]' (faiss-cpu)") from e
    return faiss


def _check(codebooks: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
    codes = np.asarray(codes)
    m, k, _ = codebooks.shape
    if codes.ndim != 2 or codes.shape[1] != m:
        raise ValueError(f"codes have shape {codes.shape} but the codebooks have M={m} levels")
    if codes.size and int(codes.max()) >= k:
        raise ValueError(f"codes hold value {int(codes.max())} but the codebooks have only K={k} words")
    return codebooks, codes


def _packed(codes: np.ndarray, nbits: int) -> np.ndarray:
    if nbits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)  # no copy when it already is
    return np.ascontiguousarray(_faiss().pack_bitstrings(np.ascontiguousarray(codes, dtype=np.int32), nbits))


def tiling(d: int, m: int):
    """faiss ``LinearTransform`` R^d -> R^{m·d}: q -> [q, ..., q] (m stacked identities, no bias)."""
    faiss = _faiss()
    lt = faiss.LinearTransform(d, m * d, False)
    faiss.copy_array_to_vector(np.tile(np.eye(d, dtype=np.float32), (m, 1)).ravel(), lt.A)
    lt.is_trained = True
    return lt


def bare(index):
    """The code index inside the tiling ``IndexPreTransform`` (or ``index`` itself)."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.downcast_index(index.index)
    return index


def pq_index(codebooks: np.ndarray, codes: np.ndarray, tiled: bool = True):
    """Tiled ``IndexPQ`` (inner product) holding ``codes`` (N, M) over ``codebooks`` (M, K, D):
    ``search(q)`` returns AQD scores. ``tiled=False`` gives the bare IndexPQ (queries tiled by hand)."""
    faiss = _faiss()
    codebooks, codes = _check(codebooks, codes)
    m, k, d = codebooks.shape
    nbits = max(1, int(np.ceil(np.log2(k))))
    if 2 ** nbits != k:  # zero codewords past K: never referenced by a code
        codebooks = np.concatenate([codebooks, np.zeros((m, 2 ** nbits - k, d), np.float32)], axis=1)
    index = faiss.IndexPQ(m * d, m, nbits, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(codebooks.ravel(), index.pq.centroids)
    index.is_trained = True
    index.add_sa_codes(_packed(codes, nbits))
    return _wrap(index, d, m) if tiled else index


def _wrap(index, d: int, m: int):
    return _faiss().IndexPreTransform(tiling(d, m), index)  # faiss's wrapper keeps both alive


def fastscan_index(codebooks: np.ndarray, codes: np.ndarray, bbs: int = 32):
    """Tiled ``IndexPQFastScan`` for K <= 16 (4-bit sub-codes; approximate scores, see module doc)."""
    faiss = _faiss()
    codebooks, codes = _check(codebooks, codes)
    m, k, d = codebooks.shape
    if k > 16:
        raise ValueError(f"FastScan takes 4-bit codes (K <= 16); these codebooks have K={k}")
    if k < 16:
        codebooks = np.concatenate([codebooks, np.zeros((m, 16 - k, d), np.float32)], axis=1)
    pq = pq_index(codebooks, codes, tiled=False)
    return _wrap(faiss.IndexPQFastScan(pq, bbs), d, m)


def additive_index(codebooks: np.ndarray, codes: np.ndarray, kind: str = "additive"):
    """A searchable faiss additive index holding ``codes`` (N, M) uint8 over ``codebooks`` (M, K, D).

    ``kind`` "additive" gives IndexLocalSearchQuantizer, "progressive" IndexResidualQuantizer.
    K must be a power of two (nbits = log2 K); codes are bit-packed as faiss stores them.
    """
    faiss = _faiss()
    codebooks, codes = _check(codebooks, codes)
    m, k, d = codebooks.shape
    nbits = int(np.log2(k))
    if 2 ** nbits != k:
        raise ValueError(f"faiss additive indexes need K a power of two, got K={k}")
    metric, st = faiss.METRIC_INNER_PRODUCT, faiss.AdditiveQuantizer.ST_LUT_nonorm
    if kind == "additive":
        index = faiss.IndexLocalSearchQuantizer(d, m, nbits, metric, st)
        aq = index.lsq
    elif kind == "progressive":
        index = faiss.IndexResidualQuantizer(d, m, nbits, metric, st)
        aq = index.rq
    else:
        raise ValueError(f"unknown code kind {kind!r}; expected 'additive' or 'progressive'")
    faiss.copy_array_to_vector(codebooks.ravel(), aq.codebooks)
    aq.is_trained = True
    index.is_trained = True
    index.add_sa_codes(_packed(codes, nbits))
    return index


def best_kind(k: int) -> str:
    """The fastest scan faiss has for K-word codebooks: FastScan up to 16 words, else the tiled PQ."""
    return "fastscan" if k <= 16 else "pq"


def build(codebooks: np.ndarray, codes: np.ndarray, kind: str = "auto"):
    """The index of ``kind`` (one of ``KINDS``, or "auto" = ``best_kind(K)``)."""
    if kind == "auto":
        kind = best_kind(np.asarray(codebooks).shape[1])
    if kind == "pq":
        return pq_index(codebooks, codes)
    if kind == "fastscan":
        return fastscan_index(codebooks, codes)
    if kind in ("additive", "progressive"):
        return additive_index(codebooks, codes, kind)
    raise ValueError(f"unknown index kind {kind!r}; expected auto or one of {', '.join(KINDS)}")


def export(codebooks: np.ndarray, codes: np.ndarray, path: str, kind: str = "auto"):
    """Build the index (``build``) and ``faiss.write_index`` it to a local ``path``; returns it."""
    faiss = _faiss()
    index = build(codebooks, codes, kind)
    faiss.write_index(index, str(path))
    return index
