"""WSDHQ's additive quantizer: M full-dimensional codebooks, ICM codes, ridge least-squares codebooks.

Follows the authors' code (methods.md §1.6): block-diagonal k-means initialisation, ICM encoding
minimising the V-weighted distortion, and the unweighted ridge LS codebook update with dead
codewords restored. The update is split into ``statistics`` (per worker, per chunk) and ``solve``
(after summing), so the distributed trainer all-reduces ``CodebookStatistics.flatten()`` once.

``encode(x)`` takes nothing else, as the progressive quantizer's: the metric V̄ (``weights``), the
ICM sweeps and restarts are the quantizer's own and are saved with it, and the ICM block orders
come from a generator seeded with ``seed`` afresh for every call (a vector always gets the same
code), except inside ``block_orders_from(generator)``, where a trainer draws them from its own
seeded stream.
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from .base import Quantizer, as_codes, as_float_tensor, check_code_shape
from .icm import ICMTables, icm_encode
from .kmeans import kmeans
from .statistics import CodebookStatistics, solve_codebooks


class AdditiveQuantizer(Quantizer):
    """x̂ = Σ_m c_{m,b_m} with codebooks (M, K, D) float32; codes uint8 (N, M)."""

    kind = "additive"

    def __init__(self, dim: int, M: int = 4, K: int = 256, icm_sweeps: int = 3, ridge: float = 1e-3,
                 encode_batch_size: int = 8192, icm_restarts: int = 1, weights: Any = None, seed: int = 0):
        """``dim`` D; ``M`` codebooks of ``K`` codewords (code bits M·log2 K); ``icm_sweeps`` and
        ``icm_restarts`` (best of several block orders per sample; the authors run 1) of ``encode``;
        ``ridge`` the λ of the least-squares update (HᵀH + λI); ``encode_batch_size`` rows per ICM
        batch (memory: batch·M·K floats); ``weights`` the metric V; ``seed`` the ICM block orders."""
        check_code_shape(M, K)
        if dim < M:
            raise ValueError(f"need M <= dim for the block k-means start, got M={M}, dim={dim}")
        self.codebooks = torch.zeros(M, K, dim)
        self.icm_sweeps = icm_sweeps
        self.ridge = ridge
        self.encode_batch_size = encode_batch_size
        self.icm_restarts = icm_restarts
        # the metric: V (T, D), errors measured along its rows (WSDHQ: the tag directions V̄); None = L2
        self.weights = None if weights is None else as_float_tensor(weights, "weights", torch.float32)
        if self.weights is not None and self.weights.shape[1] != dim:
            raise ValueError(f"weights: expected V of shape (T, {dim}), got {tuple(self.weights.shape)}")
        self.seed = seed
        self.generator: torch.Generator | None = None  # set only inside ``block_orders_from``
        self.is_trained = False
        self._tables: tuple | None = None  # (codebooks, their version, V, ICMTables)

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

    def encode(self, x: Any) -> torch.Tensor:
        """ICM codes (N, M) uint8 minimising ‖V(x − x̂)‖² (V = ``weights``, or plain L2), with
        ``icm_sweeps`` sweeps from ``icm_restarts`` block orders (see the module docstring)."""
        if not self.is_trained:
            raise RuntimeError("AdditiveQuantizer is not trained: call init_kmeans(x) or fit(x) first")
        x = self._check_x(x).to(self.codebooks.device)
        V = None if self.weights is None else self.weights.to(self.codebooks.device)
        g = self.generator if self.generator is not None else torch.Generator().manual_seed(self.seed)
        codes = icm_encode(x, self.codebooks, V, self.icm_sweeps, g, self.encode_batch_size,
                           self._icm_tables(V), self.icm_restarts)
        return codes.to(torch.uint8)

    @contextlib.contextmanager
    def block_orders_from(self, generator: torch.Generator | None):
        """Within the block, ``encode`` draws its ICM block orders from ``generator`` (a trainer's
        seeded stream: successive calls get successive orders); None keeps the per-call seed."""
        previous, self.generator = self.generator, generator
        try:
            yield self
        finally:
            self.generator = previous

    def to(self, device: torch.device | str) -> "AdditiveQuantizer":
        """Codebooks and metric on ``device`` (as ``nn.Module.to`` does for the progressive kind)."""
        self.codebooks = self.codebooks.to(device)
        if self.weights is not None:
            self.weights = self.weights.to(device)
        return self

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

    def reseed_dead(self, dead: torch.Tensor, sample: Any, generator: torch.Generator | None = None) -> int:
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
        with self.block_orders_from(generator):
            codes = self.encode(x).long()
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

    def health(self, sample: Any, generator: torch.Generator | None = None) -> dict:
        """How the codebooks serve ``sample`` now: the codewords each codebook's codes use (live) and
        the mean squared error of the reconstruction. A collapsed codebook shows few live codewords."""
        x = self._check_x(sample).to(self.codebooks.device)
        with self.block_orders_from(generator):
            codes = self.encode(x).long()
        live = [int(torch.unique(codes[:, m]).numel()) for m in range(self.M)]
        err = ((x - self.decode(codes)) ** 2).sum(1).mean().item() if len(x) else float("nan")
        return {"live_codewords": live, "quantization_error": err}

    def fit(self, x: Any, iterations: int = 10, seed: int = 0) -> "AdditiveQuantizer":
        """Single-process training: k-means init, then ``iterations`` × (ICM encode, LS solve),
        under the quantizer's own metric ``weights``."""
        x = self._check_x(x)
        self.init_kmeans(x, seed)
        with self.block_orders_from(torch.Generator().manual_seed(seed)):
            for _ in range(iterations):
                self.solve(self.statistics(x, self.encode(x)))
        return self

    train = fit  # faiss's verb

    def _params(self) -> dict:
        return {"icm_sweeps": self.icm_sweeps, "icm_restarts": self.icm_restarts, "ridge": self.ridge,
                "encode_batch_size": self.encode_batch_size, "is_trained": self.is_trained, "seed": self.seed}

    def _arrays(self) -> dict[str, torch.Tensor]:
        return {} if self.weights is None else {"weights": self.weights}

    @classmethod
    def _from_params(cls, params: dict, codebooks: torch.Tensor,
                     arrays: dict[str, torch.Tensor] | None = None) -> "AdditiveQuantizer":
        M, K, D = codebooks.shape
        q = cls(D, M, K, int(params["icm_sweeps"]), float(params["ridge"]), int(params["encode_batch_size"]),
                int(params["icm_restarts"]), (arrays or {}).get("weights"), int(params["seed"]))
        q.codebooks = codebooks.to(torch.float32)
        q.is_trained = bool(params.get("is_trained", True))
        return q
