"""Tag-correlation-graph enhancement and DBSCAN merging of near-duplicate tags.

The paper confirms only "a tag correlation graph ... semantic enhancement and merging" with DBSCAN;
the formula, weights and parameters below are this project's choice. Two weightings of the graph:

``weights="ppmi"`` (default): neighbours count by how *informative* a co-occurrence is, not how
  frequent. PPMI_jk = max(0, log(C_jk N / (C_jj C_kk))) over images: C_jk = images carrying both
  tags, C_jj = images carrying j, N = images carrying any vocabulary tag; Â = row-normalise(PPMI); ṽ_j = normalize((1-β) v_j + β Σ_k Â_jk v_k)
  with β = ``mix``. A tag that co-occurs with everything (camera brands, "photo") has PMI ≈ 0 with
  everything (exactly 0 for a tag on every image), so it neither pulls others towards it nor is pulled; the own vector keeps an explicit
  share 1-β whatever the tag's frequency. A tag with no positive PMI keeps its own vector.
``weights="counts"``: methods.md §1.3 (b)-(c) as proposed: Â = D⁻¹(A + α S), S = I ("identity") or
  diag(row sums of A) ("degree"), ṽ_j = normalize(Σ_k Â_jk v_k). With raw counts a frequent tag's
  neighbours (hundreds of co-occurrences) swamp the self term α, so ṽ ≈ the mean of its neighbours,
  dominated by the frequent noise tags; DBSCAN then chains them into one mega-group (docs/tags.md).

DBSCAN(metric="cosine", eps, min_samples) on ṽ; with min_samples=1 the groups are the connected
components of the "cosine distance <= eps" graph, so they do not depend on input order;
merged embedding = normalize(mean of members' ṽ); unit name = its most frequent member.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from shards.config import at_least, require, within
from trainer.tags.vectors import off_diagonal


@dataclass
class GraphConfig:
    weights: Literal["ppmi", "counts"] = "ppmi"
    mix: float = 0.5                   # ppmi: β, the neighbours' share of the enhanced vector
    alpha: float = 1.0                 # counts: self-loop weight
    self_loop: Literal["identity", "degree"] = "identity"   # counts: S = I or diag(degree)
    eps: float = 0.05                  # DBSCAN cosine-distance radius
    min_samples: int = 1               # 1: every tag is a core point, no noise (methods.md inference)
    target_units: int | None = None    # when set, eps is bisected so the number of units is closest

    def __post_init__(self):
        within(self, "mix", 0, 1)
        at_least(self, "alpha", 0)
        require(0 < self.eps <= 2, "eps", f"must be a cosine distance in (0, 2], got {self.eps!r}")
        at_least(self, "min_samples", 1)
        at_least(self, "target_units", 1, optional=True)


def enhance(vectors: np.ndarray, cooc: sp.spmatrix, cfg: GraphConfig, n_images: int) -> np.ndarray:
    """Enhanced unit vectors ṽ for the given tags (rows of ``vectors`` already unit length).

    ``cooc`` is the tags' image co-occurrence with image frequencies on the diagonal; ``n_images``
    the number of images carrying at least one of the vocabulary tags.
    """
    if cfg.weights == "ppmi":
        return enhance_ppmi(vectors, cooc, n_images, cfg.mix)
    if cfg.weights == "counts":
        return enhance_counts(vectors, cooc, cfg.alpha, cfg.self_loop)
    raise ValueError(f"graph.weights must be 'ppmi' or 'counts', got {cfg.weights!r}")


def ppmi_weights(cooc: sp.spmatrix, n_images: int) -> sp.csr_matrix:
    """Row-normalised max(0, log(C_jk N / (C_jj C_kk))) over the off-diagonal of ``cooc``."""
    freq = np.asarray(sp.csr_matrix(cooc).diagonal(), dtype=np.float64)
    a = off_diagonal(cooc).tocoo()
    V = a.shape[0]
    if a.nnz == 0:
        return sp.csr_matrix((V, V))
    pmi = np.log(a.data) + np.log(n_images) - np.log(freq[a.row]) - np.log(freq[a.col])
    keep = pmi > 1e-9     # a tag on every image has PMI exactly 0: no weight
    p = sp.csr_matrix((pmi[keep], (a.row[keep], a.col[keep])), shape=(V, V))
    rows = np.asarray(p.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1 / np.where(rows > 0, rows, 1)) @ p)


def enhance_ppmi(vectors: np.ndarray, cooc: sp.spmatrix, n_images: int, mix: float) -> np.ndarray:
    """ṽ_j = normalize((1-β) v_j + β Σ_k Â_jk v_k), Â = ``ppmi_weights``, β = ``mix``."""
    if not 0 <= mix <= 1:
        raise ValueError(f"graph.mix must be in [0, 1], got {mix}")
    v = vectors.astype(np.float64)
    w = ppmi_weights(cooc, n_images)
    has = np.asarray(w.sum(axis=1)).ravel() > 0
    beta = np.where(has, mix, 0.0)[:, None]   # no informative neighbour: the own vector alone
    return _unit(((1 - beta) * v + beta * (w @ v)), vectors)


def enhance_counts(vectors: np.ndarray, cooc: sp.spmatrix, alpha: float, self_loop: str) -> np.ndarray:
    """ṽ = normalize(D⁻¹(A + αS) v), the methods.md proposal on raw counts."""
    if self_loop not in ("identity", "degree"):
        raise ValueError(f"graph.self_loop must be 'identity' or 'degree', got {self_loop!r}")
    a = off_diagonal(cooc)
    deg = np.asarray(a.sum(axis=1)).ravel()
    s = np.ones_like(deg) if self_loop == "identity" else deg
    m = a + sp.diags(alpha * s)
    d = np.asarray(m.sum(axis=1)).ravel()
    return _unit((m @ vectors.astype(np.float64)) / np.maximum(d, 1e-12)[:, None], vectors)


def _unit(out: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(out, axis=1)
    # a tag with no neighbours and no self weight has no direction left: keep its own vector
    bad = norms < 1e-12
    out[bad] = vectors[bad]
    norms[bad] = np.maximum(np.linalg.norm(vectors[bad], axis=1), 1e-12)
    return (out / norms[:, None]).astype(np.float32)


def dbscan_groups(x: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN cluster id per row; noise points (only when min_samples > 1) become singletons."""
    from sklearn.cluster import DBSCAN

    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine", algorithm="brute").fit_predict(x)
    noise = labels < 0
    labels = labels.astype(np.int64)
    labels[noise] = labels.max(initial=-1) + 1 + np.arange(noise.sum())
    return labels


def eps_for_target(x: np.ndarray, target: int, min_samples: int, steps: int = 24) -> float:
    """Bisect eps in (0, 1] so the number of groups is closest to ``target`` (more groups on ties)."""
    lo, hi = 0.0, 1.0
    best = (abs(len(x) - target), 1e-9)
    for _ in range(steps):
        mid = (lo + hi) / 2
        n = len(np.unique(dbscan_groups(x, mid, min_samples)))
        best = min(best, (abs(n - target), mid))
        if n > target:
            lo = mid
        elif n < target:
            hi = mid
        else:
            break
    return float(best[1])


def merge_units(labels: np.ndarray, enhanced: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """Groups of row indices ordered by their first (most frequent) member, and unit embeddings.

    Rows are in vocabulary order (most frequent first), so a group's first row is its name.
    """
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(labels):
        groups.setdefault(int(g), []).append(i)
    ordered = sorted(groups.values(), key=lambda rows: rows[0])
    emb = np.stack([enhanced[rows].astype(np.float64).mean(axis=0) for rows in ordered]) if ordered \
        else np.zeros((0, enhanced.shape[1]))
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return ordered, emb.astype(np.float32)
