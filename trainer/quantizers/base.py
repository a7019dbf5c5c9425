"""The verbs every quantizer shares: decode, look-up tables, and `.npz` persistence.

Shaped after faiss's ``contrib/torch/quantization.py`` (``train`` / ``encode`` / ``decode`` on torch
tensors), with ``lut`` added for asymmetric inner-product scoring. Inputs may be torch tensors or
numpy arrays; outputs are always torch tensors (codes ``uint8``, vectors in the codebooks' dtype).

Both kinds decode the same way, x̂ = Σ_m c_{m, b_m}: the additive quantizer's codebooks are
full-dimensional, and the progressive quantizer's levels are residual codebooks, so a code prefix
``codes[:, :l]`` decodes to the first l levels' sum. That is why ``decode`` and ``lut`` live here.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F


def as_float_tensor(x: Any, name: str = "x", dtype: torch.dtype | None = None) -> torch.Tensor:
    """A 2-D float tensor from a tensor or array; one clear error otherwise."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    return t if dtype is None else t.to(dtype)


def top_k_softmax(logits: torch.Tensor, k: int = 0) -> torch.Tensor:
    """Softmax over the last axis restricted to each row's ``k`` largest logits (PHPQ's partial
    codebook attention): the rest are masked to -inf, so their probabilities are exactly 0 and no
    gradient reaches them. ``k`` <= 0 or >= the axis length: the full softmax, bit for bit. Exactly
    k entries are kept (ties broken by ``topk``)."""
    if k <= 0 or k >= logits.shape[-1]:
        return torch.softmax(logits, dim=-1)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def as_codes(codes: Any, M: int, K: int) -> torch.Tensor:
    """Codes as int64 (N, m) with m <= M and every value < K."""
    c = torch.as_tensor(codes)
    if c.ndim != 2 or c.shape[1] > M or c.dtype.is_floating_point:
        raise ValueError(f"codes: expected an integer (N, m<={M}) array, "
                         f"got {c.dtype} {tuple(c.shape)}")
    c = c.long()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= K):
        raise ValueError(f"codes: values must lie in [0, {K}), "
                         f"got [{int(c.min())}, {int(c.max())}]")
    return c


def check_code_shape(M: int, K: int) -> None:
    """Codes are uint8 (N, M): 1 <= K <= 256 codewords per codebook, M >= 1 codebooks."""
    if not 1 <= K <= 256:
        raise ValueError(f"K must be in [1, 256] for uint8 codes, got {K}")
    if M < 1:
        raise ValueError(f"M must be >= 1, got {M}")


@dataclass(frozen=True)
class CodeSpec:
    """What a code is: ``M`` uint8 columns, each one of ``K`` codewords of dimension ``D`` from a
    quantizer of ``kind``. Written once (the quantizer file, the inference checkpoint's meta.json and
    the code manifest carry ``to_dict()``) and read back from there, never recomputed elsewhere."""

    kind: str
    M: int
    K: int
    D: int

    @property
    def bits(self) -> int:
        """Bits of information per code, M·log2 K (K=256: 8 per codebook; K=16: 4)."""
        return self.M * math.ceil(math.log2(self.K)) if self.K > 1 else 0

    def to_dict(self) -> dict:
        return {**asdict(self), "bits": self.bits}

    @classmethod
    def from_dict(cls, d: dict) -> "CodeSpec":
        spec = cls(str(d["kind"]), int(d["M"]), int(d["K"]), int(d["D"]))
        if "bits" in d and int(d["bits"]) != spec.bits:
            raise ValueError(f"code spec {d}: bits disagrees with M·log2 K = {spec.bits}")
        return spec


