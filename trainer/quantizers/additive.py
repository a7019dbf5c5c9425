"""WSDHQ's additive quantizer: M full-dimensional codebooks, ICM codes, ridge least-squares codebooks.

Follows the authors' code (methods.md §1.6): block-diagonal k-means initialisation, ICM encoding
minimising the V-weighted distortion, and the unweighted ridge LS codebook update with dead
codewords restored. The update is split into ``statistics`` (per worker, per chunk) and ``solve``
(after summing), so the distributed trainer all-reduces ``CodebookStatistics.flatten()`` once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import Quantizer, as_codes, as_float_tensor
from .icm import ICMTables, icm_encode
from .kmeans import kmeans
from .statistics import CodebookStatistics, solve_codebooks


@dataclass
class AdditiveQuantizerConfig:
    """Settings of the WSDHQ quantizer (defaults are the authors')."""

    num_codebooks: int = 4         # M; code bits = M * log2(K)
    codebook_size: int = 256       # K
    icm_sweeps: int = 3            # max_iter_update_b
    ridge: float = 1e-3            # λ of the LS update (HᵀH + ridge·I)
    encode_batch_size: int = 8192  # rows per ICM batch; bounds memory at batch·M·K floats
    icm_restarts: int = 1          # >1: ICM from several block orders, best per sample (not in the paper)


class AdditiveQuantizer(Quantizer):
    """x̂ = Σ_m c_{m,b_m} with codebooks (M, K, D) float32; codes uint8 (N, M)."""

    kind = "additive"

    def __init__(self, dim: int, num_codebooks: int = 4, codebook_size: int = 256,
                 icm_sweeps: int = 3, ridge: float = 1e-3, encode_batch_size: int = 8192,
                 icm_restarts: int = 1):
        if not 1 <= codebook_size <= 256:
            raise ValueError(f"codebook_size must be in [1, 256] for uint8 codes, got {codebook_size}")
        if num_codebooks < 1 or dim < num_codebooks:
            raise ValueError(f"need 1 <= num_codebooks <= dim, got num_codebooks={num_codebooks}, dim={dim}")
        self.codebooks = torch.zeros(num_codebooks, codebook_size, dim)
        self.icm_sweeps = icm_sweeps
        self.ridge = ridge
        self.encode_batch_size = encode_batch_size
        self.icm_restarts = icm_restarts
        self.is_trained = False
        self._tables: tuple | None = None  # (codebooks, their version, V, ICMTables)

    @classmethod
    def from_config(cls, cfg: AdditiveQuantizerConfig, dim: int) -> "AdditiveQuantizer":
        return cls(dim, cfg.num_codebooks, cfg.codebook_size, cfg.icm_sweeps, cfg.ridge,
                   cfg.encode_batch_size, cfg.icm_restarts)

    def _check_x(self, x: Any) -> torch.Tensor:
        t = as_float_tensor(x, "x", torch.float32)
        if t.shape[1] != self.D:
            raise ValueError(f"x: expected dimension {self.D}, got {t.shape[1]}")
        return t

    def init_kmeans(self, x: Any, seed: int = 0) -> None:
        """PQ-like start: k-means (faiss) per contiguous block of dims.

        Block m's centroids go into codebook m's columns of block m, zeros elsewhere. Blocks are
        ``np.array_split`` of the D dims (sizes differ by at most one; 300/M exactly for M | 300).
        """
        x = self._check_x(x)
        if x.shape[0] < self.K:
            raise ValueError(f"k-means initialisation needs at least K={self.K} samples, got {x.shape[0]}")
        xn = x.numpy().astype(np.float32)
        C = torch.zeros_like(self.codebooks)
        for m, dims in enumerate(np.array_split(np.arange(self.D), self.M)):
            C[m][:, dims] = kmeans(xn[:, dims], self.K, seed + m)
        self.codebooks = C
        self.is_trained = True

    def encode(self, x: Any, weights: Any = None, sweeps: int | None = None,
               generator: torch.Generator | None = None, restarts: int | None = None) -> torch.Tensor:
        """ICM codes (N, M) uint8 minimising ‖V(x − x̂)‖² (V = ``weights`` (T, D), or plain L2);
        ``sweeps`` / ``restarts`` default to the quantizer's settings."""
        if not self.is_trained:
            raise RuntimeError("AdditiveQuantizer is not trained: call init_kmeans(x) or fit(x) first")
        x = self._check_x(x)
        V = None if weights is None else as_float_tensor(weights, "weights", torch.float32)
        codes = icm_encode(x, self.codebooks, V, self.icm_sweeps if sweeps is None else sweeps, generator,
                           self.encode_batch_size, self._icm_tables(V),
                           self.icm_restarts if restarts is None else restarts)
        return codes.to(torch.uint8)

    def _icm_tables(self, V: torch.Tensor | None) -> ICMTables:
        """Tables cached per (codebooks, V) so per-batch encoding in training pays only its batch.

        Codebooks are matched by identity and in-place version counter (``solve`` or a state load
        replaces them), V by value (callers often rebuild an equal V per batch; comparing T·D values
        is far cheaper than the M²K²D table build).
        """
        C, cached = self.codebooks, self._tables
        hit = (cached is not None and cached[0] is C and cached[1] == C._version
               and (V is None) == (cached[2] is None)
               and (V is None or (V.shape == cached[2].shape and V.device == cached[2].device
                                  and torch.equal(V, cached[2]))))
        if not hit:
            self._tables = (C, C._version, None if V is None else V.clone(), ICMTables.build(C, V))
        return self._tables[3]

    def statistics(self, x: Any, codes: Any) -> CodebookStatistics:
        """G = HᵀH and R = HᵀX of this chunk, to be summed (``+`` or all-reduce) and ``solve``d."""
        x = self._check_x(x)
        c = as_codes(codes, self.M, self.K)
        if c.shape != (x.shape[0], self.M):
            raise ValueError(f"codes: expected shape ({x.shape[0]}, {self.M}), got {tuple(c.shape)}")
        return CodebookStatistics.accumulate(x, c, self.K)

    def solve(self, stats: CodebookStatistics) -> torch.Tensor:
        """Replace the codebooks by the ridge LS solution; returns the (M, K) mask of dead codewords
        (no sample chose them), which keep their previous values."""
        C, dead = solve_codebooks(stats, self.M, self.K, self.ridge, previous=self.codebooks)
        self.codebooks = C.to(torch.float32)
        self.is_trained = True
        return dead

    def reseed_dead(self, dead: torch.Tensor, sample: Any, weights: Any = None,
                    generator: torch.Generator | None = None) -> int:
        """Re-seed dead codewords from the worst-coded rows of ``sample``; returns how many.

        Restoring a dead codeword's previous value (the authors' policy, what ``solve`` does) leaves
        it where the features were when it died; as the encoder moves, such codewords are never
        chosen again and a codebook collapses (measured: 25 of 256 live at 8 bits on the demo).
        Here dead codeword (m, k) takes a distinct row i among the highest-error rows and becomes the
        residual that row needs from codebook m: x_i − Σ_{m'≠m} c_{m', b_im'}. The result depends
        only on the codebooks and ``sample``, so ranks holding the same gathered sample stay equal.
        """
        dead = torch.as_tensor(dead, dtype=torch.bool).cpu()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        x = self._check_x(sample).to(self.codebooks.device)
        codes = self.encode(x, weights, generator=generator).long()
        recon = self.decode(codes)
        err = ((x - recon) ** 2).sum(1)
        worst = torch.argsort(err.cpu(), descending=True, stable=True)
        m_idx, k_idx = dead.nonzero(as_tuple=True)
        rows = worst[torch.arange(n_dead) % len(worst)].to(x.device)
        m_dev, k_dev = m_idx.to(x.device), k_idx.to(x.device)
        C = self.codebooks.clone()
        C[m_dev, k_dev] = x[rows] - recon[rows] + self.codebooks[m_dev, codes[rows, m_dev]]
        self.codebooks = C
        return n_dead

    def health(self, sample: Any, weights: Any = None, generator: torch.Generator | None = None) -> dict:
        """How the codebooks serve ``sample`` now: the codewords each codebook's codes use (live) and
        the mean squared error of the reconstruction. A collapsed codebook shows few live codewords."""
        x = self._check_x(sample).to(self.codebooks.device)
        codes = self.encode(x, weights, generator=generator).long()
        live = [int(torch.unique(codes[:, m]).numel()) for m in range(self.M)]
        err = ((x - self.decode(codes)) ** 2).sum(1).mean().item() if len(x) else float("nan")
        return {"live_codewords": live, "quantization_error": err}

    def fit(self, x: Any, iterations: int = 10, weights: Any = None, seed: int = 0) -> "AdditiveQuantizer":
        """Single-process training: k-means init, then ``iterations`` × (ICM encode, LS solve)."""
        x = self._check_x(x)
        self.init_kmeans(x, seed)
        g = torch.Generator().manual_seed(seed)
        for _ in range(iterations):
            self.solve(self.statistics(x, self.encode(x, weights, generator=g)))
        return self

    train = fit  # faiss's verb

    def _params(self) -> dict:
        return {"icm_sweeps": self.icm_sweeps, "icm_restarts": self.icm_restarts, "ridge": self.ridge,
                "encode_batch_size": self.encode_batch_size, "is_trained": self.is_trained}

    @classmethod
    def _from_params(cls, params: dict, codebooks: torch.Tensor) -> "AdditiveQuantizer":
        M, K, D = codebooks.shape
        defaults = AdditiveQuantizerConfig()
        q = cls(D, M, K, int(params.get("icm_sweeps", defaults.icm_sweeps)),
                float(params.get("ridge", defaults.ridge)),
                int(params.get("encode_batch_size", defaults.encode_batch_size)),
                int(params.get("icm_restarts", defaults.icm_restarts)))
        q.codebooks = codebooks.to(torch.float32)
        q.is_trained = bool(params.get("is_trained", True))
        return q
