"""PQ-AG-style robustness of the codes to adversarial queries (methods.md §3, issue 17).

A retrieval system answers queries from the public, so a query image may be perturbed, within an
L∞ budget, to move its codes and with them the neighbours it retrieves. PQ-AG's exact loss and
step sizes are unconfirmed; this module implements the "likely objective" of methods.md §3:
iterative gradient-sign steps (PGD with a seeded random start) that push the query's soft codeword
distribution p_mk = softmax_k(α·cos(x_m, c_mk)) away from the clean one.

Choices made here (what the paper leaves open):

- **Additive** quantizers (WSDHQ) have full-dimensional codebooks, so there are no sub-vectors:
  x_m is the whole embedding, and p_m is the softmax over the per-codebook cosine between the
  embedding and each codeword of codebook m. (The ICM code is not an argmax of that cosine, but the
  cosine ranks how strongly each codeword explains the embedding, and it is differentiable.)
- **Progressive** quantizers (DPQ) quantize a running residual: x_m is the residual after the
  previous levels' hard codewords (the same path as ``ProgressiveQuantizer.encode``; the argmax
  picks are not differentiated, the residual is).
- The loss is either ``kl`` = Σ_m KL(p_m(clean) ‖ p_m(adv)), or ``ce`` = Σ_m −log p_m(adv)[b_m],
  with b the clean hard code from the quantizer's own ``encode``; both are maximised.
- Images are ImageNet-normalised by ``shards.transforms``; the attack works in pixel space [0, 1]
  (ε in 1/255 units), clamps there and hands back normalised tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shards.transforms import IMAGENET_MEAN, IMAGENET_STD
from trainer.losses import reading_target

LOSSES = ("kl", "ce")


@dataclass(frozen=True)
class AttackConfig:
    """White-box L∞ attack. ``eps`` and ``step_size`` are in 1/255 pixel units; ``step_size`` None
    means 2.5·ε/steps (Madry et al.'s rule, so the walk can reach the budget's corner from any start)."""

    eps: float = 8.0
    steps: int = 10
    step_size: float | None = None
    alpha: float = 10.0  # MeCoQ's soft-assignment scale (methods.md §3)
    loss: str = "kl"
    random_start: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0 (1/255 units), got {self.eps}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def step(self) -> float:
        """Step size in [0, 1] pixel units."""
        size = self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)
        return size / 255.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (N, 3, H, W) back to [0, 1] pixels (unclamped)."""
    return x * IMAGENET_STD.to(x) + IMAGENET_MEAN.to(x)


def to_normalised(p: torch.Tensor) -> torch.Tensor:
    return (p - IMAGENET_MEAN.to(p)) / IMAGENET_STD.to(p)


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"query images: expected ImageNet-normalised (N, 3, H, W), got {tuple(x.shape)}; "
                         "the attack perturbs pixels, so feature checkpoints (encoder.kind=mlp) cannot be attacked")


def embed_with_grad(model, x: torch.Tensor) -> torch.Tensor:
    """``InferenceModel.embed`` without its ``no_grad``: the attack needs d(embedding)/d(pixels)."""
    return reading_target(model.encoder(x), model.space)


