"""Load the project's learned codebooks and codes into a faiss additive index (no retraining).

WSDHQ's ICM codes and DPQ's progressive codes both decode as a sum of full-dimensional codewords,
which is exactly faiss's additive-quantizer model, so the index serves the same AQD scores:
``IndexLocalSearchQuantizer`` (additive) or ``IndexResidualQuantizer`` (progressive), inner-product
metric, ``ST_LUT_nonorm`` search (exact asymmetric inner product through look-up tables; the
default ``ST_decompress`` decodes every item and is ~60x slower, ecosystem.md §6).
"""
from __future__ import annotations

import numpy as np


def _faiss():
    try:
        import faiss
    except ImportError as e:  # faiss is an optional extra
        raise RuntimeError("faiss export needs faiss: pip install 'wsdhq[faiss]' (faiss-cpu)") from e
    return faiss


def additive_index(codebooks: np.ndarray, codes: np.ndarray, kind: str = "additive"):
    """A searchable faiss index holding ``codes`` (N, M) uint8 over ``codebooks`` (M, K, D).

    ``kind`` "additive" gives IndexLocalSearchQuantizer, "progressive" IndexResidualQuantizer.
    K must be a power of two (nbits = log2 K); codes are bit-packed as faiss stores them.
    """
    faiss = _faiss()
    codebooks = np.asarray(codebooks, dtype=np.float32)
    m, k, d = codebooks.shape
    nbits = int(np.log2(k))
    if 2 ** nbits != k:
        raise ValueError(f"faiss additive indexes need K a power of two, got K={k}")
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != m:
        raise ValueError(f"codes have shape {codes.shape} but the codebooks have M={m} levels")
    if codes.size and int(codes.max()) >= k:
        raise ValueError(f"codes hold value {int(codes.max())} but the codebooks have only K={k} words")
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
    if nbits == 8:
        packed = np.ascontiguousarray(codes, dtype=np.uint8)  # no copy when it already is
    else:
        packed = faiss.pack_bitstrings(codes.astype(np.int32), nbits)
    index.add_sa_codes(np.ascontiguousarray(packed))
    return index


def export(codebooks: np.ndarray, codes: np.ndarray, path: str, kind: str = "additive"):
    """Build the index and ``faiss.write_index`` it to a local ``path``; returns the index."""
    faiss = _faiss()
    index = additive_index(codebooks, codes, kind)
    faiss.write_index(index, str(path))
    return index
