"""Quantizers: WSDHQ's additive (ICM + ridge LS), DPQ's progressive (residual, cosine) and the
gradient-trained product kind (MeCoQ, MoPQ).

One interface (``encode(x)`` -> uint8 (N, M), ``decode``, ``lut``, ``save`` / ``load`` to ``.npz``);
``load_quantizer(path)`` reads either kind, with everything its ``encode`` depends on.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO

from .additive import AdditiveQuantizer
from .base import CodeSpec, Quantizer, read_npz
from .icm import distortion, icm_encode
from .product import ProductQuantizer
from .progressive import ProgressiveOutput, ProgressiveQuantizer
from .statistics import CodebookStatistics, solve_codebooks

KINDS: dict[str, type[Quantizer]] = {"additive": AdditiveQuantizer, "progressive": ProgressiveQuantizer,
                                     "product": ProductQuantizer}


def load_quantizer(path: str | Path | IO[bytes]) -> Quantizer:
    """The quantizer saved at ``path`` (a path or binary file), of whichever kind it holds."""
    kind, params, codebooks, arrays = read_npz(path)
    if kind not in KINDS:
        raise ValueError(f"{path}: unknown quantizer kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind]._from_params(params, codebooks, arrays)


__all__ = ["AdditiveQuantizer", "CodeSpec", "CodebookStatistics", "ProgressiveOutput",
           "ProductQuantizer", "ProgressiveQuantizer", "Quantizer", "distortion",
           "icm_encode", "load_quantizer", "solve_codebooks"]
