"""How a method codes: the quantizer it owns, the loss term it adds, and how its codebooks learn.

Three codings, one per quantizer kind; a method holds one (``CODINGS[cfg.quantizer.kind]``) and asks
it the same five things whatever the kind: ``module`` (gradient-trained codebooks that go inside
the DDP-wrapped network, or None), ``loss(out, epoch)``, ``needs_update(epoch, epochs)``,
``update(embeddings, index, collectives, epoch)`` and ``state_dict`` / ``load_state_dict``.

- ``AdditiveCoding`` (WSDHQ): codebooks are *solved*, not trained: every ``update_every`` epochs
  each rank codes its embeddings by ICM, the least-squares statistics are summed across ranks, and
  every rank solves the same codebooks. The network sees λ·‖V̄(t − t̂)‖² with per-batch codes.
- ``ProgressiveCoding`` (DPQ): residual codebooks trained by gradient beside the encoder; an
  optional one-off residual k-means start just before L_Q switches on.
- ``ProductCoding`` (MeCoQ, MoPQ): product codebooks of unit codewords trained by gradient through
  the objective (the coding adds no loss term); an optional spherical k-means start.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from trainer.losses import progressive_distortions, quantization_loss, reading_weights
from trainer.methods.config import AdditiveConfig, ProductConfig, ProgressiveConfig
from trainer.quantizers import AdditiveQuantizer, CodebookStatistics, ProductQuantizer, ProgressiveQuantizer


class Collectives(Protocol):
    """What a codebook update needs from the other ranks (``trainer.distributed`` implements it
    over torch.distributed, the identity in one process)."""

    def sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def gather_rows(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...


class LocalCollectives:
    """One process: sums are the values themselves, gathered rows are the rows in index order."""

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    def gather_rows(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return rows[torch.argsort(index.cpu(), stable=True)]


class AdditiveCoding:
    module = None  # nothing here is trained by gradient
    one_optimizer = False

    def __init__(self, cfg: AdditiveConfig, dim: int, V: torch.Tensor, space: str, seed: int):
        self.cfg, self.seed = cfg, seed
        self.quantizer = AdditiveQuantizer(dim, cfg.M, cfg.K, cfg.icm_sweeps, cfg.ridge,
                                           icm_restarts=cfg.icm_restarts, weights=reading_weights(V, space))
        self.generator = torch.Generator().manual_seed(seed)  # ICM block orders of training codes
        self.updates = 0

    def codes(self, t: torch.Tensor) -> torch.Tensor:
        """Codes with ICM block orders from the training stream (inference draws none of it)."""
        with self.quantizer.block_orders_from(self.generator):
            return self.quantizer.encode(t)

    def loss(self, out: dict, epoch: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        q, t = self.quantizer, out["t"]
        if not q.is_trained or self.cfg.lambda_q <= 0:
            return None, {}
        if q.codebooks.device != t.device:
            q.to(t.device)
        with torch.no_grad():
            recon = q.decode(self.codes(t.detach()))
        l_q = quantization_loss(t, recon, q.weights)
        return self.cfg.lambda_q * l_q, {"q": l_q.item()}

    def needs_update(self, epoch: int, epochs: int | None) -> bool:
        """Every ``update_every`` epochs (the authors' ``train_iter % (2·batches_per_epoch)``), and
        after the last epoch when none has happened (a short run still ends with fitted codebooks)."""
        last_and_none = epochs is not None and epoch + 1 == epochs and self.updates == 0
        return (epoch + 1) % self.cfg.update_every == 0 or last_and_none

    def update(self, embeddings: torch.Tensor, index: torch.Tensor, collectives: Collectives,
               epoch: int) -> dict[str, Any]:
        """One alternation step over this rank's embeddings (already in the code space), the same
        on every rank: the gathered sample (the ``kmeans_sample`` lowest-index rows of each rank, all
        ranks stacked by global index) seeds k-means and dead codewords and measures the result."""
        q, cfg = self.quantizer, self.cfg
        x = embeddings.detach().float().to(q.codebooks.device)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)  # the same block orders on every rank
        rows = collectives.gather_rows(x[: cfg.kmeans_sample].cpu(), index[: cfg.kmeans_sample]).to(x.device)
        if len(rows) < q.K:
            raise ValueError(f"codebook update: {len(rows) or 'no'} embeddings on any rank; the k-means "
                             f"start needs at least method.quantizer.K={q.K}")
        starts = ["kmeans"] if not q.is_trained else {"warm": ["warm"], "kmeans": ["kmeans"],
                                                      "best": ["warm", "kmeans"]}[cfg.start]
        best = None
        for start in starts:
            if start == "kmeans":  # "warm" is always first: it starts from the codebooks as they are
                q.init_kmeans(rows, self.seed + self.updates)
            n, dead, reseeded = self._rounds(x, rows, collectives)
            health = q.health(rows, generator=self.update_generator(cfg.iters))
            if best is None or health["quantization_error"] < best[3]["quantization_error"]:
                best = (q.codebooks, dead, reseeded, health, start)
            else:
                q.codebooks = best[0]
        _, dead, reseeded, health, start = best
        self.updates += 1
        # Health is measured on the gathered sample (identical on every rank), coded afresh with the
        # new codebooks: what the codes of the coming epochs will look like, re-seeded codewords included.
        return {"codebook_updates": self.updates, "samples": n, "dead_codewords": int(dead.sum()),
                "reseeded": reseeded, "codebook_start": start, **health}

    def _rounds(self, x: torch.Tensor, rows: torch.Tensor, collectives: Collectives
                ) -> tuple[int, torch.Tensor, int]:
        """``iters`` rounds of ICM codes -> statistics -> sum over ranks -> ridge solve, dead
        codewords re-seeded after each solve; returns (samples, last dead mask, re-seeded count)."""
        q = self.quantizer
        reseeded = 0
        for it in range(self.cfg.iters):
            # zeros on the codebooks' device: a rank without data still joins the sum
            stats = CodebookStatistics.zeros(q.M, q.K, q.D, device=q.codebooks.device)
            if len(x):
                stats = stats + q.statistics(x, self.codes(x))
            stats = CodebookStatistics.from_flat(collectives.sum(stats.flatten()), q.M, q.K, q.D)
            dead = q.solve(stats)
            if self.cfg.dead_codewords == "reseed":  # after the last solve too: a stale one is never chosen
                reseeded += q.reseed_dead(dead, rows, generator=self.update_generator(it))
        return int(stats.n), dead, reseeded

    def update_generator(self, salt: int) -> torch.Generator:
        """Randomness of an update's sample-side steps (re-seeding, health): a function of (seed,
        update, salt) only, so every rank, holding the same gathered sample, draws the same."""
        return torch.Generator().manual_seed(self.seed * 7919 + self.updates * 31 + salt)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "codebooks": self.quantizer.codebooks.clone(),
                "trained": self.quantizer.is_trained}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.quantizer.codebooks = state["codebooks"].to(torch.float32).clone()
        self.quantizer.is_trained = bool(state["trained"])


class GradientCoding:
    """What the gradient-trained codings share: codebooks inside the network (``module``), whose
    state travels with the network's, and a one-off k-means start on the gathered sample."""

    @property
    def module(self) -> nn.Module:
        return self.quantizer

    def kmeans_start(self, embeddings: torch.Tensor, index: torch.Tensor, collectives: Collectives) -> dict:
        n = self.cfg.kmeans_sample
        rows = collectives.gather_rows(embeddings[:n].detach().float().cpu(), index[:n])
        self.quantizer.fit(rows, self.seed)
        self.updates += 1
        return {"codebook_updates": self.updates, "samples": int(len(rows)), "dead_codewords": 0}

    def state_dict(self) -> dict:
        return {"updates": self.updates}  # the codebooks are parameters of the network's state

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])


