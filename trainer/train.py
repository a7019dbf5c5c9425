"""``python -m trainer.train --config configs/<name>.yaml [key=value ...]`` (also ``wsdhq train``).

The driver: load the typed config, check the inputs (one clear error before any worker starts),
then hand ``trainer.loop.train_loop_per_worker`` to Ray Train's ``TorchTrainer``. The same command
runs on a laptop (a local Ray instance is started) and under ``ray job submit`` on a cluster (it
joins the job's cluster). Re-running with the same ``storage.name`` resumes that run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from shards import config as config_lib
from shards.config import ConfigError
from trainer.config import RunConfig


class InputError(ValueError):
    """An input the config points at is missing or unusable; the message names it."""


def resolve_storage(path: str) -> str:
    """Absolute local path or the s3:// URL as given (Ray Train needs absolute local paths)."""
    from shards import storage

    return path if storage.is_s3(path) else str(Path(path).expanduser().resolve())


def preflight(cfg: RunConfig) -> dict:
    """Check what the workers will read, on the driver; returns facts the summary prints. (The
    config's own ranges were checked when it was loaded: each section's ``__post_init__``.)"""
    from shards import storage
    from shards.manifest import Manifest, check_shards
    from shards.reader import ReaderError, SlotPlan, train_batches
    from trainer.methods.method import reads_embeddings
    from trainer.quantizers.kmeans import require_faiss
    from trainer.tags import TagSemantics

    if not cfg.data.train:
        raise ConfigError("data.train: no training shard set given")
    if not cfg.data.tags:
        raise ConfigError("data.tags: no tag semantics artifact given (python -m trainer.tags build ...)")
    embeddings = _embedding_set(cfg)
    try:
        manifest = embeddings or Manifest.load(cfg.data.train)
    except (OSError, ValueError) as e:
        raise InputError(f"data.train: cannot read the training manifest at {cfg.data.train}: {e}") from None
    if manifest.total == 0:
        raise InputError(f"data.train: the training set at {cfg.data.train} is empty (0 samples)")
    try:  # a missing or changed shard: one line here, not a traceback from every worker
        if embeddings is None:  # an embedding set was validated part by part already
            check_shards(manifest)
    except (OSError, ValueError) as e:
        raise InputError(f"data.train: {e}") from None
    kmeans, K = cfg.method.kmeans_start, cfg.method.quantizer.K
    if kmeans:
        try:
            require_faiss()
        except ImportError as e:
            raise ConfigError(f"method.quantizer.kind={cfg.method.quantizer.kind}: {e}") from None
    if kmeans and manifest.total < K:
        raise InputError(f"method.quantizer.K={K} but data.train has only {manifest.total} samples: the "
                         "codebooks start from k-means, which needs at least K samples; use a smaller "
                         "method.quantizer.K or more data")
    workers = max(1, cfg.scaling.num_workers)
    plan = SlotPlan(len(manifest.shards), workers, cfg.reader.num_workers)  # the reader's own rule
    try:
        train_batches(manifest.total, workers, cfg.reader.batch_size, cfg.data.train)
    except ReaderError as e:
        raise InputError(f"reader.batch_size={cfg.reader.batch_size}: {e}") from None
    try:
        tags = TagSemantics.load(cfg.data.tags)
    except (OSError, ValueError) as e:
        raise InputError(f"data.tags: cannot load the tag semantics artifact at {cfg.data.tags}: {e}") from None
    if (cfg.method.spec.supervision == "tags" and reads_embeddings(cfg.method)
            and cfg.method.embed_dim not in (0, tags.dim)):  # 0: the artifact's
        raise ConfigError(f"method.embed_dim={cfg.method.embed_dim} but the tag embeddings in {cfg.data.tags} "
                          f"are {tags.dim}-dimensional; set method.embed_dim={tags.dim} or leave it out")
    if storage.is_s3(cfg.storage.path):
        bucket = storage.split_s3(cfg.storage.path)[0]
        try:
            storage.s3_client().head_bucket(Bucket=bucket)
        except Exception as e:  # botocore ClientError / endpoint errors: name the bucket, not the stack
            raise InputError(f"storage.path: S3 bucket {bucket!r} is not reachable: {e}") from None
    if cfg.training.engine == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("training.engine=deepspeed but deepspeed is not installed "
                              "(pip install 'wsdhq[deepspeed]')") from None
    return {"train_samples": manifest.total, "train_shards": len(manifest.shards),
            "tags": len(tags.names), "tag_semantics_hash": tags.hash,
            "slot_plan": plan.describe() if plan.by_sample else None}


