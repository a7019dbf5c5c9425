"""Tag-correlation-graph enhancement and DBSCAN merging of near-duplicate tags.

The paper confirms only "a tag correlation graph ... semantic enhancement and merging" with DBSCAN;
the formula, weights and parameters below are this project's choice, following the fallback in
methods.md §1.3 (b)-(e):
  Â = D⁻¹(A + α S)   A = off-diagonal co-occurrence counts, S = I ("identity", the methods.md
                     proposal) or diag(row sums of A) ("degree": α is then the own-vector share
                     relative to all neighbours together), D = row sums of A + α S;
  ṽ_j = normalize(Σ_k Â_jk v_k)   (D⁻¹ only rescales a row, so it does not change ṽ);
  DBSCAN(metric="cosine", eps, min_samples) on ṽ; with min_samples=1 the groups are the connected
  components of the "cosine distance <= eps" graph, so they do not depend on input order;
  merged embedding = normalize(mean of members' ṽ); unit name = its most frequent member.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from trainer.tags.vectors import off_diagonal


@dataclass
class GraphConfig:
    alpha: float = 1.0
    self_loop: Literal["identity", "degree"] = "identity"
    eps: float = 0.05                  # DBSCAN cosine-distance radius
    min_samples: int = 1               # 1: every tag is a core point, no noise (methods.md inference)
    target_units: int | None = None    # when set, eps is bisected so the number of units is closest


def enhance(vectors: np.ndarray, cooc: sp.spmatrix, alpha: float, self_loop: str) -> np.ndarray:
    """ṽ = normalize(D⁻¹(A + αS) v) over the given tags (rows of ``vectors`` already unit length)."""
    a = off_diagonal(cooc)
    deg = np.asarray(a.sum(axis=1)).ravel()
    s = np.ones_like(deg) if self_loop == "identity" else deg
    m = a + sp.diags(alpha * s)
    d = np.asarray(m.sum(axis=1)).ravel()
    out = (m @ vectors.astype(np.float64)) / np.maximum(d, 1e-12)[:, None]
    norms = np.linalg.norm(out, axis=1)
    # a tag with no neighbours and alpha=0 has no direction left: keep its own vector
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
