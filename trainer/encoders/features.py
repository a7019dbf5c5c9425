"""Features mode: an MLP over precomputed ``feat.npy`` vectors (e.g. CLIP or ResNet pool features)."""
from __future__ import annotations

import torch
from torch import nn


class FeatureMLP(nn.Module):
    """Features mode: an MLP over precomputed ``feat.npy`` vectors (one hidden layer)."""

    def __init__(self, in_features: int, hidden: int = 512, dropout: float = 0.0, l2_input: bool = False):
        super().__init__()
        self.l2_input = l2_input
        if in_features <= 0:
            raise ValueError("encoder.in_features must be set (the length of feat.npy) for kind 'mlp'")
        if hidden < 0:
            raise ValueError(f"encoder.hidden={hidden}: the MLP's hidden width, or 0 for none")
        if hidden == 0:  # a linear head on the features (dropout on the input): for small training sets
            self.net = nn.Dropout(dropout)
            self.out_dim = in_features
        else:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
            self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.l2_input:  # pooled CNN features: their direction carries the content, their norm little
            x = torch.nn.functional.normalize(x, dim=1)
        return self.net(x)
