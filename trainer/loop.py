"""The per-worker training loop that Ray Train runs on every rank (``train_loop_per_worker``).

Read it top to bottom: build the run from the config -> resume from ``ray.train.get_checkpoint()``
if there is one -> for each epoch: train on this rank's share of the shards -> update the codebooks
when the method's schedule says so (every rank encodes its share, one all-reduce sums the
statistics, every rank solves the same system) -> metrics -> checkpoint + ``ray.train.report`` on
every rank -> at the end, rank 0 writes the inference checkpoint and the training curves.

Determinism: the data order is a function of (reader seed, epoch, rank, world size); every rank's
RNG states travel in the checkpoint; the ICM block order of a codebook update is seeded from
(seed, epoch) on every rank alike, so a resumed run repeats an uninterrupted one, and the codebooks
after an update do not depend on the number of workers.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.config import from_dict, to_dict
from trainer import distributed as dist, resume
from trainer.config import RunConfig
from trainer.metrics_log import EpochClock, format_line, plot_curves
from trainer.resume import TrainState


@dataclass
class WorkerRun:
    """What one rank trains with, built from the config."""

    cfg: RunConfig
    rank: int
    world_size: int
    device: torch.device
    method: Any               # trainer.methods.Method; method.net is wrapped (DDP / DeepSpeed engine)
    optimizer: Any            # MethodOptimizer (DDP) or None (the DeepSpeed engine steps)
    engine: Any               # the DeepSpeed engine, or None
    supervision: Any          # turns a batch's raw tags (or labels) into (B, T) targets
    tag_semantics_hash: str


def train_loop_per_worker(config: dict) -> None:
    cfg = from_dict(RunConfig, config)
    run = build_worker_run(cfg)
    state = resumed_state(run) or fresh_state(run)
    log = print if run.rank == 0 else (lambda *_, **__: None)
    for epoch in range(state.epoch, cfg.training.epochs):
        terms, clock = train_epoch(run, state, epoch)
        update = update_codebooks(run, epoch) if run.method.needs_codebook_update(epoch, cfg.training.epochs) else {}
        record = epoch_record(run, state, epoch, terms, clock, update)
        state.metrics.append(record)
        state.epoch = epoch + 1
        log(format_line(record), flush=True)
        save_and_report(run, state, record)
    if run.rank == 0:
        write_final(run, state)


# ---- building --------------------------------------------------------------------------------

def build_worker_run(cfg: RunConfig) -> WorkerRun:
    import ray.train

    from trainer.methods import build_method

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _device(cfg)
    supervision = Supervision.load(cfg)
    method = build_method(cfg.method, cfg.encoder, supervision.embeddings)
    method.net.to(device)
    optimizer = engine = None
    if cfg.training.engine == "deepspeed":
        engine = _deepspeed_engine(cfg, method)
        method.net = engine
    else:
        optimizer = method.build_optimizer(cfg.training.optim)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            method.net = DistributedDataParallel(
                method.net, device_ids=[device.index] if device.type == "cuda" else None)
    method.net.train()
    return WorkerRun(cfg, rank, world, device, method, optimizer, engine, supervision, supervision.hash)


def _device(cfg: RunConfig) -> torch.device:
    if cfg.scaling.use_gpu and cfg.scaling.num_workers > 0:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def _deepspeed_engine(cfg: RunConfig, method):
    """ZeRO stage 1/2 over the method's network; bf16 on GPU, fp32 on CPU (DS_ACCELERATOR=cpu).

    DeepSpeed reuses the process group Ray Train set up (its env vars), so no prepare_model here.
    The method's Adam and staircase schedule are handed to the engine, which steps both.
    """
    import deepspeed

    opt = method.build_optimizer(cfg.training.optim)
    if len(opt.optimizers) != 1:
        raise ValueError(f"training.engine=deepspeed supports one optimizer; method "
                         f"{cfg.method.name!r} has {len(opt.optimizers)}")
    ds_config = {
        "train_micro_batch_size_per_gpu": cfg.reader.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.training.deepspeed.zero_stage},
        "bf16": {"enabled": bool(cfg.scaling.use_gpu)},
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=method.net, optimizer=opt.optimizers[0],
                                           lr_scheduler=opt.schedulers[0], config=ds_config)
    return engine


@dataclass
class Supervision:
    """Weak tags -> merged multi-hot targets over the tag semantics (WSDHQ), or labels (DPQ)."""

    tags: Any
    embeddings: np.ndarray
    hash: str
    label_names: list[str] | None

    @classmethod
    def load(cls, cfg: RunConfig) -> "Supervision":
        from trainer.tags import TagSemantics

        tags = TagSemantics.load(cfg.data.tags)
        if cfg.method.spec.supervision == "tags":
            return cls(tags, tags.embeddings, tags.hash, None)
        from shards.embeddings import is_embedding_set, open_embedding_set
        from shards.manifest import Manifest
        from trainer.methods import LABEL_EMBED_DIM, label_embeddings

        names = (open_embedding_set(cfg.data.train, cfg.reader.label_column or None).label_names
                 if is_embedding_set(cfg.data.train) else Manifest.load(cfg.data.train).label_names)
        if not names:
            raise ValueError(f"method.name={cfg.method.name} needs labels; the manifest at {cfg.data.train} "
                             "has none")
        dim = cfg.method.embed_dim or LABEL_EMBED_DIM
        return cls(tags, label_embeddings(len(names), dim, cfg.method.seed).numpy(),
                   tags.hash, list(names))

    def targets(self, batch: dict) -> torch.Tensor:
        if self.label_names is None:
            return torch.from_numpy(self.tags.targets(batch["tags"]))
        col = {n: i for i, n in enumerate(self.label_names)}
        y = torch.zeros(len(batch["labels"]), len(col), dtype=torch.uint8)
        for r, labels in enumerate(batch["labels"]):
            for name in labels:
                y[r, col[name]] = 1
        return y


def loader(run: WorkerRun, epoch: int, train: bool):
    from shards.reader import make_loader

    return make_loader(run.cfg.data.train, run.cfg.reader, rank=run.rank, world_size=run.world_size,
                       epoch=epoch, train=train)


def model_input(run: WorkerRun, batch: dict) -> torch.Tensor:
    x = batch["feat"] if run.cfg.encoder.kind == "mlp" else batch["image"]
    return x.to(run.device, non_blocking=True)


def precision(run: WorkerRun):
    """bf16 autocast around forward passes when DeepSpeed runs in bf16 (GPU), else nothing: the
    engine's weights are bf16 there while inputs, tag embeddings and codebooks stay float32."""
    if run.engine is not None and run.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- resume ----------------------------------------------------------------------------------

