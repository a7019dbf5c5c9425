"""PQ-AG-style robustness of the codes to adversarial queries (methods.md §3, issue 17).

A retrieval system answers queries from the public, so a query image may be perturbed, within an
L∞ budget, to move its codes and with them the neighbours it retrieves. PQ-AG's exact loss and
step sizes are unconfirmed; this module implements the "likely objective" of methods.md §3:
iterative gradient-sign steps (PGD with a seeded random start) that push the query's soft codeword
distribution p_mk = softmax_k(α·cos(x_m, c_mk)) away from the clean one.

Choices made here (what the paper leaves open):

- **Additive** quantizers (WSDHQ) have full-dimensional codebooks, so there are no sub-vectors:
  x_m is the whole embedding, and p_m is the softmax over the per-codebook cosine between the
  embedding and each codeword of codebook m. (The ICM code is not an argmax of that cosine, but the
  cosine ranks how strongly each codeword explains the embedding, and it is differentiable.)
- **Progressive** quantizers (DPQ) quantize a running residual: x_m is the residual after the
  previous levels' hard codewords (the same path as ``ProgressiveQuantizer.encode``; the argmax
  picks are not differentiated, the residual is).
- The loss is either ``kl`` = Σ_m KL(p_m(clean) ‖ p_m(adv)), or ``ce`` = Σ_m −log p_m(adv)[b_m],
  with b the clean hard code from the quantizer's own ``encode``; both are maximised.
- Images are ImageNet-normalised by ``shards.transforms``; the attack works in pixel space [0, 1]
  (ε in 1/255 units), clamps there and hands back normalised tensors.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from shards.transforms import IMAGENET_MEAN, IMAGENET_STD
from trainer.losses import reading_target

LOSSES = ("kl", "ce")


@dataclass(frozen=True)
class AttackConfig:
    """White-box L∞ attack. ``eps`` and ``step_size`` are in 1/255 pixel units; ``step_size`` None
    means 2.5·ε/steps (Madry et al.'s rule, so the walk can reach the budget's corner from any start)."""

    eps: float = 8.0
    steps: int = 10
    step_size: float | None = None
    alpha: float = 10.0  # MeCoQ's soft-assignment scale (methods.md §3)
    loss: str = "kl"
    random_start: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0 (1/255 units), got {self.eps}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def step(self) -> float:
        """Step size in [0, 1] pixel units."""
        size = self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)
        return size / 255.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (N, 3, H, W) back to [0, 1] pixels (unclamped)."""
    return x * IMAGENET_STD.to(x) + IMAGENET_MEAN.to(x)


def to_normalised(p: torch.Tensor) -> torch.Tensor:
    return (p - IMAGENET_MEAN.to(p)) / IMAGENET_STD.to(p)


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"query images: expected ImageNet-normalised (N, 3, H, W), got {tuple(x.shape)}; "
                         "the attack perturbs pixels, so feature checkpoints (encoder.kind=mlp) cannot be attacked")


def embed_with_grad(model, x: torch.Tensor) -> torch.Tensor:
    """``InferenceModel.embed`` without its ``no_grad``: the attack needs d(embedding)/d(pixels)
    (a frozen backbone builds its graph because the pixels require a gradient)."""
    return reading_target(model.encoder(x), model.space)


