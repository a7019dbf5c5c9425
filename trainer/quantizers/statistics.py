"""Sufficient statistics of the codebook least-squares update, and the ridge solve.

The WSDHQ codebook update (methods.md §1.6, as the authors' ``update_centers``) is

    C = (HᵀH + ridge·I)⁻¹ HᵀX,     H ∈ {0,1}^{N×MK} one-hot codes, X ∈ R^{N×D} features.

Only G = HᵀH (MK×MK) and R = HᵀX (MK×D) depend on the data, and both are sums over samples, so
workers accumulate them over their shards, one ``all_reduce`` sums them, and every rank solves the
same float64 system: identical codebooks everywhere, equal to a single-process solve.

Why float64: G is a count matrix whose entries grow with N (millions of samples); float32 loses
the small counts of rare codewords and the solve's conditioning, float64 sums them exactly up to
2^53. The solve is (MK)³ = 10⁹ flops at M=4, K=256: negligible next to an epoch.

V-weighted least squares (minimising ‖V(X − HC)‖² instead of ‖X − HC‖²) is deliberately not offered:
for a full-column-rank V the weighted normal equations (HᵀH)C(VᵀV) = HᵀX(VᵀV) have the same
solution C = (HᵀH)⁻¹HᵀX, so the weighting only changes the ridge term. The authors' code also
ignores V here (methods.md §1.10 item 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CodebookStatistics:
    """G = HᵀH (MK, MK), R = HᵀX (MK, D), both float64, and the sample count n."""

    G: torch.Tensor
    R: torch.Tensor
    n: int

    @classmethod
    def zeros(cls, M: int, K: int, D: int, device: torch.device | str = "cpu") -> "CodebookStatistics":
        return cls(torch.zeros(M * K, M * K, dtype=torch.float64, device=device),
                   torch.zeros(M * K, D, dtype=torch.float64, device=device), 0)

    @classmethod
    def accumulate(cls, x: torch.Tensor, codes: torch.Tensor, K: int) -> "CodebookStatistics":
        """Statistics of one chunk: x (N, D), codes (N, M) integers in [0, K).

        G is never formed as a dense HᵀH product (that costs N·(MK)² and an N×MK matrix). Each
        sample contributes exactly M² ones to G, at (i_m, i_m') for its M flat codeword indices
        i_m = m·K + b_m, so G is one ``bincount`` of the N·M² pair indices i_m·MK + i_m' (its
        diagonal blocks hold codeword counts, the off-diagonal blocks co-occurrences). R is M
        ``index_add_`` calls adding each sample's x to its M codeword rows. Cost O(N·M² + N·M·D).
        """
        N, M = codes.shape
        MK = M * K
        flat = codes.long() + torch.arange(M, device=codes.device) * K
        pairs = (flat[:, :, None] * MK + flat[:, None, :]).reshape(-1)
        G = torch.bincount(pairs, minlength=MK * MK).reshape(MK, MK).to(torch.float64)
        x64 = x.detach().to(torch.float64)
        R = torch.zeros(MK, x.shape[1], dtype=torch.float64, device=x.device)
        for m in range(M):
            R.index_add_(0, flat[:, m], x64)
        return cls(G, R, N)

    def __add__(self, other: "CodebookStatistics") -> "CodebookStatistics":
        if self.G.shape != other.G.shape or self.R.shape != other.R.shape:
            raise ValueError(f"cannot add statistics of shapes G{tuple(self.G.shape)} R{tuple(self.R.shape)}"
                             f" and G{tuple(other.G.shape)} R{tuple(other.R.shape)}")
        return CodebookStatistics(self.G + other.G, self.R + other.R, self.n + other.n)

    def counts(self, M: int) -> torch.Tensor:
        """How many samples chose each codeword, (M, K) float64: the diagonal of G."""
        return self.G.diagonal().reshape(M, -1)

    def flatten(self) -> torch.Tensor:
        """[G, R, n] as one 1-D float64 tensor: a single ``dist.all_reduce(SUM)`` sums workers."""
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.G.device)
        return torch.cat([self.G.reshape(-1), self.R.reshape(-1), n])

    @classmethod
    def from_flat(cls, flat: torch.Tensor, M: int, K: int, D: int) -> "CodebookStatistics":
        """Inverse of ``flatten``; the length must be (MK)² + MK·D + 1."""
        MK = M * K
        expected = MK * MK + MK * D + 1
        if flat.ndim != 1 or flat.numel() != expected:
            raise ValueError(f"flat statistics for M={M}, K={K}, D={D} must have {expected} values, "
                             f"got shape {tuple(flat.shape)}")
        flat = flat.to(torch.float64)
        G = flat[: MK * MK].reshape(MK, MK).clone()
        R = flat[MK * MK: MK * MK + MK * D].reshape(MK, D).clone()
        return cls(G, R, int(round(float(flat[-1]))))


def solve_codebooks(stats: CodebookStatistics, M: int, K: int, ridge: float = 1e-3,
                    previous: torch.Tensor | None = None, dead_norm: float = 1e-8
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge LS codebooks (M, K, D) float64 from the statistics, and the (M, K) dead-codeword mask.

    Dead codewords (new squared norm < ``dead_norm``, which with the ridge is exactly the codewords
    no sample chose) get their ``previous`` value back, as the authors do; without ``previous``
    they stay zero.
    """
    MK = M * K
    if stats.G.shape != (MK, MK):
        raise ValueError(f"statistics are for {stats.G.shape[0]} codewords, expected M*K = {MK}")
    A = stats.G + ridge * torch.eye(MK, dtype=torch.float64, device=stats.G.device)
    C = torch.linalg.solve(A, stats.R)
    dead = (C * C).sum(1) < dead_norm
    if previous is not None:
        C[dead] = previous.reshape(MK, -1).to(C)[dead]
    return C.reshape(M, K, -1), dead.reshape(M, K)
