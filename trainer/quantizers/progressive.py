"""DPQ's progressive (residual) quantizer: L levels of K codewords, assignment by cosine.

Follows the authors' Q-blocks (methods.md §2.4, §4 item 16). With r¹ = x, at each level l

    s_lk = cos(r^l, c_lk),  q_s^l = Σ_k softmax_k(γ·s_l)_k c_lk,  b_l = argmax_k s_lk,
    q_h^l = c_{l,b_l},  r^{l+1} = r^l − q_h^l  (the residual uses the HARD codeword),

and ``forward`` returns the cumulative soft and hard reconstructions X̂^l = Σ_{i≤l} q^i of every
level, from which the losses build D_soft, D_hard (summed over prefixes) and JCL. Because codes are
chosen level by level on residuals, a code prefix ``codes[:, :l]`` is itself an l-level code: one
model serves 8/16/24/32 bits (``decode`` sums the prefix).

γ defaults to 1 as in the authors' code (softmax of raw cosines, nearly uniform over 256
codewords); the paper asks for a "large γ", so it is a setting.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, as_float_tensor, check_code_shape, top_k_softmax
from .kmeans import kmeans


class ProgressiveOutput(NamedTuple):
    """Per-level cumulative reconstructions (lists of L tensors (B, D)) and hard codes (B, L) uint8."""

    soft: list[torch.Tensor]
    hard: list[torch.Tensor]
    codes: torch.Tensor


class ProgressiveQuantizer(nn.Module, Quantizer):
    """Residual codebooks as an ``nn.Parameter`` (L, K, D), trained by the DPQ losses.

    ``nn.Module.train(mode)`` keeps its PyTorch meaning here; the data-driven initialisation is
    ``fit(x)`` (residual k-means), the verb both quantizers share.
    """

    kind = "progressive"

    def __init__(self, dim: int, M: int = 4, K: int = 256, gamma: float = 1.0,
                 init_std: float = 0.01, seed: int = 0, top_k: int = 0):
        """``M`` levels of ``K`` codewords in ``dim`` D; ``gamma`` the soft path's softmax
        temperature; ``top_k`` > 0 restricts the soft path to each residual's top-k codewords
        (PHPQ's partial codebook attention; the hard path is unchanged); codebooks start
        ~ N(0, ``init_std``²) (DPQ's), or from ``fit``."""
        super().__init__()
        check_code_shape(M, K)
        g = torch.Generator().manual_seed(seed)
        self.codebooks = nn.Parameter(torch.randn(M, K, dim, generator=g) * init_std)
        self.gamma = gamma
        self.top_k = int(top_k)

    def forward(self, x: torch.Tensor) -> ProgressiveOutput:
        """Soft and hard cumulative reconstructions for every level, and the hard codes.

        Gradients reach the codebooks through both paths (and reach x unless the caller detaches
        it: DPQ's code trains only C with these losses, the paper end to end).
        """
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"x: expected (B, {self.D}), got {tuple(x.shape)}")
        r = x
        soft_sum = hard_sum = torch.zeros_like(x)
        soft, hard, codes = [], [], []
        for C in self.codebooks:
            sim = F.normalize(r, dim=1) @ F.normalize(C, dim=1).T
            b = sim.argmax(1)
            q_h = C[b]
            soft_sum = soft_sum + top_k_softmax(self.gamma * sim, self.top_k) @ C
            hard_sum = hard_sum + q_h
            soft.append(soft_sum)
            hard.append(hard_sum)
            codes.append(b)
            r = r - q_h
        return ProgressiveOutput(soft, hard, torch.stack(codes, 1).to(torch.uint8))

    @torch.no_grad()
    def encode(self, x: Any) -> torch.Tensor:
        """Hard codes (N, L) uint8: per level, the max-cosine codeword of the running residual."""
        x = as_float_tensor(x, "x", self.codebooks.dtype).to(self.codebooks.device)
        if x.shape[1] != self.D:
            raise ValueError(f"x: expected dimension {self.D}, got {x.shape[1]}")
        codes = torch.empty(x.shape[0], self.M, dtype=torch.uint8, device=x.device)
        r = x.clone()
        for m, C in enumerate(self.codebooks.detach()):
            b = (F.normalize(r, dim=1) @ F.normalize(C, dim=1).T).argmax(1)
            codes[:, m] = b.to(torch.uint8)
            r -= C[b]
        return codes

    @torch.no_grad()
    def fit(self, x: Any, seed: int = 0) -> "ProgressiveQuantizer":
        """Residual k-means initialisation (faiss k-means per level on the residuals).

        An option beyond DPQ (which starts from N(0, 0.01²)): under weak-tag losses the features
        move slowly, and a data-driven start avoids hundreds of dead codewords. k-means is L2, the
        assignment is cosine, so the residuals here follow the cosine assignment.
        """
        x = as_float_tensor(x, "x", torch.float32)
        if x.shape[1] != self.D or x.shape[0] < self.K:
            raise ValueError(f"x: need at least K={self.K} rows of dimension {self.D}, got {tuple(x.shape)}")
        r = x.clone()
        for m in range(self.M):
            C = kmeans(r.numpy(), self.K, seed + m)
            self.codebooks[m].copy_(C.to(self.codebooks))
            b = (F.normalize(r, dim=1) @ F.normalize(C, dim=1).T).argmax(1)
            r -= C[b]
        return self

    def _params(self) -> dict:
        return {"gamma": self.gamma, "top_k": self.top_k}

    @classmethod
    def _from_params(cls, params: dict, codebooks: torch.Tensor,
                     arrays: dict[str, torch.Tensor] | None = None) -> "ProgressiveQuantizer":
        L, K, D = codebooks.shape
        q = cls(D, L, K, float(params["gamma"]), top_k=int(params.get("top_k", 0)))
        with torch.no_grad():
            q.codebooks.copy_(codebooks.to(q.codebooks.dtype))
        return q
