"""A method = encoder + objective + coding, composed from ``MethodConfig`` (``trainer.methods.config``).

The objective (``trainer.methods.objectives``: the margin loss on weak tags, or on DPQ's labels with
its classification head) trains the encoder; the coding (``trainer.methods.coding``) owns the
quantizer, adds its loss term and learns the codebooks.
A training loop only calls: ``loss``, ``build_optimizer``, ``needs_codebook_update`` /
``codebook_update``, ``embed`` and ``state_dict``; it wraps ``method.net`` (the module holding every
gradient-trained parameter) in DDP and may set it back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.encoders import Encoder, EncoderConfig, build_encoder
from trainer.inference import InferenceModel
from trainer.losses import reading_target
from trainer.methods.coding import CODINGS, Collectives, LocalCollectives
from trainer.methods.config import MethodConfig, OptimConfig
from trainer.methods.objectives import OBJECTIVES


class MethodNet(nn.Module):
    """Every gradient-trained parameter in one module (what DDP wraps): encoder [+ codebooks]."""

    def __init__(self, encoder: Encoder, codebooks: nn.Module | None, space: str, end_to_end: bool = False):
        super().__init__()
        self.encoder = encoder
        self.pq = codebooks
        self.space = space
        self.end_to_end = end_to_end

    def forward(self, x: torch.Tensor) -> dict:
        """``f`` the raw embedding, ``t`` its code-space reading, ``logits`` with a classifier, and
        the gradient-trained codebooks' outputs (``soft``, ``hard``, ``codes``)."""
        with_logits = self.encoder.classifier is not None
        out = self.encoder(x, with_logits=with_logits)
        f, logits = out if with_logits else (out, None)
        t = reading_target(f, self.space)
        res = {"f": f, "t": t} if logits is None else {"f": f, "t": t, "logits": logits}
        if self.pq is not None:
            q = self.pq(t if self.end_to_end else t.detach())
            res.update(q if isinstance(q, dict) else dict(zip(("soft", "hard", "codes"), q)))
        return res


class MethodOptimizer:
    """The method's optimizers and lr schedules stepped together (network; gradient codebooks)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], cfg: OptimConfig):
        def factor(step: int) -> float:
            if cfg.decay_every_steps <= 0:
                return 1.0
            e = step / cfg.decay_every_steps
            return cfg.decay ** (math.floor(e) if cfg.staircase else e)

        self.optimizers = optimizers
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o, s in zip(self.optimizers, self.schedulers):
            o.step()
            s.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s, os_, ss in zip(self.optimizers, self.schedulers, state["optimizers"], state["schedulers"]):
            o.load_state_dict(os_)
            s.load_state_dict(ss)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (or similar) wrapper."""
    return getattr(module, "module", module)


