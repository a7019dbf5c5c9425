"""Retrieval metrics of methods.md §5: relevance, deterministic top-K, AP@K, mAP, precision@K, PR curves.

Written by hand because the protocol is specific (AP normalised by the relevant items *within* the
top-K, two aggregation conventions, ties broken by database index); scikit-learn's
``average_precision_score`` normalises by all relevant items and ranks ties arbitrarily.

Arrays in, arrays out: scores ``(Q, N)``, ranked indices ``(Q, K)``, multi-hot labels ``(Q|N, L)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIE_BREAKING = "ties broken by ascending database index (stable sort on (-score, index))"
CONVENTIONS = {
    "skip": "WSDHQ/DeepHash: queries with no relevant item in the top-K are left out of the mean",
    "zero": "DPQ/MeCoQ: queries with no relevant item in the top-K count as AP = 0",
}


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(Q, N) bool: query and item share at least one positive ground-truth label."""
    q = np.asarray(query_labels, dtype=np.float32)
    d = np.asarray(db_labels, dtype=np.float32)
    return (q @ d.T) > 0


def top_k(scores: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic top-``k`` per row of ``scores`` (higher is better): (scores, indices), both (Q, k).

    Ties are broken by ascending column index, also at the top-K boundary (``argpartition`` alone
    would pick an arbitrary subset of the items tied with the k-th score). ``offset`` is added to the
    returned indices (for database chunks).
    """
    scores = np.asarray(scores)
    q, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.empty((q, 0), scores.dtype), np.empty((q, 0), np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        thr = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        above = scores > thr
        equal = scores == thr
        need = k - above.sum(axis=1, keepdims=True)
        keep = above | (equal & (np.cumsum(equal, axis=1) <= need))
        idx = np.nonzero(keep)[1].reshape(q, k)  # row-major: ascending index within each row
    else:
        idx = np.broadcast_to(np.arange(n), (q, n)).copy()
    sc = np.take_along_axis(scores, idx, axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")
    return np.take_along_axis(sc, order, axis=1), np.take_along_axis(idx, order, axis=1) + offset


def merge_top_k(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Merge two (scores, indices) top lists into the top-``k`` with the same (-score, index) order."""
    s = np.concatenate([a[0], b[0]], axis=1)
    i = np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((i, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def average_precision(rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP@K per query from ranked relevance ``rel`` (Q, K): (ap, r_q) with r_q = relevant in top-K.

    AP@K(q) = (1/R_q) Σ_k P@k · rel_k; queries with R_q = 0 get AP = 0 here (the convention decides
    whether they enter the mean).
    """
    rel = np.asarray(rel, dtype=bool)
    cum = np.cumsum(rel, axis=1, dtype=np.float64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    r_q = cum[:, -1] if rel.shape[1] else np.zeros(rel.shape[0])
    num = (cum / ranks * rel).sum(axis=1)
    ap = np.divide(num, r_q, out=np.zeros_like(num), where=r_q > 0)
    return ap, r_q.astype(np.int64)


def mean_ap(ap: np.ndarray, r_q: np.ndarray, convention: str) -> float:
    """mAP under ``convention`` "skip" (mean over R_q > 0) or "zero" (R_q = 0 counts as 0)."""
    if convention == "skip":
        hit = r_q > 0
        return float(ap[hit].mean()) if hit.any() else 0.0
    if convention == "zero":
        return float(ap.mean()) if len(ap) else 0.0
    raise ValueError(f"unknown mAP convention {convention!r}; use one of {sorted(CONVENTIONS)}")


@dataclass
class RankingMetrics:
    """Everything one ranking yields: mAP both ways, P@K, and a PR curve over rank cut-offs."""

    map_skip: float
    map_zero: float
    queries: int
    queries_without_relevant: int
    precision_at: dict[int, float]
    pr_cutoffs: list[int]
    pr_precision: list[float]
    pr_recall: list[float]

    def to_dict(self) -> dict:
        return {
            "mAP": {"skip": self.map_skip, "zero": self.map_zero},
            "queries": self.queries, "queries_without_relevant_in_topk": self.queries_without_relevant,
            "precision_at": {str(k): v for k, v in self.precision_at.items()},
            "pr_curve": {"cutoff": self.pr_cutoffs, "precision": self.pr_precision,
                         "recall": self.pr_recall},
        }


def pr_cutoffs(k: int, points: int = 40) -> np.ndarray:
    """Rank cut-offs for a PR curve: about ``points`` log-spaced ranks from 1 to k."""
    return np.unique(np.round(np.geomspace(1, max(k, 1), points)).astype(np.int64))


class RankingAccumulator:
    """Per-query statistics gathered one query chunk at a time (so rankings never exist for all
    queries at once, which matters with K = 'all'), turned into ``RankingMetrics`` at the end."""

    def __init__(self, k: int, precision_ks: tuple[int, ...] = (10, 100), cutoffs: np.ndarray | None = None):
        self.k = k
        self.precision_ks = tuple(pk for pk in precision_ks if pk <= k)
        cutoffs = pr_cutoffs(k) if cutoffs is None else np.asarray(cutoffs)
        self.cutoffs = cutoffs[(cutoffs >= 1) & (cutoffs <= k)]
        self._ap, self._rq, self._hits, self._total = [], [], [], []

    def add(self, rel: np.ndarray, total_relevant: np.ndarray) -> None:
        """``rel`` (q, K) ranked relevance of a query chunk; ``total_relevant`` (q,) in the whole DB."""
        rel = np.asarray(rel, dtype=bool)
        ap, r_q = average_precision(rel)
        cum = np.cumsum(rel, axis=1)
        self._ap.append(ap)
        self._rq.append(r_q)
        cols = np.unique(np.concatenate([self.cutoffs, np.asarray(self.precision_ks, dtype=np.int64)]))
        self._hits.append((cols, cum[:, cols - 1].astype(np.float64)))
        self._total.append(np.asarray(total_relevant, dtype=np.float64))

    def result(self) -> RankingMetrics:
        ap, r_q = np.concatenate(self._ap), np.concatenate(self._rq)
        cols = self._hits[0][0]
        hits = np.concatenate([h for _, h in self._hits])
        col = {int(c): j for j, c in enumerate(cols)}
        tot = np.concatenate(self._total)[:, None]
        at = hits[:, [col[int(c)] for c in self.cutoffs]]
        recall = np.divide(at, tot, out=np.zeros_like(at), where=tot > 0)
        return RankingMetrics(
            map_skip=mean_ap(ap, r_q, "skip"), map_zero=mean_ap(ap, r_q, "zero"),
            queries=len(ap), queries_without_relevant=int((r_q == 0).sum()),
            precision_at={pk: float((hits[:, col[pk]] / pk).mean()) for pk in self.precision_ks},
            pr_cutoffs=[int(c) for c in self.cutoffs],
            pr_precision=[float(v) for v in (at / self.cutoffs).mean(axis=0)],
            pr_recall=[float(v) for v in recall.mean(axis=0)],
        )


def ranking_metrics(rel: np.ndarray, total_relevant: np.ndarray, precision_ks: tuple[int, ...] = (10, 100),
                    cutoffs: np.ndarray | None = None) -> RankingMetrics:
    """Metrics of ranked relevance ``rel`` (Q, K); ``total_relevant`` (Q,) counts relevant items in
    the whole database (the recall denominator of the PR curve)."""
    acc = RankingAccumulator(np.asarray(rel).shape[1], precision_ks, cutoffs)
    acc.add(rel, total_relevant)
    return acc.result()
