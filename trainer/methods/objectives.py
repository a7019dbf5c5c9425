"""What trains the encoder: a method's objective, computed on ``MethodNet``'s outputs.

``OBJECTIVES[cfg.loss.kind]`` builds it from the loss config, the supervision embeddings V and the
preset; ``loss(out, y) -> (tensor, terms)``. The coding's own term (``trainer.methods.coding``) is
added by the method, so an objective never knows how codes are learned.
"""
from __future__ import annotations

import torch

from trainer.losses import adaptive_margin_loss, adaptive_margins, classification_loss
from trainer.methods.config import MarginLossConfig, MethodSpec


class MarginObjective:
    """The adaptive cosine-margin loss between image embeddings f and the tag (or label) embeddings V
    of each image's positives; with a classifier (DPQ), its classification loss on the labels too."""

    def __init__(self, cfg: MarginLossConfig, V: torch.Tensor, spec: MethodSpec):
        self.cfg, self.classifier = cfg, spec.classifier
        self.V = V
        self.margins = adaptive_margins(V, cfg.gamma)

    def loss(self, out: dict, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        f = out["f"]
        if self.V.device != f.device:  # move once, not per batch (margins are T x T)
            self.V, self.margins = self.V.to(f.device), self.margins.to(f.device)
        total = adaptive_margin_loss(f, y, self.V, self.cfg.gamma, self.cfg.mask, self.margins)
        terms = {"emb": total.item()}
        if self.classifier:
            l_cls = self.cfg.cls_weight * classification_loss(out["logits"], y, self.cfg.multi_label)
            total = total + l_cls
            terms["cls"] = l_cls.item()
        return total, terms


OBJECTIVES = {"margin": MarginObjective}
