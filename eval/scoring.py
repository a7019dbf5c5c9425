"""Scoring and exhaustive top-K search: AQD / SQD through look-up tables, and raw features.

AQD (methods.md §1.8): score(q, i) = f_qᵀ Σ_m c_{m, b_im} = Σ_m LUT_q[m, b_im] with LUT_q[m, k] = f_qᵀ c_mk.
The gather-and-sum over the M tables is ``torch.nn.functional.embedding_bag(mode="sum")`` on a
(M·K, Q) table: every database item sums M contiguous rows of Q scores, which runs at the memory
bandwidth on all cores (faster than numpy fancy indexing by >10x, see benchmarks/bench_search.py).

The database is scanned in chunks so memory is O(query chunk x database chunk + K), never O(N):
a 10^7 x M uint8 code matrix is 10^7·M bytes, the scores never exist for all of it at once.
Ties are broken by ascending database index everywhere (``eval.metrics.TIE_BREAKING``).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from eval.metrics import merge_top_k, top_k
from trainer.quantizers.base import Quantizer

# Tied rows are re-ranked this many at a time: the exact routine's temporaries (partition indices,
# masks, running counts) cost ~30 bytes per score, 2 GB for a 256-query x 262,144-item block at once.
TIE_ROWS = 16


class Codebooks(Quantizer):
    """Codebooks (M, K, D) as the eval side holds them (a code set's, a baseline's), with the
    quantizers' own ``decode`` and ``lut``: x̂ = Σ_m c_{m,b_m} for every kind, so the scores here
    are the ones the trained quantizer gives. No ``encode``: codes come from the code set."""

    kind = "codebooks"

    def __init__(self, codebooks: np.ndarray):
        self.codebooks = torch.from_numpy(np.ascontiguousarray(codebooks, dtype=np.float32))

    def decoded(self, codes: np.ndarray) -> np.ndarray:
        """``decode`` as float32 numpy (N, D); m < M code columns decode the first m levels."""
        return self.decode(np.asarray(codes)).numpy()

    def tables(self, queries: np.ndarray) -> np.ndarray:
        """``lut`` as float32 numpy (Q, M, K): inner products f_q · c_mk."""
        return self.lut(np.asarray(queries, dtype=np.float32)).numpy()


def _code_offsets(codes: np.ndarray, k: int) -> torch.Tensor:
    m = codes.shape[1]
    return torch.from_numpy(codes.astype(np.int64) + np.arange(m, dtype=np.int64) * k)


def aqd_scores(lut: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(Q, N) scores Σ_m lut[q, m, codes[i, m]]; ``codes`` may have fewer columns than M (a prefix)."""
    lut = np.asarray(lut, dtype=np.float32)
    codes = np.asarray(codes)
    q, _, k = lut.shape
    m = codes.shape[1]
    table = torch.from_numpy(np.ascontiguousarray(lut[:, :m].reshape(q, m * k).T))
    return torch.nn.functional.embedding_bag(_code_offsets(codes, k), table, mode="sum").T.numpy()