def _embedding_set(cfg: RunConfig):
    """data.train as a validated embedding set (shards.embeddings), or None for a shard set. Validation
    reads every part's npy header and parquet footer, so a bad set fails here, naming the file."""
    from types import SimpleNamespace

    from shards.embeddings import EmbeddingSetError, is_embedding_set, open_embedding_set

    try:
        if not is_embedding_set(cfg.data.train):
            return None
        es = open_embedding_set(cfg.data.train, cfg.reader.label_column or None)
    except (OSError, EmbeddingSetError) as e:
        raise InputError(f"data.train: {e}") from None
    if cfg.encoder.kind != "mlp" or cfg.encoder.in_features != es.dim:
        raise ConfigError(f"data.train is an embedding set of dim {es.dim}: it trains encoder.kind=mlp with "
                          f"encoder.in_features={es.dim} (got {cfg.encoder.kind}, {cfg.encoder.in_features})")
    return SimpleNamespace(total=len(es), shards=es.parts)


def _storage(path: str):
    """(storage_path, storage_filesystem) for Ray Train: pyarrow's S3 honours AWS_ENDPOINT_URL only
    through ``FileSystem.from_uri``, so S3 goes that way (moto, MinIO, R2 and AWS alike)."""
    from shards import storage

    if not storage.is_s3(path):
        return path, None
    import pyarrow.fs

    fs, prefix = pyarrow.fs.FileSystem.from_uri(path)
    return prefix, fs


def build_trainer(cfg: RunConfig, train_fn: Callable[[dict], None] | None = None):
    """The TorchTrainer for ``cfg`` (``train_fn`` defaults to the real per-worker loop)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.loop import train_loop_per_worker

    storage_url = resolve_storage(cfg.storage.path)
    loop_config = config_lib.to_dict(cfg)
    loop_config["storage"]["path"] = storage_url
    storage_path, storage_fs = _storage(storage_url)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    env_vars = {"RAY_TRAIN_COLLECTIVE_TIMEOUT_S": str(cfg.scaling.collective_timeout_s)}
    if not cfg.scaling.use_gpu:
        env_vars["DS_ACCELERATOR"] = "cpu"
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        if k in os.environ:
            env_vars[k] = os.environ[k]
    env_vars.update(cfg.scaling.worker_env)
    return TorchTrainer(
        train_fn or train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources if cfg.scaling.num_workers else None),
        torch_config=TorchConfig(timeout_s=cfg.scaling.collective_timeout_s),
        run_config=ray.train.RunConfig(
            name=cfg.storage.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.failure.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.storage.keep_checkpoints),
            worker_runtime_env={"env_vars": env_vars}),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wsdhq train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    a = p.parse_args(argv)
    try:
        cfg = config_lib.load(RunConfig, a.config, a.overrides)
        facts = preflight(cfg)
    except (ConfigError, InputError) as e:
        print(f"wsdhq train: {e}", file=sys.stderr)
        return 2
    print(f"wsdhq train: {facts['train_samples']} samples in {facts['train_shards']} shards, "
          f"{facts['tags']} tag units, {max(1, cfg.scaling.num_workers)} worker(s), run "
          f"{resolve_storage(cfg.storage.path)}/{cfg.storage.name}", flush=True)
    if facts["slot_plan"]:
        print(f"wsdhq train: {facts['slot_plan']}", flush=True)
    import ray.train

    try:
        build_trainer(cfg).fit()
    except ray.train.TrainingFailedError as e:  # out of retries: the workers' error, once
        print(f"wsdhq train: training failed: {e}", file=sys.stderr)
        return 1
    from shards import storage

    final = storage.join(resolve_storage(cfg.storage.path), cfg.storage.name, "final")
    history = json.loads(storage.read_bytes(storage.join(final, "metrics.json")))  # local mode reports none
    last = history[-1]
    print(f"wsdhq train: done, {len(history)} epochs, final loss {last['loss']:.4g}; "
          f"inference checkpoint and training_curves.png in {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
