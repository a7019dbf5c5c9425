"""The transform ("fusion") layer: backbone features -> tag-embedding space, squashed by tanh.

As in the authors' code (fc8 = Linear(4096 -> 300) + tanh, init N(0, 0.01^2), bias 0): the raw tanh
output f is what the code-reading quantizes; z = f/||f|| (the hypersphere) is taken by the losses.
"""
from __future__ import annotations

import torch
from torch import nn


class TransformHead(nn.Module):
    def __init__(self, in_dim: int, embed_dim: int, init_std: float = 0.01):
        super().__init__()
        self.fc = nn.Linear(in_dim, embed_dim)
        nn.init.normal_(self.fc.weight, 0.0, init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(h))