def codeword_logits(quantizer, e: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·cos(x_m, c_mk), (N, M, K): additive = whole embedding vs each codebook; progressive = the
    running residual of the hard path vs each level (see the module docstring)."""
    C = quantizer.codebooks.detach().to(e)
    Cn = F.normalize(C, dim=2)
    if quantizer.kind == "additive":
        return alpha * torch.einsum("nd,mkd->nmk", F.normalize(e, dim=1), Cn)
    if quantizer.kind == "progressive":
        r, out = e, []
        for m in range(C.shape[0]):
            sim = F.normalize(r, dim=1) @ Cn[m].T
            out.append(alpha * sim)
            r = r - C[m][sim.detach().argmax(1)]
        return torch.stack(out, 1)
    raise ValueError(f"quantizer kind {quantizer.kind!r}: the attack knows 'additive' and 'progressive'")


def attack_objective(logits: torch.Tensor, clean_logits: torch.Tensor, clean_codes: torch.Tensor,
                     loss: str) -> torch.Tensor:
    """Per-query divergence from the clean assignment, (N,), summed over codebooks (to maximise)."""
    logp = F.log_softmax(logits, dim=2)
    if loss == "kl":
        p0 = F.softmax(clean_logits, dim=2)
        return (p0 * (F.log_softmax(clean_logits, dim=2) - logp)).sum((1, 2))
    return -logp.gather(2, clean_codes.long().unsqueeze(2)).squeeze(2).sum(1)


def attack(model, x: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """Adversarial versions of the ImageNet-normalised query images ``x`` (same shape, normalised):
    ‖pixels(adv) − pixels(x)‖∞ ≤ ε/255 and pixels(adv) ∈ [0, 1] (x's own pixels are clamped first,
    so an input slightly outside the range from resizing stays within ε of its clamped self)."""
    _check_images(x)
    x = x.detach()
    if cfg.eps == 0 or cfg.steps == 0:
        return x.clone()
    eps = cfg.eps / 255.0
    q = model.quantizer
    clean = to_pixels(x).clamp(0, 1)
    with torch.no_grad():
        x0 = to_normalised(clean)
        e0 = embed_with_grad(model, x0)
        clean_logits = codeword_logits(q, e0, cfg.alpha)
        clean_codes = q.encode(e0).to(x.device)
    adv = clean.clone()
    if cfg.random_start:
        g = torch.Generator().manual_seed(cfg.seed)
        adv = (clean + (torch.rand(clean.shape, generator=g) * 2 - 1).to(clean) * eps).clamp(0, 1)
    for _ in range(cfg.steps):
        adv.requires_grad_(True)
        obj = attack_objective(codeword_logits(q, embed_with_grad(model, to_normalised(adv)), cfg.alpha),
                               clean_logits, clean_codes, cfg.loss).sum()
        (grad,) = torch.autograd.grad(obj, adv)
        with torch.no_grad():
            adv = adv + cfg.step * grad.sign()
            adv = torch.max(torch.min(adv, clean + eps), clean - eps).clamp(0, 1)
    return to_normalised(adv.detach())


@torch.no_grad()
def ranking(model, x: torch.Tensor, db_codes: np.ndarray, k: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """AQD top-``k`` of the query images against database codes (eval.scoring's searcher, the
    evaluation's tie-breaking), plus the queries' own codes: (indices (Q, k), codes (Q, M))."""
    from eval.scoring import search_aqd

    q = model.quantizer
    e = torch.cat([model.embed(x[i:i + batch]) for i in range(0, len(x), batch)]).cpu()
    lut = q.lut(e).cpu().numpy()
    _, ids = search_aqd(lut, np.ascontiguousarray(db_codes), min(k, len(db_codes)))
    return ids, q.encode(e).cpu().numpy()


def retrieval_map(ids: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, convention: str = "skip") -> float:
    """mAP@k of a ranking with multi-hot labels (eval.metrics, the evaluation's conventions)."""
    from eval.metrics import ranking_metrics, relevance

    rel_all = relevance(q_labels, db_labels)
    rel = np.take_along_axis(rel_all, ids, axis=1)
    m = ranking_metrics(rel, rel_all.sum(1), precision_ks=(min(10, ids.shape[1]),))
    return m.map_skip if convention == "skip" else m.map_zero


def compare(ids_clean: np.ndarray, ids_adv: np.ndarray, codes_clean: np.ndarray, codes_adv: np.ndarray,
            top: int = 10) -> dict:
    """How much the attack moved the answers: mean fraction of the clean top-``top`` neighbours no
    longer in the perturbed top-``top`` (as sets, order ignored), and mean codewords changed per query."""
    t = min(top, ids_clean.shape[1])
    changed = [1.0 - len(set(a[:t]) & set(b[:t])) / t for a, b in zip(ids_clean, ids_adv)]
    return {f"top{top}_changed": float(np.mean(changed)) if changed else 0.0,
            "code_flips_per_query": float((codes_clean != codes_adv).sum(1).mean()) if len(codes_clean) else 0.0}
