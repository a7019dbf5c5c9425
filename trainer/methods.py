"""A method = encoder + losses + quantizer + schedule, selected by ``MethodConfig.name``.

- ``wsdhq``: weak-tag adaptive-margin loss + additive quantizer (M full-dim codebooks) updated by
  alternation (ICM codes, ridge LS codebooks) every ``code_update_every`` epochs; the network's
  quantization loss λ·‖W(t − t̂)‖² uses codes computed per batch against the current codebooks
  (no per-sample code store, unlike the authors' cache: streaming at web scale has none).
- ``dpq``: label margin loss + classification loss + progressive residual codebooks trained by
  gradient (D_soft + μ D_hard + ν JCL), after ``feature_epochs`` feature-only epochs.
- ``wsdhq_progressive``: the weak-tag margin loss with DPQ's progressive quantizer, so one weakly
  supervised run yields 8/16/24/32-bit codes by prefix.

A training loop only calls: ``loss``, ``build_optimizer``, ``needs_codebook_update`` /
``codebook_update``, ``embed`` and ``state_dict``; it wraps ``method.net`` (the module holding every
gradient-trained parameter) in DDP and may set it back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import numpy as np
import torch
from torch import nn

from shards.config_checks import at_least, require, within
from trainer.checkpoint_io import InferenceModel
from trainer.encoders import Encoder, EncoderConfig, build_encoder
from trainer.losses import (adaptive_margin_loss, adaptive_margins, classification_loss,
                            progressive_distortions, quantization_loss, reading_target, reading_weights)
from trainer.quantizers import AdditiveQuantizer, CodebookStatistics, ProgressiveQuantizer


@dataclass
class MethodConfig:
    name: Literal["wsdhq", "wsdhq_progressive", "dpq"] = "wsdhq"
    # the tag / label embedding dimension; 0: taken from them (the tag artifact's, or
    # LABEL_EMBED_DIM for DPQ's generated label embeddings)
    embed_dim: int = 0
    M: int = 4  # codebooks (additive) or levels (progressive); bits = M * log2(K)
    K: int = 256
    margin_gamma: float = 1.0  # m_jk = 2^(1-γ)(1 - cos)^γ
    margin_mask: Literal["auto", "pos_neg", "all"] = "auto"  # auto: pos_neg (WSDHQ), all (DPQ as coded)
    # additive (wsdhq)
    lambda_q: float = 1e-4
    quant_reading: Literal["sphere", "raw"] = "sphere"  # paper (z on the sphere, V̄) | code (raw f, raw V)
    icm_sweeps: int = 3
    # ICM from empty codes, repeated from this many random block orders, best code per sample kept.
    # The authors run 1; with 1, greedy ICM on the dense codebooks a least-squares solve leaves gets
    # stuck in poor codes, the next solve fits those, and the codebooks collapse (measured on real
    # MIRFLICKR embeddings, M=4: error 0.079 -> 0.19 and ~180/256 live codewords after 3 rounds,
    # against 0.020 -> 0.011 and ~245/256 with 8; docs/quantizers.md).
    icm_restarts: int = 8
    ridge: float = 1e-3
    code_update_every: int = 2  # epochs between codebook updates (authors: 2)
    kmeans_sample: int = 20000  # rows per rank for the first (k-means) initialisation
    # ICM + least-squares rounds per codebook update (the authors: 1). Three rounds, with dead
    # codewords re-seeded after each, let the codebooks follow an encoder that moved since the last
    # update: on the digits demo (M=1/2) >= 94% of codewords stay live after every update, and the
    # quantized mAP stays within 0.001 of the float embeddings (docs/quantizers.md).
    codebook_iters: int = 3
    # Dead codewords after each solve: "reseed" from the worst-coded rows of the gathered sample
    # (this project's choice: a codeword left where the features were when it died is never chosen
    # again as the encoder moves) or "restore" their previous values (the authors' code).
    dead_codewords: Literal["reseed", "restore"] = "reseed"
    # Where each update's rounds start: the previous codebooks ("warm", the authors), block k-means
    # on the current embeddings ("kmeans"), or both, keeping the lower error on the gathered sample
    # ("best": after two epochs the encoder can have moved so far that warm rounds end 6x worse than
    # a fresh start, measured on MIRFLICKR; docs/quantizers.md). "best" runs the rounds twice.
    codebook_start: Literal["warm", "kmeans", "best"] = "best"
    # progressive (dpq, wsdhq_progressive)
    tau: float = 1.0
    mu: float = 1.0
    nu: float = 0.1
    softmax_gamma: float = 1.0  # soft-assignment temperature (code: 1; paper: "large")
    end_to_end: bool = False  # paper claim: L_Q also trains the network; False = code parity (C only)
    feature_epochs: int = 32  # epochs before L_Q switches on (DPQ: 32 of 64; lower it for short runs)
    # How the progressive codebooks start. "random": DPQ's N(0, 0.01²) (code parity); "kmeans":
    # residual k-means on the embeddings just before L_Q switches on (this project's choice: short
    # weak-tag runs leave random codebooks nearly where they started); "auto": kmeans for
    # wsdhq_progressive, random for dpq.
    progressive_init: Literal["auto", "kmeans", "random"] = "auto"
    cls_weight: float = 0.1  # DPQ's λ on the classification loss
    multi_label: bool = True  # DPQ: sigmoid BCE (True) or softmax CE (single-label)
    seed: int = 0

    def __post_init__(self):
        within(self, "K", 1, 256)  # codes are uint8
        for key in ("M", "icm_sweeps", "code_update_every", "codebook_iters"):
            at_least(self, key, 1)
        at_least(self, "embed_dim", 0)  # 0: the tag / label embeddings' dimension (build_method)
        # the additive quantizer's k-means start splits the dimensions into M blocks
        require(self.name != "wsdhq" or not self.embed_dim or self.M <= self.embed_dim, "M",
                f"must be <= method.embed_dim ({self.embed_dim}) for the additive quantizer, got {self.M}")
        require(self.kmeans_sample >= self.K, "kmeans_sample",
                f"must be >= method.K ({self.K}): k-means needs K rows, got {self.kmeans_sample}")
        at_least(self, "icm_restarts", 1)
        for key in ("margin_gamma", "lambda_q", "ridge", "tau", "mu", "nu", "feature_epochs", "cls_weight"):
            at_least(self, key, 0)
        require(self.softmax_gamma > 0, "softmax_gamma", f"must be > 0, got {self.softmax_gamma!r}")


@dataclass
class OptimConfig:
    kind: Literal["adam", "sgd"] = "adam"  # WSDHQ: Adam 3e-4; DPQ: SGD momentum 0.9
    lr: float = 3e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay: float = 0.5  # lr multiplier per ``decay_every_steps``
    decay_every_steps: int = 300  # 0 disables
    staircase: bool = True  # WSDHQ staircase; DPQ continuous (decay=0.9, every 10000, staircase False)
    codebook_lr: float = 1e-4  # Adam on the progressive codebooks (same decay law)

    def __post_init__(self):
        for key in ("lr", "weight_decay", "decay_every_steps", "codebook_lr"):
            at_least(self, key, 0)
        within(self, "momentum", 0, 1, high_open=True)
        require(0 < self.decay <= 1, "decay", f"must be in (0, 1], got {self.decay!r}")


class MethodNet(nn.Module):
    """Every gradient-trained parameter in one module (what DDP wraps): encoder [+ progressive C]."""

    def __init__(self, encoder: Encoder, pq: ProgressiveQuantizer | None, end_to_end: bool, space: str = "f"):
        super().__init__()
        self.encoder = encoder
        self.pq = pq
        self.end_to_end = end_to_end
        self.space = space  # what the progressive quantizer quantizes: "z" (sphere) or raw "f"

    def forward(self, x: torch.Tensor) -> dict:
        with_logits = self.encoder.classifier is not None
        out = self.encoder(x, with_logits=with_logits)
        f, logits = out if with_logits else (out, None)
        res = {"f": f} if logits is None else {"f": f, "logits": logits}
        if self.pq is not None:
            t = reading_target(f, "sphere") if self.space == "z" else f
            soft, hard, codes = self.pq(t if self.end_to_end else t.detach())
            res.update(t=t, soft=soft, hard=hard, codes=codes)
        return res


class MethodOptimizer:
    """The method's optimizers and lr schedules stepped together (network; progressive codebooks)."""

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


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (or similar) wrapper."""
    return getattr(module, "module", module)


class Method:
    """See the module docstring. ``V``: (T, d) tag embeddings (WSDHQ) or label embeddings (DPQ)."""

    def __init__(self, cfg: MethodConfig, encoder_cfg: EncoderConfig, V: torch.Tensor):
        self.cfg, self.encoder_cfg = cfg, encoder_cfg
        self.V = torch.as_tensor(V, dtype=torch.float32)
        self.progressive = cfg.name != "wsdhq"
        self.margin_mask = cfg.margin_mask if cfg.margin_mask != "auto" else (
            "all" if cfg.name == "dpq" else "pos_neg")
        self.margins = adaptive_margins(self.V, cfg.margin_gamma)
        with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            encoder = build_encoder(encoder_cfg, cfg.embed_dim)
        pq = ProgressiveQuantizer(cfg.embed_dim, cfg.M, cfg.K, cfg.softmax_gamma, seed=cfg.seed
                                  ) if self.progressive else None
        # Codes and retrieval live on the sphere (z) under the paper's reading, for the progressive
        # weak-tag variant too: the margin loss shapes only directions, so inner products on the raw
        # tanh output f are dominated by its norm. DPQ keeps raw f, as its code does.
        self.space = "z" if cfg.name != "dpq" and cfg.quant_reading == "sphere" else "f"
        self.net: nn.Module = MethodNet(encoder, pq, cfg.end_to_end, self.space)
        self.quantizer = pq if self.progressive else AdditiveQuantizer(  # owns its metric V̄ (saved with it)
            cfg.embed_dim, cfg.M, cfg.K, cfg.icm_sweeps, cfg.ridge, icm_restarts=cfg.icm_restarts,
            weights=reading_weights(self.V, cfg.quant_reading))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.codebook_updates = 0

    # ---- what the loop calls -------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        return unwrap(self.net).encoder

    @property
    def icm_weights(self) -> torch.Tensor | None:
        """Tag directions ICM and L_q measure errors along (None for progressive methods)."""
        return None if self.progressive else self.quantizer.weights

    def loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss for one batch: ``batch["x"]`` images/features, ``batch["y"]`` (B, T) multi-hot
        tags (WSDHQ) or labels (DPQ), any dtype."""
        x, y = batch["x"], batch["y"]
        out = self.net(x)
        f = out["f"]
        if self.V.device != f.device:  # move once, not per batch (margins are T x T)
            self.V, self.margins = self.V.to(f.device), self.margins.to(f.device)
        l_emb = adaptive_margin_loss(f, y.to(f.device), self.V, self.cfg.margin_gamma, self.margin_mask,
                                     self.margins)
        terms = {"emb": l_emb.item()}
        total = l_emb
        if self.cfg.name == "dpq":
            l_cls = self.cfg.cls_weight * classification_loss(out["logits"], y.to(f.device), self.cfg.multi_label)
            total = total + l_cls
            terms["cls"] = l_cls.item()
        if self.progressive:
            t = out["t"]
            d_soft, d_hard, jcl = progressive_distortions(t if self.cfg.end_to_end else t.detach(),
                                                          out["soft"], out["hard"])
            l_q = self.cfg.tau * (d_soft + self.cfg.mu * d_hard + self.cfg.nu * jcl)
            on = 1.0 if epoch >= self.cfg.feature_epochs else 0.0  # x0 keeps C in the graph for DDP
            total = total + on * l_q
            terms.update(d_soft=d_soft.item(), d_hard=d_hard.item(), jcl=jcl.item(), q=on * l_q.item())
        elif self.quantizer.is_trained and self.cfg.lambda_q > 0:
            t = reading_target(f, self.cfg.quant_reading)
            q = self.quantizer
            if q.codebooks.device != f.device:
                q.to(f.device)
            with torch.no_grad():
                recon = q.decode(self._codes(t.detach()))
            l_q = quantization_loss(t, recon, q.weights.to(f.device))
            total = total + self.cfg.lambda_q * l_q
            terms["q"] = l_q.item()
        terms["total"] = total.item()
        return total, terms

    def build_optimizer(self, cfg: OptimConfig) -> MethodOptimizer:
        net = unwrap(self.net)
        params = list(net.encoder.parameters())
        if cfg.kind == "adam":
            opts = [torch.optim.Adam(params, cfg.lr, weight_decay=cfg.weight_decay)]
        else:
            opts = [torch.optim.SGD(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)]
        if net.pq is not None:
            opts.append(torch.optim.Adam(net.pq.parameters(), cfg.codebook_lr))
        return MethodOptimizer(opts, cfg)

    @property
    def kmeans_start(self) -> bool:
        """Whether the progressive codebooks start from residual k-means (see ``progressive_init``)."""
        init = self.cfg.progressive_init
        return init == "kmeans" or (init == "auto" and self.cfg.name == "wsdhq_progressive")

    def needs_codebook_update(self, epoch: int, epochs: int | None = None) -> bool:
        """True after epoch ``epoch`` (0-based) for the alternating (additive) method: every
        ``code_update_every`` epochs, as the authors' ``train_iter % (2·batches_per_epoch) == 0``.
        For a progressive method with a k-means start: once, after the last feature-only epoch.
        Given the run's ``epochs``, also after the last one when no update has happened yet (a run
        shorter than ``code_update_every`` / ``feature_epochs`` still ends with fitted codebooks)."""
        last_and_none = epochs is not None and epoch + 1 == epochs and self.codebook_updates == 0
        if self.progressive:
            return self.kmeans_start and (epoch + 1 == max(self.cfg.feature_epochs, 1) or last_and_none)
        return (epoch + 1) % self.cfg.code_update_every == 0 or last_and_none

    def codebook_update(self, feature_batches: Iterable[torch.Tensor],
                        reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
                        gather_sample: Callable[[torch.Tensor], torch.Tensor] = _identity) -> dict:
        """One alternation step over this rank's embeddings (``embed`` outputs, (B, D) batches):
        ICM codes -> statistics -> ``reduce`` (all-reduce sum of the flat float64 vector) -> solve.

        The first call initialises the codebooks by block k-means on ``gather_sample(local sample)``
        (all-gather: every rank must get the same rows, so every rank computes the same seeded k-means);
        with ``dead_codewords="reseed"`` every call gathers that sample to re-seed dead codewords from
        it. Such calls iterate ``feature_batches`` twice: pass a list or a re-iterable.
        """
        if self.progressive and not self.kmeans_start:
            raise RuntimeError(f"method {self.cfg.name!r} trains its codebooks by gradient from a random "
                               "start; codebook_update is for 'wsdhq' or method.progressive_init=kmeans")
        q = self.quantizer
        def read(b) -> torch.Tensor:
            t = torch.as_tensor(b).detach().float().to(q.codebooks.device)
            return t if self.progressive else reading_target(t, self.cfg.quant_reading)

        iters = self.cfg.codebook_iters
        reseed = self.cfg.dead_codewords == "reseed"
        # The gathered sample seeds k-means, re-seeds dead codewords and measures the live ones;
        # the batches are read again for the statistics, so a one-shot iterator is kept as a list.
        if iter(feature_batches) is feature_batches:
            feature_batches = list(feature_batches)
        sample, n = [], 0
        for b in feature_batches:
            sample.append(read(b))
            n += len(sample[-1])
            if n >= self.cfg.kmeans_sample:
                break
        if not sample:
            raise ValueError("codebook_update: feature_batches yielded no embeddings")
        rows = gather_sample(torch.cat(sample)[: self.cfg.kmeans_sample])
        if self.progressive:  # gradient steps train them from here; no least-squares solve
            q.fit(rows.cpu(), self.cfg.seed)
            self.codebook_updates += 1
            return {"codebook_updates": self.codebook_updates, "samples": int(len(rows)),
                    "dead_codewords": 0}
        starts = ["kmeans"] if not q.is_trained else {"warm": ["warm"], "kmeans": ["kmeans"],
                                                      "best": ["warm", "kmeans"]}[self.cfg.codebook_start]
        best = None
        for start in starts:
            if start == "kmeans":  # "warm" is always first: it starts from the codebooks as they are
                q.init_kmeans(rows, self.cfg.seed + self.codebook_updates)
            n, dead, reseeded = self._fit_rounds(feature_batches, read, reduce, rows, reseed)
            health = q.health(rows, generator=self.update_generator(iters))
            if best is None or health["quantization_error"] < best[3]["quantization_error"]:
                best = (q.codebooks, dead, reseeded, health, start)
            else:
                q.codebooks = best[0]
        _, dead, reseeded, health, start = best
        self.codebook_updates += 1
        # Health is measured on the gathered sample (identical on every rank), coded afresh with the
        # new codebooks: what the codes of the coming epochs will look like, re-seeded codewords included.
        return {"codebook_updates": self.codebook_updates, "samples": n, "dead_codewords": int(dead.sum()),
                "reseeded": reseeded, "codebook_start": start, **health}

    def _fit_rounds(self, feature_batches, read, reduce, rows, reseed) -> tuple[int, torch.Tensor, int]:
        """``codebook_iters`` rounds of ICM codes -> statistics -> all-reduce -> ridge solve, dead
        codewords re-seeded after each solve; returns (samples, last dead mask, re-seeded count)."""
        q = self.quantizer
        dev = q.codebooks.device
        MK = q.M * q.K  # zeros on the codebooks' device: a rank without data still joins the reduce
        reseeded = 0
        for it in range(self.cfg.codebook_iters):
            stats = CodebookStatistics(torch.zeros(MK, MK, dtype=torch.float64, device=dev),
                                       torch.zeros(MK, q.D, dtype=torch.float64, device=dev), 0)
            for b in feature_batches:
                t = read(b)
                stats = stats + q.statistics(t, self._codes(t))
            stats = CodebookStatistics.from_flat(reduce(stats.flatten()), q.M, q.K, q.D)
            if stats.n == 0:
                raise ValueError("codebook_update: no embeddings on any rank (feature_batches was empty; "
                                 "a generator cannot be iterated twice on the first call)")
            dead = q.solve(stats)
            if reseed:  # after the last solve too: a dead codeword left stale is never chosen again
                reseeded += q.reseed_dead(dead, rows, generator=self.update_generator(it))
        return int(stats.n), dead, reseeded

    def update_generator(self, salt: int) -> torch.Generator:
        """Randomness of a codebook update's sample-side steps (re-seeding, health): a function of
        (seed, update, salt) only, so every rank, holding the same gathered sample, draws the same."""
        return torch.Generator().manual_seed(self.cfg.seed * 7919 + self.codebook_updates * 31 + salt)

    def _codes(self, t: torch.Tensor) -> torch.Tensor:
        """Additive codes of ``t`` with ICM block orders drawn from the method's seeded stream
        (per batch in training, per update from (seed, epoch)); inference draws none of it."""
        with self.quantizer.block_orders_from(self.generator):
            return self.quantizer.encode(t)

    # ---- inference -----------------------------------------------------------------------------
    @property
    def quantized_space(self) -> str:
        """Which vectors codes and retrieval use: "z" (sphere reading) or "f" (raw tanh output)."""
        return self.space

    def inference(self) -> InferenceModel:
        """The encode-time view (shares the encoder and quantizer; no copy)."""
        return InferenceModel(self.encoder, self.quantizer, self.quantized_space, {})

    @contextlib.contextmanager
    def _eval(self):
        was = self.net.training
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(was)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode embedding that codes and retrieval use (z for the sphere reading, else raw f)."""
        with self._eval():
            return self.inference().embed(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with self._eval():
            return self.inference().encode(x)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors only (loads with ``torch.load(weights_only=True)``): net weights and, for the
        additive quantizer, its codebooks and trained flag."""
        state = {"net": unwrap(self.net).state_dict(), "codebook_updates": self.codebook_updates}
        if not self.progressive:
            state["codebooks"] = self.quantizer.codebooks.clone()
            state["quantizer_trained"] = self.quantizer.is_trained
        return state

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.net).load_state_dict(state["net"])
        self.codebook_updates = int(state["codebook_updates"])
        if not self.progressive:
            self.quantizer.codebooks = state["codebooks"].to(torch.float32).clone()
            self.quantizer.is_trained = bool(state["quantizer_trained"])


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