class ProgressiveCoding(GradientCoding):
    one_optimizer = False  # DPQ's own Adam on the codebooks beside the network's optimizer

    def __init__(self, cfg: ProgressiveConfig, dim: int, V: torch.Tensor, space: str, seed: int):
        self.cfg, self.seed = cfg, seed
        self.quantizer = ProgressiveQuantizer(dim, cfg.M, cfg.K, cfg.softmax_gamma, seed=seed, top_k=cfg.top_k)
        self.generator = torch.Generator().manual_seed(seed)  # unused by this kind; checkpointed alike
        self.updates = 0

    def loss(self, out: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, t = self.cfg, out["t"]
        d_soft, d_hard, jcl = progressive_distortions(t if cfg.end_to_end else t.detach(),
                                                      out["soft"], out["hard"])
        l_q = cfg.tau * (d_soft + cfg.mu * d_hard + cfg.nu * jcl)
        on = 1.0 if epoch >= cfg.feature_epochs else 0.0  # x0 keeps C in the graph for DDP
        return on * l_q, {"d_soft": d_soft.item(), "d_hard": d_hard.item(), "jcl": jcl.item(),
                          "q": on * l_q.item()}

    def needs_update(self, epoch: int, epochs: int | None) -> bool:
        """A k-means start only: once, after the last feature-only epoch (or the run's last)."""
        if self.cfg.init != "kmeans":
            return False
        last_and_none = epochs is not None and epoch + 1 == epochs and self.updates == 0
        return epoch + 1 == max(self.cfg.feature_epochs, 1) or last_and_none

    def update(self, embeddings: torch.Tensor, index: torch.Tensor, collectives: Collectives,
               epoch: int) -> dict[str, Any]:
        """Residual k-means on the gathered sample; gradient steps train the codebooks from there."""
        if self.cfg.init != "kmeans":
            raise RuntimeError("progressive codebooks with quantizer.init=random are trained by gradient "
                               "only; a codebook update is for quantizer.init=kmeans")
        return self.kmeans_start(embeddings, index, collectives)


class ProductCoding(GradientCoding):
    """MeCoQ's and MoPQ's product codebooks: trained by gradient through the objective's use of the
    soft / straight-through reconstructions (this coding adds no loss of its own), with an optional
    one-off spherical k-means start after ``kmeans_epoch`` epochs."""

    one_optimizer = True  # its codebooks join the network's Adam as a second group (DeepSpeed takes one)

    def __init__(self, cfg: ProductConfig, dim: int, V: torch.Tensor, space: str, seed: int):
        self.cfg, self.seed = cfg, seed
        self.quantizer = ProductQuantizer(dim, cfg.M, cfg.K, cfg.alpha, seed=seed, top_k=cfg.top_k)
        self.generator = torch.Generator().manual_seed(seed)  # unused by this kind; checkpointed alike
        self.updates = 0

    def loss(self, out: dict, epoch: int) -> tuple[None, dict[str, float]]:
        return None, {}

    def needs_update(self, epoch: int, epochs: int | None) -> bool:
        """The k-means start after ``kmeans_epoch`` epochs; with ``refit``, again after the last one."""
        start = self.cfg.init == "kmeans" and self.updates == 0 and epoch + 1 == self.cfg.kmeans_epoch
        return start or (self.cfg.refit and epochs is not None and epoch + 1 == epochs)

    def update(self, embeddings: torch.Tensor, index: torch.Tensor, collectives: Collectives,
               epoch: int) -> dict[str, Any]:
        """Spherical k-means per block on the gathered sample (the same on every rank): the start,
        or the final refit, which replaces the gradient-trained codewords by the k-means centroids
        of the trained encoder's embeddings (the codes the database gets are then k-means codes)."""
        return self.kmeans_start(embeddings, index, collectives)


CODINGS = {"additive": AdditiveCoding, "progressive": ProgressiveCoding, "product": ProductCoding}
