"""Losses of WSDHQ and DPQ (spec: ../shared/docs/methods.md §1.5, §2.3, §2.5).

The adaptive-margin loss is vectorised over (image, positive tag) pairs rather than over a
B x T x T cube: for each positive pair (i, j) the hinge over all tags k is one row
``relu(m_j,: - s_ij + s_i,:)``, so memory is (#positive pairs) x T, processed in chunks of
``pair_chunk`` rows (256 images x ~5 tags x 1000 tags is ~1.3M floats; the cube would be 256M).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def adaptive_margins(V: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """m_jk = 2^(1-gamma) (1 - cos(v_j, v_k))^gamma, (T, T), in [0, 2]."""
    Vn = F.normalize(V, dim=1)
    return 2.0 ** (1.0 - gamma) * (1.0 - Vn @ Vn.T).clamp_min(0.0) ** gamma


def adaptive_margin_loss(z: torch.Tensor, y: torch.Tensor, V: torch.Tensor, gamma: float = 1.0,
                         mask: Literal["pos_neg", "all"] = "pos_neg", margins: torch.Tensor | None = None,
                         pair_chunk: int = 4096) -> torch.Tensor:
    """Adaptive cosine-margin ranking loss between image embeddings and tag (or label) embeddings.

    ``pos_neg`` (WSDHQ, §1.5.1): sum over i, positive j, negative k of
    max(0, m_jk - cos(z_i, v_j) + cos(z_i, v_k)) / sum_i |P_i| (T - |P_i|).
    ``all`` (DPQ as coded, §2.3): k runs over every label (the k = j term is 0), normaliser T * sum_i |P_i|.
    Images without positives add nothing to numerator or denominator; a batch without any gives a
    zero that still has a graph (so DDP and ``backward`` work).
    """
    y = y.to(z.dtype)
    T = y.shape[1]
    S = F.normalize(z, dim=1) @ F.normalize(V, dim=1).T  # (B, T) cosines
    Mg = adaptive_margins(V, gamma) if margins is None else margins
    n_pos = y.sum(1)
    denom = (n_pos * (T - n_pos)).sum() if mask == "pos_neg" else T * n_pos.sum()
    rows, cols = y.nonzero(as_tuple=True)
    if rows.numel() == 0 or denom.item() == 0:
        return S.sum() * 0.0
    total = S.new_zeros(())
    for a in range(0, rows.numel(), pair_chunk):
        i, j = rows[a:a + pair_chunk], cols[a:a + pair_chunk]
        hinge = F.relu(Mg[j] - S[i, j].unsqueeze(1) + S[i])  # (P, T) over k
        if mask == "pos_neg":
            hinge = hinge * (1.0 - y[i])
        total = total + hinge.sum()
    return total / denom


def quantization_loss(target: torch.Tensor, recon: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """mean_i ||W (t_i - r_i)||^2 with W (T, D): the error measured along each tag direction.

    Raw reading (authors' code, §1.5.2): t = raw tanh f, W = V as given.
    Sphere reading (paper): t = z = f/||f||, W = row-normalised V, so each term is
    (cos(v_t, z_i) - v̄_tᵀ ẑ_i)^2 with ẑ_i the reconstruction of z_i (a cosine when ||ẑ_i|| = 1).
    ``recon`` is held fixed: codes and codebooks get no gradient.
    """
    return ((target - recon.detach()) @ W.T).pow(2).sum(1).mean()


def classification_loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """DPQ's L_C before its weight: mean softmax CE (single-label) or mean sigmoid BCE over B x L."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return F.cross_entropy(logits, y.argmax(1))


def progressive_distortions(x: torch.Tensor, soft: list[torch.Tensor], hard: list[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPQ §2.5: D_soft and D_hard summed over every prefix (cumulative reconstructions), and the
    joint central loss JCL between the final soft and hard reconstructions; means over batch x dims."""
    d_soft = sum(((x - s) ** 2).mean() for s in soft)
    d_hard = sum(((x - h) ** 2).mean() for h in hard)
    jcl = ((soft[-1] - hard[-1]) ** 2).mean()
    return d_soft, d_hard, jcl


def reading_target(f: torch.Tensor, reading: Literal["sphere", "raw"]) -> torch.Tensor:
    """What a quantization reading quantizes: z = f/||f|| on the sphere (paper), raw tanh f (code)."""
    return F.normalize(f, dim=1) if reading == "sphere" else f


def reading_weights(V: torch.Tensor, reading: Literal["sphere", "raw"]) -> torch.Tensor:
    """The tag directions the error is measured along: row-normalised V̄ (sphere) or V as given (raw)."""
    return F.normalize(V, dim=1) if reading == "sphere" else V
