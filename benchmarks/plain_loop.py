"""A plain single-process training loop over in-memory tensors: the baseline the distributed loop
is measured against (benchmarks/bench_train.py), and the quick way tests and benchmarks exercise a
method on a small synthetic weakly-tagged set. Not product code: training runs through
``trainer.loop`` (Ray Train, local mode in one process).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from trainer.methods import Method, OptimConfig


def fit_plain(method: Method, make_batches: Callable[[int], Iterable[dict]], epochs: int,
              optim: OptimConfig | None = None) -> list[dict[str, float]]:
    """Train for ``epochs``; ``make_batches(epoch)`` yields ``{"x", "y"}`` dicts. Returns per-epoch
    mean loss terms (plus codebook-update info when one ran)."""
    opt = method.build_optimizer(optim or OptimConfig())
    method.net.train()
    history = []
    for epoch in range(epochs):
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for batch in make_batches(epoch):
            loss, terms = method.loss(batch, epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] += v
            n += 1
        row = {k: v / max(n, 1) for k, v in sums.items()}
        if method.needs_codebook_update(epoch, epochs):
            with torch.no_grad():
                x = torch.cat([method.embed(batch["x"]) for batch in make_batches(epoch)])
            row.update(method.codebook_update(x, epoch=epoch))
        history.append(row)
    return history


@dataclass
class SyntheticWeakTags:
    """Features with latent classes, weak noisy tags and tag embeddings aligned with the classes."""

    x: torch.Tensor  # (N, F) features
    tags: torch.Tensor  # (N, T) multi-hot, some rows empty
    labels: torch.Tensor  # (N,) latent class (ground truth for evaluation only)
    V: torch.Tensor  # (T, d) unit tag embeddings


def synthetic_weak_tags(n: int = 600, classes: int = 10, feat_dim: int = 32, embed_dim: int = 16,
                        tags_per_class: int = 3, p_tag: float = 0.5, p_noise: float = 0.05,
                        p_untagged: float = 0.1, noise: float = 1.0, seed: int = 0) -> SyntheticWeakTags:
    """Class c owns tags [c*tpc, (c+1)*tpc); an image carries each own tag with ``p_tag``, any other
    tag with ``p_noise``, and no tag at all with ``p_untagged``. Tag embeddings are the owning class's
    direction plus noise, so merged-tag semantics resemble a real vocabulary's."""
    g = np.random.default_rng(seed)
    T = classes * tags_per_class
    labels = g.integers(0, classes, n)
    means = g.standard_normal((classes, feat_dim)) * 1.5
    x = means[labels] + noise * g.standard_normal((n, feat_dim))
    owner = np.repeat(np.arange(classes), tags_per_class)
    p = np.where(owner[None, :] == labels[:, None], p_tag, p_noise)
    tags = (g.random((n, T)) < p) & (g.random((n, 1)) >= p_untagged)
    dirs = g.standard_normal((classes, embed_dim))
    V = dirs[owner] + 0.5 * g.standard_normal((T, embed_dim))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    return SyntheticWeakTags(torch.tensor(x, dtype=torch.float32), torch.tensor(tags, dtype=torch.uint8),
                             torch.tensor(labels), torch.tensor(V, dtype=torch.float32))


def batches_of(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0
               ) -> Callable[[int], Iterator[dict]]:
    """``make_batches`` over in-memory tensors, reshuffled per epoch (deterministically)."""
    def make(epoch: int) -> Iterator[dict]:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            yield {"x": x[idx], "y": y[idx]}
    return make