def build_method(cfg: MethodConfig, encoder_cfg: EncoderConfig, V) -> Method:
    """Build a method; ``V`` is (T, embed_dim): ``TagSemantics.embeddings`` for WSDHQ, label
    embeddings for DPQ (``label_embeddings`` by default). Errors name the config key at fault."""
    V = torch.as_tensor(np.asarray(V, dtype=np.float32))
    if V.ndim == 2 and cfg.embed_dim == 0:
        cfg = dataclasses.replace(cfg, embed_dim=V.shape[1])
    if V.ndim != 2 or V.shape[1] != cfg.embed_dim:
        raise ValueError(f"method.embed_dim={cfg.embed_dim} but the tag/label embeddings have shape "
                         f"{tuple(V.shape)}; set method.embed_dim to their dimension")
    if cfg.name != "dpq" and encoder_cfg.num_classes:
        raise ValueError(f"encoder.num_classes={encoder_cfg.num_classes}: only method 'dpq' has a "
                         "classification head; set it to 0")
    if cfg.name == "dpq":
        if encoder_cfg.num_classes not in (0, V.shape[0]):
            raise ValueError(f"encoder.num_classes={encoder_cfg.num_classes} but there are {V.shape[0]} labels")
        encoder_cfg = dataclasses.replace(encoder_cfg, num_classes=V.shape[0])
    return Method(cfg, encoder_cfg, V)