class Quantizer:
    """Common interface: ``encode(x)``, ``decode``, ``lut``, ``save`` / ``load``; codebooks (M, K, D).

    Subclasses set ``kind``, hold ``codebooks`` and implement ``encode``, ``_params`` (JSON-able
    constructor arguments), ``_from_params`` and, when they own more arrays than the codebooks
    (the additive quantizer's metric), ``_arrays``. Everything ``encode`` depends on is saved, so
    a quantizer loaded alone gives the codes its model gave.
    """

    kind: ClassVar[str]
    codebooks: torch.Tensor

    @property
    def M(self) -> int:
        return self.codebooks.shape[0]

    @property
    def K(self) -> int:
        return self.codebooks.shape[1]

    @property
    def D(self) -> int:
        return self.codebooks.shape[2]

    @property
    def spec(self) -> CodeSpec:
        return CodeSpec(self.kind, self.M, self.K, self.D)

    def encode(self, x: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, codes: Any) -> torch.Tensor:
        """Sum of the chosen codewords, (N, D); a code matrix with m < M columns decodes its prefix."""
        c = as_codes(codes, self.M, self.K).to(self.codebooks.device)
        m = c.shape[1]
        table = self.codebooks.detach()[:m].reshape(m * self.K, self.D)
        offsets = torch.arange(m, device=c.device) * self.K
        # embedding_bag sums the m looked-up rows without materialising an (N, m, D) tensor.
        return F.embedding_bag(c + offsets, table, mode="sum")

    @torch.no_grad()
    def lut(self, queries: Any) -> torch.Tensor:
        """Inner products q·c_mk, (Q, M, K): the asymmetric score of code b is Σ_m lut[q, m, b_m]."""
        q = as_float_tensor(queries, "queries", self.codebooks.dtype).to(self.codebooks.device)
        if q.shape[1] != self.D:
            raise ValueError(f"queries: expected dimension {self.D}, got {q.shape[1]}")
        return torch.einsum("qd,mkd->qmk", q, self.codebooks.detach())

    def _params(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _arrays(self) -> dict[str, torch.Tensor]:
        """Arrays besides the codebooks that ``encode`` depends on (saved beside them)."""
        return {}

    @classmethod
    def _from_params(cls, params: dict, codebooks: torch.Tensor,
                     arrays: dict[str, torch.Tensor]) -> "Quantizer":  # pragma: no cover
        raise NotImplementedError

    def save(self, path: str | Path | IO[bytes]) -> None:
        """Write ``kind``, the JSON params, the codebooks and ``_arrays`` as plain arrays (a path or
        binary file)."""
        extra = {k: v.detach().cpu().numpy() for k, v in self._arrays().items()}
        np.savez(path, kind=np.array(self.kind), params=np.array(json.dumps(self._params())),
                 codebooks=self.codebooks.detach().cpu().numpy(), **extra)

    @classmethod
    def load(cls, path: str | Path | IO[bytes]) -> "Quantizer":
        """Read a quantizer written by ``save`` (``allow_pickle=False``); the kind must match."""
        kind, params, codebooks, arrays = read_npz(path)
        if kind != cls.kind:
            raise ValueError(f"{path}: holds a {kind!r} quantizer, not {cls.kind!r}")
        return cls._from_params(params, codebooks, arrays)


def read_npz(path: str | Path | IO[bytes]) -> tuple[str, dict, torch.Tensor, dict[str, torch.Tensor]]:
    """(kind, params, codebooks, other arrays) from a quantizer ``.npz``; errors name the file and key."""
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError) as e:  # not a zip: numpy would want to unpickle it
        raise ValueError(f"{path}: cannot read quantizer .npz ({e})") from e
    with z:
        missing = {"kind", "params", "codebooks"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a quantizer file, missing {sorted(missing)}")
        kind, params, codebooks = str(z["kind"]), json.loads(str(z["params"])), z["codebooks"]
        arrays = {k: torch.from_numpy(z[k]) for k in z.files if k not in ("kind", "params", "codebooks")}
    if codebooks.ndim != 3:
        raise ValueError(f"{path}: codebooks must be (M, K, D), got shape {codebooks.shape}")
    return kind, params, torch.from_numpy(codebooks), arrays