def fresh_state(run: WorkerRun) -> TrainState:
    resume.seed_everything(run.cfg.training.seed * 1000 + run.rank)
    return TrainState(data_seed=run.cfg.reader.seed)


def resumed_state(run: WorkerRun) -> TrainState | None:
    """Load the latest reported checkpoint (after a worker failure, or a re-run with the same name)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None and run.cfg.scaling.num_workers == 0 and run.engine is None:
        return _resume_local(run)
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        loaded = resume.load(d)
        _check_tags(run, loaded)
        run.method.load_state_dict(loaded.method_state)
        if run.engine is not None:
            run.engine.load_checkpoint(str(Path(d) / resume.DEEPSPEED_DIR))
        else:
            run.optimizer.load_state_dict(loaded.optimizer)
    return _restore(run, loaded)


def _resume_local(run: WorkerRun) -> TrainState | None:
    """Local mode: the newest checkpoint this run persisted itself under storage (``save_and_report``)."""
    url = resume.latest_persisted(_run_url(run))
    if url is None:
        return None
    loaded = resume.load_persisted(url)
    _check_tags(run, loaded)
    run.method.load_state_dict(loaded.method_state)
    run.optimizer.load_state_dict(loaded.optimizer)
    return _restore(run, loaded)


def _run_url(run: WorkerRun) -> str:
    from shards import storage

    return storage.join(run.cfg.storage.path, run.cfg.storage.name)


def _check_tags(run: WorkerRun, loaded) -> None:
    if loaded.tag_semantics_hash != run.tag_semantics_hash:
        raise ValueError(
            f"resuming run {run.cfg.storage.name!r}: its checkpoint was trained with tag semantics "
            f"{loaded.tag_semantics_hash} but data.tags ({run.cfg.data.tags}) has hash "
            f"{run.tag_semantics_hash}; use a new storage.name for a new run")


def _restore(run: WorkerRun, loaded) -> TrainState:
    state = loaded.state
    if len(state.rng) == run.world_size:
        resume.set_rng_state(state.rng[run.rank]["global"])
        run.method.generator.set_state(state.rng[run.rank]["icm"])
    else:  # elastic restart at another size: the per-rank streams cannot carry over
        resume.seed_everything(run.cfg.training.seed * 1000 + state.epoch * 100 + run.rank)
    if run.rank == 0:
        print(f"resumed {run.cfg.storage.name} at epoch {state.epoch} step {state.step}", flush=True)
    return state


# ---- one epoch -------------------------------------------------------------------------------

def train_epoch(run: WorkerRun, state: TrainState, epoch: int) -> tuple[dict[str, float], EpochClock]:
    data = loader(run, epoch, train=True)
    n_batches = len(data)
    fail_at = n_batches // 2 if _should_fail(run, epoch) else -1
    sums: dict[str, float] = defaultdict(float)
    clock = EpochClock()
    it = iter(data)
    for i in range(n_batches):
        clock.before_fetch()
        batch = next(it)
        clock.after_fetch(len(batch["key"]))
        if i == fail_at:
            _inject_failure(run, epoch)
        with precision(run):
            loss, terms = run.method.loss({"x": model_input(run, batch), "y": run.supervision.targets(batch)},
                                          epoch)
        if run.engine is not None:
            run.engine.backward(loss)
            run.engine.step()
        else:
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
        for k, v in terms.items():
            sums[k] += v
        state.step += 1
    clock.stop()
    for _ in it:  # past the last batch come the DataLoader workers' counts of the samples they skipped
        pass
    clock.skips = dict(data.skips)
    return {k: v / max(n_batches, 1) for k, v in sums.items()}, clock


def update_codebooks(run: WorkerRun, epoch: int) -> dict[str, Any]:
    """Encode this rank's exact share (eval mode), then the method's ICM -> all-reduce -> solve.

    The rank's embeddings go to the method as one batch and the ICM generator is seeded from
    (seed, epoch) on every rank, so every sample is coded with the same block order whatever the
    world size. The method reports the update's quality: live codewords per codebook and the mean
    squared quantization error of the gathered sample coded afresh with the new codebooks.
    """
    started = time.perf_counter()
    method = run.method
    feats, index = [], []
    with torch.no_grad(), precision(run):
        for batch in loader(run, epoch, train=False):
            feats.append(method.embed(model_input(run, batch)).float().cpu())
            index.append(batch["index"])
    x = torch.cat(feats) if feats else torch.zeros(0, method.cfg.embed_dim)
    idx = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(idx)
    embedded = time.perf_counter()
    info = method.codebook_update(x[order], idx[order], dist.ProcessGroupCollectives(), epoch)
    out = {"codebook_update_seconds": dist.all_reduce_max(time.perf_counter() - started),
           "codebook_embed_seconds": dist.all_reduce_max(embedded - started),
           "codebook_samples": int(info["samples"])}
    if "quantization_error" in info:  # a k-means start of gradient codebooks has no solve to judge
        out.update(quantization_error=info["quantization_error"], live_codewords=info["live_codewords"])
    return out


def epoch_record(run: WorkerRun, state: TrainState, epoch: int, terms: dict[str, float],
                 clock: EpochClock, update: dict[str, Any]) -> dict[str, Any]:
    """One flat record, averaged over ranks (samples summed); the same on every rank."""
    timing = clock.summary()
    mean = dist.all_reduce_mean({**{f"loss/{k}": v for k, v in terms.items()},
                                 "data_wait_fraction": timing["data_wait_fraction"]})
    samples = dist.all_reduce_sum(torch.tensor([clock.samples], dtype=torch.float64)).item()
    skips: dict[str, int] = defaultdict(int)  # bad samples the training pass met, by reason, all ranks
    for rank_skips in dist.all_gather_object(clock.skips):
        for reason, n in rank_skips.items():
            skips[reason] += n
    seconds = dist.all_reduce_max(timing["epoch_seconds"])
    previous = state.metrics[-1] if state.metrics else {}
    record = {"epoch": epoch, "epochs": run.cfg.training.epochs, "step": state.step,
              "loss": mean.pop("loss/total", float("nan")), **mean,
              "samples": int(samples), "epoch_seconds": seconds, "samples_per_s": samples / seconds,
              "world_size": run.world_size, "codebook_update_seconds": 0.0, "codebook_embed_seconds": 0.0,
              "skipped": sum(skips.values()), "skips": dict(sorted(skips.items())),
              # codebook quality is measured at updates; between them the codebooks do not change
              "quantization_error": previous.get("quantization_error"),
              "live_codewords": previous.get("live_codewords")}
    record.update(update)
    return record


# ---- checkpoint, report, final -----------------------------------------------------------------

def save_and_report(run: WorkerRun, state: TrainState, record: dict[str, Any]) -> None:
    """Every rank reports once per epoch; rank 0 writes the checkpoint (every rank with DeepSpeed)
    every ``storage.checkpoint_every`` epochs and at the last (the same decision on every rank)."""
    import ray.train

    every = run.cfg.storage.checkpoint_every
    local = run.cfg.scaling.num_workers == 0
    checkpoint = state.epoch % every == 0 or state.epoch == run.cfg.training.epochs
    directory = None
    if checkpoint:
        state.rng = dist.all_gather_object({"global": resume.rng_state(),
                                            "icm": run.method.generator.get_state()})
    if checkpoint and (run.rank == 0 or run.engine is not None):
        directory = (resume.local_checkpoint_dir(_run_url(run), state.epoch) if local
                     else Path(tempfile.mkdtemp(prefix=f"wsdhq-ckpt-e{state.epoch}-r{run.rank}-")))
        if run.engine is not None:  # collective: every rank writes its ZeRO shard
            run.engine.save_checkpoint(str(directory / resume.DEEPSPEED_DIR), tag=f"epoch{state.epoch}")
        if run.rank == 0:
            resume.save(directory, state=state, method_state=run.method.state_dict(),
                               optimizer=None if run.engine is not None else run.optimizer.state_dict(),
                               scheduler=None, config=to_dict(run.cfg),
                               tag_semantics_hash=run.tag_semantics_hash)
    scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None}
    if directory is not None and local:  # Ray's local mode persists nothing: copy it to storage ourselves
        resume.persist(directory, _run_url(run), state.epoch, run.cfg.storage.keep_checkpoints)
    ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(str(directory))
                     if directory is not None and not local else None)
    if directory is not None and not local:
        shutil.rmtree(directory, ignore_errors=True)  # uploaded synchronously by report


def write_final(run: WorkerRun, state: TrainState) -> None:
    """``<storage>/<name>/final/``: the inference checkpoint eval consumes, metrics, curves."""
    import json

    from shards import storage
    from trainer.inference import save_inference
    from trainer.methods import unwrap

    final = storage.join(run.cfg.storage.path, run.cfg.storage.name, "final")
    unwrap(run.method.net).cpu()  # the files are read on CPU machines too
    run.method.quantizer.to("cpu")
    save_inference(final, run.method, {"config": to_dict(run.cfg), "epoch": state.epoch,
                                       "step": state.step, "tag_semantics_hash": run.tag_semantics_hash},
                   image_size=run.cfg.reader.image_size)
    storage.write_bytes(storage.join(final, "metrics.json"), json.dumps(state.metrics, indent=2).encode())
    storage.write_bytes(storage.join(final, "training_curves.png"), plot_curves(state.metrics))
    print(f"final inference checkpoint and training_curves.png in {final}", flush=True)


# ---- fault injection (debug.fail_at_epoch) ---------------------------------------------------------

def _failure_marker(run: WorkerRun, epoch: int) -> str:
    from shards import storage

    return storage.join(run.cfg.storage.path, run.cfg.storage.name, f"debug-failed-at-epoch-{epoch}")


def _should_fail(run: WorkerRun, epoch: int) -> bool:
    from shards import storage

    d = run.cfg.debug
    return (d.fail_at_epoch == epoch and d.fail_rank == run.rank
            and not storage.exists(_failure_marker(run, epoch)))


def _inject_failure(run: WorkerRun, epoch: int) -> None:
    """Fires once per run: the marker in the run's storage stops the restarted worker firing again."""
    from shards import storage

    storage.write_bytes(_failure_marker(run, epoch), b"injected failure\n")
    raise RuntimeError(f"debug.fail_at_epoch={epoch}: injected failure on rank {run.rank}")