class Method:
    """See the module docstring. ``V``: (T, d) tag embeddings (WSDHQ) or label embeddings (DPQ)."""

    def __init__(self, cfg: MethodConfig, encoder_cfg: EncoderConfig, V: torch.Tensor):
        self.cfg, self.encoder_cfg = cfg, encoder_cfg
        self.V = torch.as_tensor(V, dtype=torch.float32)
        self.objective = OBJECTIVES[cfg.loss.kind](cfg.loss, self.V, cfg.spec)
        with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            encoder = build_encoder(encoder_cfg, cfg.embed_dim)
        self.coding = CODINGS[cfg.quantizer.kind](cfg.quantizer, cfg.embed_dim, self.V, cfg.space, cfg.seed)
        if hasattr(self.objective, "bind"):  # an objective that decodes with the codebooks
            self.objective.bind(self.coding.quantizer)
        self.net: nn.Module = MethodNet(encoder, self.coding.module, cfg.space, cfg.end_to_end)

    @property
    def quantizer(self):
        return self.coding.quantizer

    @property
    def codebook_updates(self) -> int:
        return self.coding.updates

    @property
    def generator(self) -> torch.Generator:
        """The coding's random stream (checkpointed per rank)."""
        return self.coding.generator

    @property
    def encoder(self) -> Encoder:
        return unwrap(self.net).encoder

    def loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss for one batch: ``batch["x"]`` images/features, ``batch["y"]`` (B, T) multi-hot
        tags (WSDHQ) or labels (DPQ), any dtype."""
        x = batch["x"]
        if hasattr(self.objective, "inputs"):  # e.g. two stacked views of every input
            x = self.objective.inputs(x)
        out = self.net(x)
        total, terms = self.objective.loss(out, batch["y"].to(out["f"].device), epoch)
        l_q, q_terms = self.coding.loss(out, epoch)
        if l_q is not None:
            total = total + l_q
        terms.update(q_terms)
        terms["total"] = total.item()
        return total, terms

    def build_optimizer(self, cfg: OptimConfig) -> MethodOptimizer:
        net = unwrap(self.net)
        params = list(net.encoder.parameters())
        if cfg.kind == "adam":
            opts = [torch.optim.Adam(params, cfg.lr, weight_decay=cfg.weight_decay)]
        else:
            opts = [torch.optim.SGD(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)]
        if net.pq is not None and cfg.kind == "adam" and self.coding.one_optimizer:
            # one Adam, two groups (the same updates as two Adams): DeepSpeed takes one optimizer
            opts[0].add_param_group({"params": list(net.pq.parameters()), "lr": cfg.codebook_lr,
                                     "weight_decay": 0.0})
        elif net.pq is not None:
            opts.append(torch.optim.Adam(net.pq.parameters(), cfg.codebook_lr))
        return MethodOptimizer(opts, cfg)

    def needs_codebook_update(self, epoch: int, epochs: int | None = None) -> bool:
        """After epoch ``epoch`` (0-based)? The coding's schedule; given the run's ``epochs``, also
        after the last one when no update has happened yet."""
        return self.coding.needs_update(epoch, epochs)

    def codebook_update(self, embeddings: torch.Tensor, index: torch.Tensor | None = None,
                        collectives: Collectives | None = None, epoch: int = 0) -> dict[str, Any]:
        """The codebooks learn from this rank's ``embeddings`` (``embed`` outputs, (N, D), with their
        global sample ``index``, default 0..N-1); the result is the same on every rank and for any
        world size. ``epoch`` seeds the update's random draws. Returns the update's statistics and
        quality (live codewords, quantization error) where it has them."""
        embeddings = torch.as_tensor(embeddings)
        if index is None:
            index = torch.arange(len(embeddings))
        return self.coding.update(embeddings, index, collectives or LocalCollectives(), epoch)

    # ---- inference -----------------------------------------------------------------------------
    def inference(self) -> InferenceModel:
        """The encode-time view (shares the encoder and quantizer; no copy)."""
        return InferenceModel(self.encoder, self.quantizer, self.cfg.space, {})

    @contextlib.contextmanager
    def _eval(self):
        was = self.net.training
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(was)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode embedding that codes and retrieval use (the code space's reading of f)."""
        with self._eval():
            return self.inference().embed(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with self._eval():
            return self.inference().encode(x)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors only (loads with ``torch.load(weights_only=True)``): the network's weights
        (gradient-trained codebooks included) and the coding's own state."""
        state = {"net": unwrap(self.net).state_dict(), "coding": self.coding.state_dict()}
        if hasattr(self.objective, "state_dict"):  # e.g. MeCoQ's code memory
            state["objective"] = self.objective.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.net).load_state_dict(state["net"])
        self.coding.load_state_dict(state["coding"])
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])


LABEL_EMBED_DIM = 300  # DPQ's label embeddings when method.embed_dim is left at 0


def label_embeddings(num_labels: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Fixed label embeddings when no word vectors are available: random orthonormal rows (QR of a
    Gaussian) when ``num_labels <= dim``, else unit Gaussian rows. Orthogonal labels give DPQ's
    adaptive margins a constant 1 (all labels equally far apart), i.e. a plain cosine-margin loss."""
    g = np.random.default_rng(seed)
    a = g.standard_normal((dim, num_labels) if num_labels <= dim else (num_labels, dim))
    if num_labels <= dim:
        rows = np.linalg.qr(a)[0].T
    else:
        rows = a / np.linalg.norm(a, axis=1, keepdims=True)
    return torch.from_numpy(rows.astype(np.float32))


def reads_embeddings(cfg: MethodConfig) -> bool:
    """Whether the objective compares the image embedding with the tag / label embeddings V (so
    ``method.embed_dim`` must be V's dimension). The tagless objectives (MeCoQ, MoPQ with
    ``keys=views``) train on views only; their embedding dimension is free."""
    return OBJECTIVES[cfg.loss.kind].targets_used(cfg.loss)


def build_method(cfg: MethodConfig, encoder_cfg: EncoderConfig, V) -> Method:
    """Build a method; ``V`` is (T, embed_dim): ``TagSemantics.embeddings`` for tag-supervised
    methods, label embeddings for DPQ (``label_embeddings`` by default). Errors name the config key."""
    V = torch.as_tensor(np.asarray(V, dtype=np.float32))
    if V.ndim == 2 and cfg.embed_dim == 0:
        cfg = dataclasses.replace(cfg, embed_dim=V.shape[1])
    if V.ndim != 2 or (reads_embeddings(cfg) and V.shape[1] != cfg.embed_dim):
        raise ValueError(f"method.embed_dim={cfg.embed_dim} but the tag/label embeddings have shape "
                         f"{tuple(V.shape)}; set method.embed_dim to their dimension")
    if cfg.spec.classifier:
        if encoder_cfg.num_classes not in (0, V.shape[0]):
            raise ValueError(f"encoder.num_classes={encoder_cfg.num_classes} but there are {V.shape[0]} labels")
        encoder_cfg = dataclasses.replace(encoder_cfg, num_classes=V.shape[0])
    elif encoder_cfg.num_classes:
        raise ValueError(f"encoder.num_classes={encoder_cfg.num_classes}: only method 'dpq' has a "
                         "classification head; set it to 0")
    return Method(cfg, encoder_cfg, V)