def codeword_logits(quantizer, e: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·cos(x_m, c_mk), (N, M, K): additive = whole embedding vs each codebook; progressive = the
    running residual of the hard path vs each level (see the module docstring)."""
    C = quantizer.codebooks.detach().to(e)
    Cn = F.normalize(C, dim=2)
    if quantizer.kind == "additive":
        return alpha * torch.einsum("nd,mkd->nmk", F.normalize(e, dim=1), Cn)
    if quantizer.kind == "progressive":
        r, out = e, []
        for m in range(C.shape[0]):
            sim = F.normalize(r, dim=1) @ Cn[m].T
            out.append(alpha * sim)
            r = r - C[m][sim.detach().argmax(1)]
        return torch.stack(out, 1)
    raise ValueError(f"quantizer kind {quantizer.kind!r}: the attack knows 'additive' and 'progressive'")


def attack_objective(logits: torch.Tensor, clean_logits: torch.Tensor, clean_codes: torch.Tensor,
                     loss: str) -> torch.Tensor:
    """Per-query divergence from the clean assignment, (N,), summed over codebooks (to maximise)."""
    logp = F.log_softmax(logits, dim=2)
    if loss == "kl":
        p0 = F.softmax(clean_logits, dim=2)
        return (p0 * (F.log_softmax(clean_logits, dim=2) - logp)).sum((1, 2))
    return -logp.gather(2, clean_codes.long().unsqueeze(2)).squeeze(2).sum(1)


def attack(model, x: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """Adversarial versions of the ImageNet-normalised query images ``x`` (same shape, normalised):
    ‖pixels(adv) − pixels(x)‖∞ ≤ ε/255 and pixels(adv) ∈ [0, 1] (x's own pixels are clamped first,
    so an input slightly outside the range from resizing stays within ε of its clamped self)."""
    _check_images(x)
    x = x.detach()
    if cfg.eps == 0 or cfg.steps == 0:
        return x.clone()
    eps = cfg.eps / 255.0
    q = model.quantizer
    clean = to_pixels(x).clamp(0, 1)
    with torch.no_grad():
        x0 = to_normalised(clean)
        e0 = embed_with_grad(model, x0)
        clean_logits = codeword_logits(q, e0, cfg.alpha)
        clean_codes = q.encode(e0).to(x.device)
    adv = clean.clone()
    if cfg.random_start:
        g = torch.Generator().manual_seed(cfg.seed)
        adv = (clean + (torch.rand(clean.shape, generator=g) * 2 - 1).to(clean) * eps).clamp(0, 1)
    for _ in range(cfg.steps):
        adv.requires_grad_(True)
        e = embed_with_grad(model, to_normalised(adv))
        obj = attack_objective(codeword_logits(q, e, cfg.alpha), clean_logits, clean_codes, cfg.loss).sum()
        (grad,) = torch.autograd.grad(obj, adv)
        with torch.no_grad():
            adv = adv + cfg.step * grad.sign()
            adv = torch.max(torch.min(adv, clean + eps), clean - eps).clamp(0, 1)
    return to_normalised(adv.detach())


@torch.no_grad()
def ranking(model, x: torch.Tensor, db_codes: np.ndarray, k: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """AQD top-``k`` of the query images against database codes (eval.scoring's searcher, the
    evaluation's tie-breaking), plus the queries' own codes: (indices (Q, k), codes (Q, M))."""
    from eval.scoring import search_aqd

    q = model.quantizer
    e = torch.cat([model.embed(x[i:i + batch]) for i in range(0, len(x), batch)]).cpu()
    lut = q.lut(e).cpu().numpy()
    _, ids = search_aqd(lut, np.ascontiguousarray(db_codes), min(k, len(db_codes)))
    return ids, q.encode(e).cpu().numpy()


def retrieval_map(ids: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, convention: str = "skip") -> float:
    """mAP@k of a ranking with multi-hot labels (eval.metrics, the evaluation's conventions)."""
    from eval.metrics import ranking_metrics, relevance

    rel_all = relevance(q_labels, db_labels)
    rel = np.take_along_axis(rel_all, ids, axis=1)
    m = ranking_metrics(rel, rel_all.sum(1), precision_ks=(min(10, ids.shape[1]),))
    return m.map_skip if convention == "skip" else m.map_zero


def compare(ids_clean: np.ndarray, ids_adv: np.ndarray, codes_clean: np.ndarray, codes_adv: np.ndarray,
            top: int = 10) -> dict:
    """How much the attack moved the answers: mean fraction of the clean top-``top`` neighbours no
    longer in the perturbed top-``top`` (as sets, order ignored), and mean codewords changed per query."""
    t = min(top, ids_clean.shape[1])
    changed = [1.0 - len(set(a[:t]) & set(b[:t])) / t for a, b in zip(ids_clean, ids_adv)]
    return {f"top{top}_changed": float(np.mean(changed)) if changed else 0.0,
            "code_flips_per_query": float((codes_clean != codes_adv).sum(1).mean()) if len(codes_clean) else 0.0}


# ---- the report -------------------------------------------------------------------------------


class RobustnessError(ValueError):
    """An input the robustness report cannot use; the message names it."""


@dataclass
class RobustnessConfig:
    """``eps`` in 1/255 pixel units, one attack per value; the ranking is mAP@``top_k`` by AQD."""

    eps: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    steps: int = 10
    step_size: float | None = None  # None: 2.5·ε/steps per ε
    alpha: float = 10.0
    loss: str = "kl"
    random_start: bool = True
    seed: int = 0
    max_queries: int = 200  # the first this many usable query images (an attack is 2·steps passes each)
    top_k: int = 1000
    neighbours: int = 10  # "top-10 neighbours changed"
    grid_queries: int = 4  # rows of clean / perturbed queries (at the largest ε) in the grid PNG
    grid_top: int = 5
    batch_size: int = 32
    num_workers: int = 0

    def __post_init__(self):
        if not self.eps:
            raise RobustnessError("eps: give at least one budget, e.g. eps=[2,4,8]")
        for e in self.eps:
            AttackConfig(eps=float(e), steps=self.steps, step_size=self.step_size, alpha=self.alpha,
                         loss=self.loss)  # range checks, one place
        for key in ("max_queries", "top_k", "neighbours", "batch_size", "grid_top"):
            if getattr(self, key) < 1:
                raise RobustnessError(f"{key} must be >= 1, got {getattr(self, key)}")

    def attack(self, eps: float) -> AttackConfig:
        return AttackConfig(eps=float(eps), steps=self.steps, step_size=self.step_size, alpha=self.alpha,
                            loss=self.loss, random_start=self.random_start, seed=self.seed)


def read_queries(shards: str, image_size: int, cfg: RobustnessConfig) -> tuple[torch.Tensor, list[str], list[list[str]]]:
    """The first ``max_queries`` images of a shard set through ``shards.reader`` (the eval transform
    the encode job uses: ImageNet-normalised, centre crop at the checkpoint's size)."""
    from shards.reader import ReaderConfig, make_loader

    rc = ReaderConfig(batch_size=cfg.batch_size, image_size=image_size, augment=False, num_workers=cfg.num_workers)
    xs, keys, labels = [], [], []
    for b in make_loader(shards, rc, train=False):
        if "image" not in b:
            raise RobustnessError(f"{shards}: batches carry no images (an embedding set?); the attack perturbs pixels")
        xs.append(b["image"])
        keys += b["key"]
        labels += b["labels"]
        if len(keys) >= cfg.max_queries:
            break
    if not keys:
        raise RobustnessError(f"{shards}: no usable query images")
    n = min(cfg.max_queries, len(keys))
    return torch.cat(xs)[:n], keys[:n], labels[:n]


def _check_codes_from(checkpoint: str, manifest: dict, what: str) -> None:
    from eval.encode import checkpoint_identity

    have = checkpoint_identity(checkpoint)["sha256"]
    if (manifest.get("checkpoint_sha256") or {}) != have:
        raise RobustnessError(f"{what}: the database codes were encoded by {manifest.get('checkpoint')}, not by "
                              f"{checkpoint}: rankings need the codes of the model that embeds the queries")


def queries_digest(x: torch.Tensor) -> str:
    """sha256 of the query tensor's bytes: the cache key's record of exactly which pixels were attacked."""
    import hashlib

    return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def adversarial_queries(model, checkpoint: str, x: torch.Tensor, cfg: RobustnessConfig, eps: float,
                        cache: str | None = None, digest: str | None = None, log=print) -> torch.Tensor:
    """The attack at ``eps`` on every query, batch by batch. With ``cache`` (a directory, local or
    s3://) an identical attack is read back instead of re-run: the key covers the checkpoint's files
    (sha256), the query pixels, the attack settings, the batch (the random start is drawn per batch)
    and the device. A white-box report on model A and a transfer report crafted on A then share
    one attack, which on a CPU is most of their cost."""
    def compute() -> torch.Tensor:
        return torch.cat([attack(model, x[i:i + cfg.batch_size], cfg.attack(eps)) for i in range(0, len(x), cfg.batch_size)])

    if not cache:
        return compute()
    import hashlib
    import io
    from dataclasses import asdict

    from eval.encode import checkpoint_identity
    from shards import storage

    key = {"checkpoint_sha256": checkpoint_identity(checkpoint)["sha256"], "queries": digest or queries_digest(x),
           "attack": asdict(cfg.attack(eps)), "batch_size": cfg.batch_size, "device": x.device.type}
    url = storage.join(cache, "adv-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24] + ".pt")
    if storage.exists(url):
        adv = torch.load(io.BytesIO(storage.read_bytes(url)), map_location=x.device, weights_only=True)
        if not isinstance(adv, torch.Tensor) or adv.shape != x.shape:
            raise RobustnessError(f"--adversarial-cache {url}: holds {getattr(adv, 'shape', type(adv))}, not the "
                                  f"{tuple(x.shape)} queries its key names; delete it")
        log(f"  eps {eps:g}/255 on {checkpoint}: read back from {url}")
        return adv
    adv = compute()
    buf = io.BytesIO()
    torch.save(adv.cpu(), buf)
    storage.write_bytes(url, buf.getvalue())
    return adv


def random_map(q_labels: np.ndarray, db_labels: np.ndarray, k: int, seeds: int = 5) -> dict:
    """mAP@``k`` of seeded random rankings, mean over ``seeds`` permutations per query, both
    conventions: the floor an attack is pushing towards. On a multi-label set where most pairs share
    a label it is far above 0 (MIRFLICKR: ~0.47), so an attacked mAP reads against it."""
    n, out = len(db_labels), {"skip": [], "zero": []}
    for s in range(seeds):
        rng = np.random.default_rng(s)
        ids = np.stack([rng.permutation(n)[:k] for _ in range(len(q_labels))])
        for c in out:
            out[c].append(retrieval_map(ids, q_labels, db_labels, c))
    return {c: float(np.mean(v)) for c, v in out.items()}


def _scores(model, x, db, ql, dl, cfg, clean=None) -> tuple[dict, tuple]:
    ids, codes = ranking(model, x, db.codes, cfg.top_k, cfg.batch_size)
    row = {"mAP": {c: retrieval_map(ids, ql, dl, c) for c in ("skip", "zero")}}
    if clean is not None:
        row.update(compare(clean[0], ids, clean[1], codes, cfg.neighbours))
    return row, (ids, codes)


def grid_png(x_clean: torch.Tensor, x_adv: torch.Tensor, keys: list[str], ids_clean: np.ndarray,
             ids_adv: np.ndarray, rel_clean: np.ndarray, rel_adv: np.ndarray, db_keys: np.ndarray,
             database_shards: str, eps: float, top: int) -> bytes:
    """PNG bytes: per query, the clean image and its top results, then the perturbed one and its."""
    import tempfile
    from pathlib import Path

    from eval.evaluate import shard_images
    from eval.plots import retrieval_grid

    want = {str(db_keys[i]) for ids in (ids_clean, ids_adv) for i in ids[:, :top].reshape(-1)}
    thumbs = shard_images(database_shards, want)
    missing = want - set(thumbs)
    if missing:
        raise RobustnessError(f"--database-shards {database_shards}: {len(missing)} database keys not found "
                              f"(e.g. {sorted(missing)[0]!r}); give the shard set the codes were encoded from")

    def pixels(t: torch.Tensor) -> np.ndarray:
        return (to_pixels(t).clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)

    images, results, relevant, titles = [], [], [], []
    for q in range(len(keys)):
        for name, x, ids, rel in (("clean", x_clean, ids_clean, rel_clean), (f"eps {eps:g}", x_adv, ids_adv, rel_adv)):
            images.append(pixels(x[q]))
            results.append([thumbs[str(db_keys[i])] for i in ids[q, :top]])
            relevant.append([bool(v) for v in rel[q, :top]])
            titles.append(f"{keys[q]} {name}: ")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "grid.png")
        retrieval_grid(images, results, relevant, titles, path)
        return Path(path).read_bytes()


def run(checkpoint: str, query_shards: str, database_codes: str, cfg: RobustnessConfig,
        source_checkpoint: str | None = None, log=print, database_shards: str | None = None,
        adversarial_cache: str | None = None) -> dict:
    """Clean, white-box and (with ``source_checkpoint``) transfer mAP against ε; the result dict
    (with ``database_shards``, ``grid_png`` holds the grid's PNG bytes, which ``write`` stores;
    ``adversarial_cache``: see ``adversarial_queries``)."""
    from eval.codes import label_matrix, load_code_set
    from trainer.inference import load_inference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_inference(checkpoint, device)
    db = load_code_set(database_codes, with_features=False)
    _check_codes_from(checkpoint, db.manifest, "--database-codes")
    if not db.has_labels:
        raise RobustnessError(f"{database_codes}: the database codes carry no labels; mAP needs them")
    if model.image_size is None:
        raise RobustnessError(f"{checkpoint}: a feature checkpoint (no image size); the attack perturbs pixels")
    source = load_inference(source_checkpoint, device) if source_checkpoint else None
    if source is not None and (source.image_size or 0) != model.image_size:
        raise RobustnessError(f"--source-checkpoint takes {source.image_size}px images, the target "
                              f"{model.image_size}px: transfer needs the same input size")
    x, keys, labels = read_queries(query_shards, model.image_size, cfg)
    x = x.to(device)
    names = sorted(set(db.label_names()) | {t for ls in labels for t in ls})
    ql, dl = label_matrix(labels, names), db.label_matrix(names)
    log(f"robustness: {len(keys)} queries, {len(db)} database items, eps {cfg.eps}, {cfg.steps} steps")
    clean_row, clean = _scores(model, x, db, ql, dl, cfg)
    out = {"checkpoint": checkpoint, "source_checkpoint": source_checkpoint, "query_shards": query_shards,
           "database_codes": database_codes, "queries": len(keys), "database": len(db),
           "queries_without_labels": sum(not ls for ls in labels), "config": _config_dict(cfg),
           "top_k": min(cfg.top_k, len(db)), "clean": clean_row,
           "random": {"mAP": random_map(ql, dl, min(cfg.top_k, len(db)))}, "white_box": [], "transfer": []}
    digest = queries_digest(x) if adversarial_cache else None
    for eps in cfg.eps:
        adv = adversarial_queries(model, checkpoint, x, cfg, eps, adversarial_cache, digest, log)
        row, (ids_adv, _) = _scores(model, adv, db, ql, dl, cfg, clean)
        if database_shards and eps == max(cfg.eps):
            from eval.metrics import relevance

            n = min(cfg.grid_queries, len(keys))
            rel = relevance(ql[:n], dl)
            out["grid_png"] = grid_png(x[:n], adv[:n], keys[:n], clean[0][:n], ids_adv[:n],
                                       np.take_along_axis(rel, clean[0][:n], 1), np.take_along_axis(rel, ids_adv[:n], 1),
                                       db.keys, database_shards, eps, cfg.grid_top)
        out["white_box"].append({"eps": eps, **row})
        log(f"  white-box eps {eps}/255: mAP {row['mAP']['zero']:.4f} (clean {clean_row['mAP']['zero']:.4f})")
        if source is not None:
            adv = adversarial_queries(source, source_checkpoint, x, cfg, eps, adversarial_cache, digest, log)
            row, _ = _scores(model, adv, db, ql, dl, cfg, clean)
            out["transfer"].append({"eps": eps, **row})
            log(f"  transfer  eps {eps}/255: mAP {row['mAP']['zero']:.4f}")
    return out


def _config_dict(cfg: RobustnessConfig) -> dict:
    from shards.config import to_dict

    return to_dict(cfg)


def markdown(r: dict) -> str:
    k, nb = r["top_k"], r["config"]["neighbours"]
    lines = ["# Robustness to adversarial queries", "",
             f"Checkpoint `{r['checkpoint']}`; {r['queries']} queries from `{r['query_shards']}` against "
             f"{r['database']} database codes `{r['database_codes']}`.",
             f"Attack: L∞ iterative gradient sign, {r['config']['steps']} steps, loss `{r['config']['loss']}`, "
             f"α = {r['config']['alpha']}, seed {r['config']['seed']}; ε in 1/255 pixel units. mAP@{k} by AQD; "
             "`zero` counts a query with no relevant item in the top-K as AP 0 (the honest figure under attack: "
             "`skip` leaves exactly those queries out).", "",
             f"| setting | ε | mAP@{k} zero | mAP@{k} skip | top-{nb} changed | code flips / query |",
             "|---|---|---|---|---|---|",
             f"| clean | 0 | {r['clean']['mAP']['zero']:.4f} | {r['clean']['mAP']['skip']:.4f} | 0 | 0 |"]
    if "random" in r:
        lines.append(f"| random ranking (5 seeds) | | {r['random']['mAP']['zero']:.4f} | {r['random']['mAP']['skip']:.4f} | | |")
    for name in ("white_box", "transfer"):
        for row in r[name]:
            lines.append(f"| {name.replace('_', '-')} | {row['eps']:g} | {row['mAP']['zero']:.4f} | "
                         f"{row['mAP']['skip']:.4f} | {row[f'top{nb}_changed']:.3f} | {row['code_flips_per_query']:.3f} |")
    if r["source_checkpoint"]:
        lines += ["", f"Transfer queries were crafted on `{r['source_checkpoint']}` and ranked by the checkpoint above."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in ("white_box", "transfer"):
        if r[name]:
            ax.plot([0] + [row["eps"] for row in r[name]],
                    [r["clean"]["mAP"]["zero"]] + [row["mAP"]["zero"] for row in r[name]], marker="o",
                    label=name.replace("_", "-"))
    if "random" in r:
        ax.axhline(r["random"]["mAP"]["zero"], color="grey", linestyle="--", label="random ranking")
    ax.set_xlabel("ε (1/255)")
    ax.set_ylabel(f"mAP@{r['top_k']} (zero)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(r: dict, out: str) -> None:
    import tempfile
    from pathlib import Path

    from shards import storage

    r = dict(r)
    grid = r.pop("grid_png", None)
    if grid is not None:
        storage.write_bytes(storage.join(out, "grid.png"), grid)
    storage.write_bytes(storage.join(out, "robustness.json"), json.dumps(r, indent=1).encode())
    storage.write_bytes(storage.join(out, "report.md"), markdown(r).encode())
    with tempfile.TemporaryDirectory() as tmp:
        png = str(Path(tmp) / "map_vs_eps.png")
        plot(r, png)
        storage.write_bytes(storage.join(out, "map_vs_eps.png"), Path(png).read_bytes())


def _job(args: tuple) -> dict:
    checkpoint, query_shards, database_codes, cfg, source, database_shards, cache = args
    return run(checkpoint, query_shards, database_codes, cfg, source, database_shards=database_shards,
               adversarial_cache=cache)


def main(argv: list[str] | None = None) -> int:
    from shards import config as tconfig

    p = argparse.ArgumentParser(prog="python -m eval.robustness", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="inference checkpoint that encoded --database-codes")
    p.add_argument("--query-shards", required=True, help="image shard set of the queries (dir or s3://)")
    p.add_argument("--database-codes", required=True, help="code set of the database (wsdhq encode)")
    p.add_argument("--out", required=True, help="report directory (dir or s3://)")
    p.add_argument("--source-checkpoint", help="black-box transfer: craft the queries on this model")
    p.add_argument("--database-shards", help="the database's shard set: adds grid.png (clean vs perturbed "
                                             "queries and their top results)")
    p.add_argument("--adversarial-cache", help="directory (or s3://) keeping each attack's perturbed queries: "
                                               "an identical attack (same checkpoint files, query pixels, settings, "
                                               "batch, device) is read back, e.g. A's white-box run and a transfer "
                                               "run crafted on A")
    p.add_argument("--config", help="YAML with RobustnessConfig fields")
    p.add_argument("--local", action="store_true", help="run in this process, without Ray")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eps=[2,4,8] steps=10 max_queries=100")
    a = p.parse_intermixed_args(argv)  # key=value overrides may come before or after the flags
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = tconfig.load(RobustnessConfig, a.config, a.overrides)
        args = (a.checkpoint, a.query_shards, a.database_codes, cfg, a.source_checkpoint, a.database_shards,
                a.adversarial_cache)
        if a.local:
            r = run(*args[:4], source_checkpoint=a.source_checkpoint, log=lambda s: print(s, flush=True),
                    database_shards=a.database_shards, adversarial_cache=a.adversarial_cache)
        else:  # one Ray task (a GPU when the cluster has one), like the encode job's workers
            import ray

            ray.init(ignore_reinit_error=True)  # RAY_ADDRESS when set (a cluster), else a local Ray
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            r = ray.get(ray.remote(num_gpus=gpus)(_job).remote(args))
        write(r, a.out)
        print(markdown(r))
    except (tconfig.ConfigError, ValueError, OSError) as exn:
        print(f"robustness: error: {exn}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