def ranked_with_ties(vals: np.ndarray, idx: np.ndarray, k: int, exact: Callable[[np.ndarray], tuple]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The top-k, sorted by (-score, index), from a fast scan's best k+1 per row (``vals``, ``idx``,
    best first). A fast scan (torch.topk, faiss) picks arbitrarily among items tied at the k-th
    score; the (k+1)-th candidate shows such a tie without another pass, and only those rows are
    answered by ``exact(rows) -> (scores, indices)``, the index-tie-breaking routine."""
    tied = np.flatnonzero(vals[:, k - 1] == vals[:, k]) if vals.shape[1] > k else np.zeros(0, np.int64)
    s, i = _sorted(vals[:, :k], idx[:, :k])
    if len(tied):
        s[tied], i[tied] = exact(tied)
    return s, i


def _chunk_top_k(scores: torch.Tensor, k: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a (Q, n) score block with index tie-breaking: torch.topk, and the exact numpy
    routine (``top_k``, ``TIE_ROWS`` rows at a time) for the rows with a tie at the k-th score."""
    k = min(k, scores.shape[1])
    vals, idx = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    block = scores.numpy()

    def exact(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [top_k(block[rows[a:a + TIE_ROWS]], k, 0) for a in range(0, len(rows), TIE_ROWS)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    s, i = ranked_with_ties(vals.numpy(), idx.numpy(), k, exact)
    return s, i + offset


def scan(score_chunk: Callable[[int, int], torch.Tensor], n: int, k: int, db_chunk: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive top-``k`` over ``n`` database items, scored ``db_chunk`` at a time by
    ``score_chunk(start, stop) -> (Q, stop-start)`` tensor; returns (scores, indices), both (Q, k)."""
    best = None
    for start in range(0, n, db_chunk):
        stop = min(n, start + db_chunk)
        part = _chunk_top_k(score_chunk(start, stop), k, start)
        best = part if best is None else merge_top_k(best, part, min(k, stop))
    if best is None:
        raise ValueError("the database is empty")
    return best


def search_aqd(lut: np.ndarray, codes: np.ndarray, k: int, db_chunk: int = 1 << 18
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database items by AQD for each query LUT (Q, M, K); ``codes`` (N, m <= M) uint8."""
    lut = np.asarray(lut, dtype=np.float32)
    q, _, kk = lut.shape
    m = codes.shape[1]
    table = torch.from_numpy(np.ascontiguousarray(lut[:, :m].reshape(q, m * kk).T))

    def score(a: int, b: int) -> torch.Tensor:
        return torch.nn.functional.embedding_bag(_code_offsets(codes[a:b], kk), table, mode="sum").T.contiguous()

    return scan(score, len(codes), k, db_chunk)


class AQDSearcher:
    """Exhaustive AQD top-k over one code matrix, with the deterministic index tie-breaking.

    ``backend="faiss"`` scans with the fastest exact faiss scan for the code (``eval.faiss_export``:
    the tiled ``IndexPQ``, or ``index`` when the caller has one over the same codes) and keeps the
    exactness: it asks faiss for k+1 results, re-sorts the top-k by (-score, index), and sends the
    rows where the (k+1)-th score ties the k-th (faiss picks an arbitrary subset of tied items
    there) to the exact torch scan. For K <= 16 (``fastscan=None``: auto; or a FastScan ``index``)
    it scans with ``IndexPQFastScan`` and re-ranks exactly: see ``_fastscan_search``. ``"torch"``
    is the pure embedding_bag scan; ``"auto"`` uses faiss when it is installed.
    """

    def __init__(self, codebooks: np.ndarray, codes: np.ndarray, backend: str = "auto", db_chunk: int = 1 << 18,
                 index=None, fastscan: bool | None = None, rerank: int = 2):
        self.codebooks = np.ascontiguousarray(codebooks[: codes.shape[1]], dtype=np.float32)
        self.quantizer = Codebooks(self.codebooks)
        self.codes, self.db_chunk, self.rerank = codes, db_chunk, rerank
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"unknown search backend {backend!r}; use auto, faiss or torch")
        if backend == "auto":
            try:
                import faiss  # noqa: F401
                backend = "faiss"
            except ImportError:
                backend = "torch"
        self.backend, self.index, self.fastscan = backend, index, False
        self.fallback_rows = 0  # FastScan rows that needed the exact scan (see _fastscan_search)
        if backend == "faiss":
            import faiss

            from eval.faiss_export import bare, build

            if self.index is None:
                if fastscan is None:
                    fastscan = self.codebooks.shape[1] <= 16
                self.index = build(self.codebooks, codes, "fastscan" if fastscan else "pq")
            self.fastscan = isinstance(bare(self.index), faiss.IndexPQFastScan)
            # the tiled indexes are searched with queries tiled here (exact copies): faiss's
            # LinearTransform does the same through a BLAS call whose threads contend with the
            # scan's OpenMP threads (measured 6-9% of the scan's time at 10^6 codes on 2 cores)
            self._scan = bare(self.index)
            self._tiles = self._scan.d // self.index.d

    def _faiss_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._scan.search(np.tile(queries, (1, self._tiles)) if self._tiles > 1 else queries, k)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), both (Q, min(k, N)). Every path returns the same scores for the same
        items (``gather_scores``), so rankings from several searchers merge exactly (eval.search)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(self.codes)
        k = min(k, n)
        lut = self.quantizer.tables(queries)
        if self.index is None:
            _, i = search_aqd(lut, self.codes, k, self.db_chunk)
        elif self.fastscan:
            i = self._fastscan_search(queries, lut, k)
        else:
            d, i = self._faiss_search(queries, min(k + 1, n))
            _, i = ranked_with_ties(d, i, k, lambda rows: search_aqd(lut[rows], self.codes, k, self.db_chunk))
        return _sorted(gather_scores(lut, self.codes, i), i)

    def _exact_rows(self, lut, k, i, rows):
        """``i`` with ``rows`` replaced by the exact scan's top-k."""
        i = i.astype(np.int64)
        if len(rows):
            i[rows] = search_aqd(lut[rows], self.codes, k, self.db_chunk)[1]
        return i

    def _fastscan_search(self, queries: np.ndarray, lut: np.ndarray, k: int) -> np.ndarray:
        """FastScan candidates, exact re-ranking, and a certificate that the result is exact.

        FastScan scores with look-up tables rounded to uint8 (faiss ``quantize_LUT_and_bias``:
        one scale a = min(255 / max_m span_m, 65535 / Σ_m span_m) per query), so each score is
        within ε = M / (2a) of the exact one. The top R = ``rerank``·k candidates (at least k + 16)
        are re-scored exactly and sorted by (-score, index). If the R-th candidate's approximate score t
        satisfies t + ε < s_k (the k-th exact score), every item left out scores below s_k
        exactly, so the top-k, ties included, is the exact one; rows where that does not hold
        (or where a candidate is off by more than ε) are answered by the exact scan.
        """
        n, m, kk = len(self.codes), lut.shape[1], lut.shape[2]
        r = min(n, max(self.rerank * k, k + 16))
        approx, cand = self._faiss_search(queries, r)
        exact = gather_scores(lut, self.codes, cand)
        s, i = _sorted(exact, cand)
        padded = np.concatenate([lut, np.zeros((*lut.shape[:2], 16 - kk), np.float32)], 2) if kk < 16 else lut
        span = padded.max(2) - padded.min(2)
        a = np.minimum(255.0 / span.max(1), 65535.0 / span.sum(1))
        eps = m * 0.5 / a * 1.01 + 1e-5 * np.abs(padded).max(2).sum(1)
        ok = np.abs(approx - exact).max(1) <= eps
        if r < n:
            ok &= approx[:, -1] + eps < s[:, k - 1]
        bad = np.flatnonzero(~ok)
        self.fallback_rows += len(bad)
        return self._exact_rows(lut, k, i[:, :k], bad)


def gather_scores(lut: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(Q, k) AQD scores of items ``ids`` (Q, k): Σ_m lut[q, m, codes[i, m]] summed in level order,
    so items with equal codes score exactly equal whichever scan found them."""
    q, m, kk = lut.shape
    mm = codes.shape[1]
    idx = codes[ids].astype(np.int64) + np.arange(mm) * kk  # (Q, k, m) rows of the flat table
    looked = np.take_along_axis(lut.reshape(q, m * kk), idx.reshape(q, -1), axis=1).reshape(idx.shape)
    out = np.zeros(ids.shape, np.float32)
    for j in range(mm):
        out += looked[:, :, j]
    return out


def _sorted(s: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows re-sorted by (-score, index)."""
    i = i.astype(np.int64)
    order = np.lexsort((i, -s), axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def search_features(queries: np.ndarray, db: np.ndarray, k: int, db_chunk: int = 1 << 18
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database items by the raw inner product f_q · f_i."""
    qt = torch.as_tensor(np.asarray(queries, dtype=np.float32))

    def score(a: int, b: int) -> torch.Tensor:
        return qt @ torch.as_tensor(np.asarray(db[a:b], dtype=np.float32)).T

    return scan(score, len(db), k, db_chunk)


def query_chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
