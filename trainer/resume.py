"""Resuming training: the training checkpoint, everything needed to resume a run exactly, in one
directory. (The model a run hands to the encode job is ``trainer.inference``'s export.)

A checkpoint is written to a fresh local directory and handed to ``ray.train.report``; Ray Train
copies it under ``<storage_path>/<run_name>/`` (a local path or s3://) and hands the latest one back
through ``ray.train.get_checkpoint()`` after a worker failure or when the same run name is started
again. Layout:

- ``train_state.pt``: method state (encoder weights, codebooks, ...), optimizer, scheduler,
  epoch / step, data-pipeline seed, every rank's RNG states. Plain tensors and containers only, so it
  loads with ``torch.load(weights_only=True)``.
- ``meta.json``: the run's config, the tag semantics hash, epoch and step, for a person to read.
- ``metrics.json``: the cumulative per-epoch metrics (Ray Train V2 keeps no free-floating metrics).
- ``deepspeed/``: the DeepSpeed engine's own checkpoint (ZeRO shards, one file set per rank) when
  training with DeepSpeed; in that case the optimizer and encoder live there, not in train_state.pt.

Ray Train's local mode (``scaling.num_workers=0``) persists nothing it is handed, so there the loop
writes the same directory to ``<storage.path>/<storage.name>/checkpoint_local_e<epoch>/`` itself
(``local_checkpoint_dir``: in place on local storage, so a SIGKILL leaves no temp dir; through a
temp dir uploaded by ``persist`` on S3), a ``.complete`` marker last, and a re-run with the same
name resumes from the newest complete one (``latest_persisted``), as a Ray run resumes from Ray's copy.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAIN_STATE = "train_state.pt"
META = "meta.json"
METRICS = "metrics.json"
DEEPSPEED_DIR = "deepspeed"


def rng_state() -> dict[str, Any]:
    """This process's torch / numpy / python RNG states as weights_only-loadable containers."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal),
                   "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class TrainState:
    """The loop's position: ``epoch`` counts completed epochs, so a resumed run starts at it."""

    epoch: int = 0
    step: int = 0
    data_seed: int = 0
    rng: list[dict[str, Any]] = field(default_factory=list)  # one per rank, rank order
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one per completed epoch


def save(directory: str | Path, *, state: TrainState, method_state: dict[str, Any],
         optimizer: dict[str, Any] | None, scheduler: dict[str, Any] | None,
         config: dict[str, Any], tag_semantics_hash: str) -> Path:
    """Write the checkpoint files (not the DeepSpeed part) into ``directory``; returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({
        "epoch": state.epoch, "step": state.step, "data_seed": state.data_seed, "rng": state.rng,
        "method": method_state, "optimizer": optimizer, "scheduler": scheduler,
    }, d / TRAIN_STATE)
    (d / META).write_text(json.dumps({
        "epoch": state.epoch, "step": state.step, "tag_semantics_hash": tag_semantics_hash,
        "config": config,
    }, indent=2, sort_keys=True))
    (d / METRICS).write_text(json.dumps(state.metrics, indent=2))
    return d


@dataclass
class Loaded:
    state: TrainState
    method_state: dict[str, Any]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    tag_semantics_hash: str
    config: dict[str, Any]


def load(directory: str | Path) -> Loaded:
    """Read a checkpoint written by :func:`save` (weights_only: no code runs from the file)."""
    d = Path(directory)
    raw = torch.load(d / TRAIN_STATE, map_location="cpu", weights_only=True)
    meta = json.loads((d / META).read_text())
    metrics = json.loads((d / METRICS).read_text())
    state = TrainState(epoch=int(raw["epoch"]), step=int(raw["step"]), data_seed=int(raw["data_seed"]),
                       rng=list(raw["rng"]), metrics=metrics)
    return Loaded(state=state, method_state=raw["method"], optimizer=raw["optimizer"],
                  scheduler=raw["scheduler"], tag_semantics_hash=meta["tag_semantics_hash"],
                  config=meta["config"])


LOCAL_PREFIX = "checkpoint_local_e"
COMPLETE = ".complete"


def local_checkpoint_dir(run_url: str, epoch: int) -> Path:
    """Where local mode writes a checkpoint: its final place on local storage, a temp dir for S3."""
    from shards import storage

    if storage.is_s3(run_url):
        return Path(tempfile.mkdtemp(prefix=f"wsdhq-ckpt-e{epoch}-"))
    target = Path(storage.join(run_url, f"{LOCAL_PREFIX}{epoch:06d}"))
    shutil.rmtree(target, ignore_errors=True)  # an incomplete one a killed run left
    target.mkdir(parents=True)
    return target


def persist(directory: str | Path, run_url: str, epoch: int, keep: int | None = None) -> str:
    """Complete a local-mode checkpoint: upload ``directory`` to ``<run_url>/checkpoint_local_e<epoch>/``
    unless it is already there, write the marker last, keep the ``keep`` newest complete ones (and
    drop incomplete ones a killed run left). Returns the checkpoint's URL."""
    from shards import storage

    target = storage.join(run_url, f"{LOCAL_PREFIX}{epoch:06d}")
    root = Path(directory)
    if str(root) != target:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            storage.upload_file(f, storage.join(target, *f.relative_to(root).parts))
        shutil.rmtree(root, ignore_errors=True)
    storage.write_bytes(storage.join(target, COMPLETE), b"")
    complete = _persisted(run_url)
    kept = set(complete[-keep:] if keep else complete)
    for old in {storage.parent(f) for f in storage.list_files(run_url)
                if storage.parent(f).rstrip("/").rsplit("/", 1)[-1].startswith(LOCAL_PREFIX)} - kept:
        for f in storage.list_files(old):
            storage.remove(f)
        storage.remove(old)
    return target


def _persisted(run_url: str) -> list[str]:
    """Complete local-mode checkpoints under ``run_url``, oldest first."""
    from shards import storage

    done = {storage.parent(f) for f in storage.list_files(run_url) if f.endswith("/" + COMPLETE)
            and storage.parent(f).rstrip("/").rsplit("/", 1)[-1].startswith(LOCAL_PREFIX)}
    return sorted(done)


def latest_persisted(run_url: str) -> str | None:
    found = _persisted(run_url)
    return found[-1] if found else None


def load_persisted(url: str) -> "Loaded":
    """``load`` a checkpoint copy from storage (through a temporary local directory, removed after)."""
    from shards import storage

    tmp = Path(tempfile.mkdtemp(prefix="wsdhq-resume-"))
    try:
        for f in storage.list_files(url):
            rel = f[len(url.rstrip("/")) + 1:]
            storage.download_file(f, tmp / rel)
        return load(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
