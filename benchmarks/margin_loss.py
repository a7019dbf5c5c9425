"""Adaptive-margin loss: positive-pair rows (trainer.losses) vs the plain (image, j, k) cube.

WSDHQ's shapes: batch 256, T = 1000 merged tags, d = 300, ~5 positive tags an image. The plain
baseline materialises relu(m_jk - s_ij + s_ik) for every (i, j, k), chunked over images so it fits
(the whole cube is 256M floats = 1 GiB); the project's loss materialises one T-row per positive pair.
Both are timed forward + backward in the same run; their values are checked equal.

    .venv/bin/python -m benchmarks.margin_loss
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from trainer.losses import adaptive_margin_loss, adaptive_margins

B, T, D, TAGS, IMAGE_CHUNK, REPEATS = 256, 1000, 300, 5, 16, 3


def cube_loss(f: torch.Tensor, y: torch.Tensor, V: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    s = F.normalize(f, dim=1) @ F.normalize(V, dim=1).T
    total = s.new_zeros(())
    for a in range(0, len(f), IMAGE_CHUNK):
        sc, yc = s[a:a + IMAGE_CHUNK], y[a:a + IMAGE_CHUNK]
        hinge = F.relu(margins[None] - sc[:, :, None] + sc[:, None, :])  # (chunk, j, k)
        total = total + (hinge * yc[:, :, None] * (1 - yc[:, None, :])).sum()
    n = y.sum(1)
    return total / (n * (T - n)).sum()


def timed(fn) -> tuple[float, float]:
    best, value = float("inf"), 0.0
    for _ in range(REPEATS):
        f = torch.randn(B, D, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        start = time.perf_counter()
        loss = fn(f)
        loss.backward()
        best = min(best, time.perf_counter() - start)
        value = float(loss.detach())
    return best, value


def main() -> None:
    g = torch.Generator().manual_seed(0)
    V = torch.randn(T, D, generator=g)
    y = torch.zeros(B, T)
    y[torch.arange(B).repeat_interleave(TAGS), torch.randint(0, T, (B * TAGS,), generator=g)] = 1
    margins = adaptive_margins(V)
    t_cube, v_cube = timed(lambda f: cube_loss(f, y, V, margins))
    t_pair, v_pair = timed(lambda f: adaptive_margin_loss(f, y, V, margins=margins))
    pairs = int(y.sum())
    print(f"B={B} T={T} d={D} positive pairs={pairs} threads={torch.get_num_threads()}")
    print(f"plain cube (chunks of {IMAGE_CHUNK} images): {t_cube * 1e3:.0f} ms fwd+bwd, "
          f"largest intermediate {IMAGE_CHUNK * T * T / 1e6:.0f}M floats, loss {v_cube:.6f}")
    print(f"positive-pair rows (trainer.losses):   {t_pair * 1e3:.0f} ms fwd+bwd, "
          f"largest intermediate {pairs * T / 1e6:.2f}M floats, loss {v_pair:.6f}")
    print(f"speed-up {t_cube / t_pair:.1f}x; values equal: {abs(v_cube - v_pair) < 1e-5 * abs(v_cube)}")


if __name__ == "__main__":
    main()
