"""A product quantizer trained by gradient: M sub-codebooks of unit codewords, cosine assignment.

The coding MeCoQ and MoPQ share (methods.md §3). The D dims are split into M contiguous blocks
(``np.array_split``, as the additive quantizer's k-means start); block m has K codewords, each of
unit norm. The codebooks are *stored* block-diagonal, (M, K, D) with zeros outside block m, so a
product code is an additive code whose codewords never overlap: the shared ``decode`` (sum of the
chosen codewords), ``lut`` (q·c_mk = q_m·c_mk), the faiss export and the evaluation read it as they
read the other kinds, with no product-specific path.

Assignment is by cosine per block: p_mk = softmax_k(α·cos(x_m, c_mk)) (soft), b_m = argmax_k
(hard). Unit codewords are MeCoQ's (the authors renormalise after every step); here the parameter
``weight`` is free and every use goes through its normalisation, so no step can leave the
codewords off the sphere and ``codebooks`` (what is saved and decoded) is always the normalised
view. A reconstruction Σ_m c_m,b_m therefore has norm exactly √M.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, as_float_tensor, check_code_shape, top_k_softmax
from .kmeans import kmeans


def block_masks(D: int, M: int) -> torch.Tensor:
    """(M, D) 0/1 masks of the contiguous blocks ``np.array_split(range(D), M)``."""
    masks = torch.zeros(M, D)
    for m, dims in enumerate(np.array_split(np.arange(D), M)):
        masks[m, torch.as_tensor(dims)] = 1.0
    return masks


class ProductQuantizer(nn.Module, Quantizer):
    """Block-diagonal unit codebooks (M, K, D) as an ``nn.Parameter``; codes uint8 (N, M)."""

    kind = "product"

    def __init__(self, dim: int, M: int = 4, K: int = 256, alpha: float = 10.0, seed: int = 0,
                 top_k: int = 0):
        """``dim`` D split into ``M`` blocks of ``K`` codewords; ``alpha`` the soft assignment's
        inverse temperature on cosines (MeCoQ: 10); ``top_k`` > 0 restricts it to each block's
        top-k codewords (PHPQ's partial codebook attention). Codewords start as normalised Gaussians."""
        super().__init__()
        check_code_shape(M, K)
        if dim < M:
            raise ValueError(f"need M <= dim for M blocks of dimensions, got M={M}, dim={dim}")
        self.alpha = float(alpha)
        self.top_k = int(top_k)
        self.register_buffer("masks", block_masks(dim, M), persistent=False)
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(M, K, dim, generator=g) * self.masks[:, None, :])

    def normalized(self) -> torch.Tensor:
        """The codewords in use: ``weight`` restricted to each block and scaled to unit norm."""
        return F.normalize(self.weight * self.masks[:, None, :], dim=-1)

    @property
    def codebooks(self) -> torch.Tensor:  # (M, K, D), what decode / lut / save read
        return self.normalized().detach()

    def similarities(self, x: torch.Tensor, C: torch.Tensor | None = None) -> torch.Tensor:
        """cos(x_m, c_mk), (N, M, K)."""
        C = self.normalized() if C is None else C
        xb = F.normalize(x[:, None, :] * self.masks[None], dim=-1)  # (N, M, D), block m of x, unit
        return torch.einsum("nmd,mkd->nmk", xb, C)

    def reconstruct(self, probs: torch.Tensor, C: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_m Σ_k p_mk c_mk, (N, D): soft codes (or one-hot ones) decoded with the current codewords,
        gradients reaching the codewords (and the codes, when they carry any)."""
        C = self.normalized() if C is None else C
        return torch.einsum("nmk,mkd->nd", probs, C)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``probs`` soft codes p (N, M, K); ``soft`` their reconstruction; ``hard`` the hard
        reconstruction with a straight-through assignment (forward: the argmax codewords; backward:
        the soft assignment's gradient, MoPQ's); ``codes`` the argmax (N, M) uint8."""
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"x: expected (B, {self.D}), got {tuple(x.shape)}")
        C = self.normalized()
        sim = self.similarities(x, C)
        probs = top_k_softmax(self.alpha * sim, self.top_k)  # the argmax is always among the kept
        b = sim.argmax(-1)
        onehot = F.one_hot(b, self.K).to(probs.dtype)
        st = onehot + probs - probs.detach()  # value: one-hot; gradient: the soft assignment's
        return {"probs": probs, "soft": self.reconstruct(probs, C), "hard": self.reconstruct(st, C),
                "codes": b.to(torch.uint8)}

    @torch.no_grad()
    def encode(self, x: Any) -> torch.Tensor:
        """Per block, the codeword of largest cosine (the forward pass's ``codes``), uint8 (N, M)."""
        x = as_float_tensor(x, "x", self.weight.dtype).to(self.weight.device)
        if x.shape[1] != self.D:
            raise ValueError(f"x: expected dimension {self.D}, got {x.shape[1]}")
        return self.similarities(x, self.codebooks).argmax(-1).to(torch.uint8)

    @torch.no_grad()
    def fit(self, x: Any, seed: int = 0) -> "ProductQuantizer":
        """Spherical start: faiss k-means per block on the block-normalised rows (n >= K)."""
        x = as_float_tensor(x, "x", torch.float32)
        if x.shape[1] != self.D or x.shape[0] < self.K:
            raise ValueError(f"x: need at least K={self.K} rows of dimension {self.D}, got {tuple(x.shape)}")
        W = torch.zeros_like(self.weight, device="cpu")
        for m, dims in enumerate(np.array_split(np.arange(self.D), self.M)):
            W[m][:, dims] = kmeans(F.normalize(x[:, dims], dim=1).numpy(), self.K, seed + m)
        self.weight.copy_(W.to(self.weight))
        return self

    def _params(self) -> dict:
        return {"alpha": self.alpha, "top_k": self.top_k}

    def _arrays(self) -> dict[str, torch.Tensor]:
        # the free parameter, so a loaded quantizer's normalised codewords are bit-identical (a
        # second normalisation of the saved codewords can move them by an ulp and flip a tied code)
        return {"weight": self.weight.detach()}

    @classmethod
    def _from_params(cls, params: dict, codebooks: torch.Tensor,
                     arrays: dict[str, torch.Tensor] | None = None) -> "ProductQuantizer":
        M, K, D = codebooks.shape
        q = cls(D, M, K, float(params["alpha"]), top_k=int(params.get("top_k", 0)))
        with torch.no_grad():
            q.weight.copy_((arrays or {}).get("weight", codebooks).to(q.weight.dtype))
        if not torch.allclose(q.codebooks, codebooks.to(q.weight.dtype), atol=1e-5):
            raise ValueError("product quantizer: the saved codebooks are not block-diagonal unit codewords")
        return q
