"""What trains the encoder: a method's objective, computed on ``MethodNet``'s outputs.

``OBJECTIVES[cfg.loss.kind]`` builds it from the loss config, the supervision embeddings V and the
preset; ``loss(out, y, epoch) -> (tensor, terms)``. Optional parts a method calls when present:
``inputs(x)`` (the batch the network sees: the contrastive objectives stack two views),
``bind(quantizer)`` (an objective that decodes with the codebooks: MeCoQ's memory) and
``state_dict`` / ``load_state_dict`` (state that must survive a resume: MeCoQ's memory). The coding's own term (``trainer.methods.coding``) is
added by the method, so an objective never knows how codes are learned.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.distributed import gather_with_grad
from trainer.losses import adaptive_margin_loss, adaptive_margins, classification_loss
from trainer.methods.config import MarginLossConfig, MeCoQLossConfig, MethodSpec, MoPQLossConfig, Views


class Objective:
    @staticmethod
    def targets_used(cfg) -> bool:
        """Whether the loss compares the embedding with the tag / label embeddings V (so
        ``method.embed_dim`` must be V's dimension, and batches carry their targets)."""
        return True

    @property
    def uses_targets(self) -> bool:
        return self.targets_used(self.cfg)


class MarginObjective(Objective):
    """The adaptive cosine-margin loss between image embeddings f and the tag (or label) embeddings V
    of each image's positives; with a classifier (DPQ), its classification loss on the labels too."""

    def __init__(self, cfg: MarginLossConfig, V: torch.Tensor, spec: MethodSpec):
        self.cfg, self.classifier = cfg, spec.classifier
        self.V = V
        self.margins = adaptive_margins(V, cfg.gamma)


    def loss(self, out: dict, y: torch.Tensor, epoch: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
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



def augment(x: torch.Tensor, views: Views) -> torch.Tensor:
    """One random view of ``x`` (features or images): dropout, then Gaussian noise scaled by each
    row's RMS. Draws from torch's global stream, which is seeded per rank and checkpointed."""
    x = x.float()
    if views.dropout > 0:
        x = F.dropout(x, views.dropout, training=True)
    if views.noise > 0:
        rms = x.pow(2).mean(dim=tuple(range(1, x.ndim)), keepdim=True).sqrt()
        x = x + views.noise * rms * torch.randn_like(x)
    return x


def debiased_contrastive(z1: torch.Tensor, z2: torch.Tensor, memory: torch.Tensor | None,
                         temperature: float, pos_prior: float | None) -> torch.Tensor:
    """NT-Xent over 2N views (each row's positive is its other view; the other 2N−2 views and the
    memory rows are negatives), debiased as Chuang et al. (2020) when ``pos_prior`` τ⁺ is given:
    N_g = max((Σ_neg e^{s/T} − τ⁺·n·e^{s⁺/T}) / (1 − τ⁺), n·e^{−1/T}), n the number of negatives.
    (The released MeCoQ code takes n = 2N−2 even with the memory, and clamps at e^{−n/T}; here n
    counts the memory rows too, and the clamp is the paper's.) Cosine similarities throughout."""
    n = len(z1)
    f = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = f @ f.T / temperature
    idx = torch.arange(2 * n, device=f.device)
    pos = sim[idx, (idx + n) % (2 * n)]
    neg_mask = torch.ones_like(sim, dtype=torch.bool)
    neg_mask[idx, idx] = False
    neg_mask[idx, (idx + n) % (2 * n)] = False
    neg = (sim.exp() * neg_mask).sum(1)
    count = 2 * n - 2
    if memory is not None and len(memory):
        neg = neg + (f @ F.normalize(memory, dim=1).T / temperature).exp().sum(1)
        count += len(memory)
    pos_e = pos.exp()
    if pos_prior is not None:
        floor = count * torch.exp(torch.tensor(-1.0 / temperature, device=f.device))
        neg = torch.maximum((neg - pos_prior * count * pos_e) / (1 - pos_prior), floor)
    return -(pos_e / (pos_e + neg)).log().mean()


class MeCoQObjective(Objective):
    """MeCoQ (no tags): the debiased contrastive loss between two views' soft reconstructions,
    the entropy of the soft codes, the codeword diversity term, and the code memory.

    Every term is computed on the batch gathered across workers (``gather_with_grad``), so the loss
    and its gradient do not depend on how the batch is split. The memory is the same on every rank:
    it stores the *gathered* soft codes (detached), oldest first, at most ``memory_size`` rows, and
    is decoded with the current codebooks at each step (gradient to the codebooks only). A per-rank
    memory would differ between ranks, so rank 0's checkpoint could not restore the others, and a
    2-worker run would see other negatives than a 1-worker run of the same data; gathering costs one
    all-gather of B·M·K floats per step, which the step's gather of the views carries anyway.
    """

    @staticmethod
    def targets_used(cfg: MeCoQLossConfig) -> bool:
        return False  # views only: the embedding dimension is free

    def __init__(self, cfg: MeCoQLossConfig, V: torch.Tensor, spec: MethodSpec):
        self.cfg = cfg
        self.quantizer = None  # the product quantizer, bound by the method
        self.memory = torch.zeros(0)  # (n <= memory_size, M, K) soft codes, oldest first

    def bind(self, quantizer) -> None:
        self.quantizer = quantizer

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The network's batch: two views of every input, stacked (one forward: DDP-safe)."""
        return torch.cat([augment(x, self.cfg.views), augment(x, self.cfg.views)])

    def loss(self, out: dict, y: torch.Tensor, epoch: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, q = self.cfg, self.quantizer
        soft, probs = out["soft"], out["probs"]
        n, (_, M, K), D = len(soft) // 2, probs.shape, soft.shape[1]
        both = torch.cat([soft[:n], soft[n:], probs[:n].flatten(1), probs[n:].flatten(1)], 1)
        g, _ = gather_with_grad(both)
        z1, z2 = g[:, :D], g[:, D:2 * D]
        p = torch.cat([g[:, 2 * D: 2 * D + M * K], g[:, 2 * D + M * K:]]).view(-1, M, K)
        use_memory = cfg.memory_size > 0 and epoch >= cfg.memory_epoch and len(self.memory) > 0
        memory = q.reconstruct(self.memory.to(soft.device)) if use_memory else None
        l_con = debiased_contrastive(z1, z2, memory, cfg.temperature, cfg.pos_prior if cfg.debias else None)
        # p log p with log clamped at the smallest normal: the same value, and a finite gradient
        # where p is exactly 0 (partial codebook attention, quantizer.top_k), where xlogy's is NaN
        l_ent = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1).mean()
        C = q.normalized()
        l_cw = torch.einsum("mkd,mjd->mkj", C, C).mean()
        total = l_con + cfg.entropy_weight * l_ent + cfg.codeword_weight * l_cw
        if cfg.memory_size > 0:
            self.enqueue(p.detach())
        return total, {"contrastive": l_con.item(), "entropy": l_ent.item(), "codeword": l_cw.item(),
                       "memory": float(len(memory)) if memory is not None else 0.0}

    def enqueue(self, codes: torch.Tensor) -> None:
        """Append (view 1 rows, then view 2 rows, as gathered), keep the newest ``memory_size``."""
        codes = codes.detach().float().cpu()
        old = self.memory if len(self.memory) else codes[:0]
        self.memory = torch.cat([old, codes])[-self.cfg.memory_size:].clone()

    def state_dict(self) -> dict:
        return {"memory": self.memory.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.memory = state["memory"].float().clone()


class MoPQObjective(Objective):
    """MoPQ's Multinoulli contrastive loss: each row's other side must pick its own row's
    straight-through hard reconstruction k̂ among the batch's (gathered across workers),
    L = −(1/B) Σ_i log softmax_j(⟨q_i, k̂_j⟩/T) + w·the same on the unquantized k.

    The coded side is the image embedding (what the database holds); with ``keys=tags`` the other
    side is the image's merged-tag embedding ū_i = normalise(Σ_tags v̄_t), with ``keys=views`` a
    second view's embedding. In the text retrieval MoPQ was written for, the coded side is the
    document (the key) and the query picks it; here the documents are images, so the image embedding
    is the quantized key in both modes. k̂ has norm √M (block-diagonal unit codewords), so ⟨q, k̂⟩/√M
    is the cosine. Rows without tags have no tag side: they are left out of the tag mode's loss
    (counted in the ``untagged`` term).
    """

    @staticmethod
    def targets_used(cfg: MoPQLossConfig) -> bool:
        return cfg.keys == "tags"

    def __init__(self, cfg: MoPQLossConfig, V: torch.Tensor, spec: MethodSpec):
        self.cfg = cfg
        self.V = F.normalize(V, dim=1)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.keys == "views":
            return torch.cat([augment(x, self.cfg.views), augment(x, self.cfg.views)])
        return x

    def loss(self, out: dict, y: torch.Tensor, epoch: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        t, hard = out["t"], out["hard"]
        terms: dict[str, float] = {}
        if cfg.keys == "views":
            n = len(t) // 2
            q, k, k_hat = t[:n], t[n:], hard[n:]
        else:
            if self.V.device != t.device:
                self.V = self.V.to(t.device)
            u = y.to(self.V.dtype) @ self.V
            keep = u.norm(dim=1) > 0
            terms["untagged"] = float((~keep).sum())
            q, k, k_hat = F.normalize(u[keep], dim=1), t[keep], hard[keep]
        D = t.shape[1]
        both = torch.cat([q, F.normalize(k, dim=1), F.normalize(k_hat, dim=1)], 1)
        if cfg.cross_device:
            both, _ = gather_with_grad(both)
        q, k, k_hat = both[:, :D], both[:, D:2 * D], both[:, 2 * D:]
        target = torch.arange(len(q), device=q.device)
        l_mcl = F.cross_entropy(q @ k_hat.T / cfg.temperature, target)
        total = l_mcl
        terms["mcl"] = l_mcl.item()
        if cfg.dense_weight > 0:
            l_dense = F.cross_entropy(q @ k.T / cfg.temperature, target)
            total = total + cfg.dense_weight * l_dense
            terms["dense"] = l_dense.item()
        terms["negatives"] = float(len(q) - 1)
        return total, terms


OBJECTIVES = {"margin": MarginObjective, "mecoq": MeCoQObjective, "mopq": MoPQObjective}
