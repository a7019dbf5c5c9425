"""PHPQ's pyramid hybrid pooling (Zeng et al., PR Letters 2024; methods.md §3): the embedding is
fused from several stages of a CNN backbone, not only its last map.

For each chosen stage map (B, C, H, W) and each scale s, adaptive average *and* max pooling to an
s×s grid, flattened (C·s² values each); every such segment is L2-normalised, and the segments of
all stages are concatenated, so ``out_dim = Σ_stages C · Σ_scales s² · 2``. The transform layer
(``TransformHead``) is the fusion. Why normalise each segment: the raw magnitudes differ by stage
(channel count, activation scale) and by pooling kind (a max is several times an average), so an
unnormalised concatenation is dominated by whichever segment is largest, and the transform layer's
N(0, 0.01²) start cannot undo that in a few epochs on a few hundred images. After it each segment
enters with the same weight and the head learns the mix. The pooling has no parameters: with a
frozen backbone ``eval.extract`` can store the pyramid vector once as the features.

A backbone takes part by offering ``stage_maps(x, stages)`` (the maps after the listed stages, in
the order asked), ``stage_channels()`` (the channels after each stage) and
``default_pyramid_stages()``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def pyramid_hybrid_pool(maps: Sequence[torch.Tensor], scales: Sequence[int]) -> torch.Tensor:
    """(B, Σ C·s²·2): per map and scale, avg then max adaptive pooling, each segment L2-normalised."""
    parts = []
    for x in maps:
        for s in scales:
            parts.append(F.normalize(F.adaptive_avg_pool2d(x, s).flatten(1), dim=1))
            parts.append(F.normalize(F.adaptive_max_pool2d(x, s).flatten(1), dim=1))
    return torch.cat(parts, dim=1)


class PyramidHybridPool(nn.Module):
    """A backbone whose output is the pyramid hybrid pooling of its ``stages`` at ``scales``.

    Wraps the backbone (kept as ``.backbone``, so its ``train``/freezing rules apply unchanged) and
    exposes the same contract as any backbone: ``forward(x) -> (B, out_dim)``, ``image_size``."""

    def __init__(self, backbone: nn.Module, stages: Sequence[int] = (), scales: Sequence[int] = (1, 2)):
        super().__init__()
        if not hasattr(backbone, "stage_maps"):
            raise ValueError(f"encoder.head=pyramid_hybrid: the backbone {type(backbone).__name__} does not "
                             "expose its stage maps (efficientnet_lite*, resnet18/50 and small_cnn do)")
        channels = backbone.stage_channels()
        stages = list(stages) or backbone.default_pyramid_stages()
        bad = [s for s in stages if not 0 <= s < len(channels)]
        if bad:
            raise ValueError(f"encoder.pyramid_stages: {bad} out of range for {type(backbone).__name__}, "
                             f"which has stages 0..{len(channels) - 1} (channels {channels})")
        if not scales or any(s < 1 for s in scales):
            raise ValueError(f"encoder.pyramid_scales: grid sizes >= 1, got {list(scales)}")
        self.backbone, self.stages, self.scales = backbone, stages, list(scales)
        self.out_dim = sum(channels[s] for s in stages) * sum(s * s for s in scales) * 2
        if hasattr(backbone, "image_size"):
            self.image_size = backbone.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pyramid_hybrid_pool(self.backbone.stage_maps(x, self.stages), self.scales)
