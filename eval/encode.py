"""``python -m eval.encode --checkpoint <dir> --shards <set> --out <dir>``: encode a corpus into codes.

Meant for ``ray job submit -- python -m eval.encode ...``. Work unit = one input shard -> one code
file ``codes-<shard>.npz``, written in one atomic step (local temp + rename, or a single S3 put), by
a pool of Ray actors that each load the checkpoint once (GPU per actor when the cluster has GPUs).

Why per-shard actor calls and not Ray Data ``read_webdataset().map_batches(ActorPoolStrategy)``:
the job must be resumable and idempotent. With one output file per input shard, "already encoded"
is simply "its code file exists and is valid", a killed job re-run skips finished shards, and no
shard's rows can be written twice; Ray Data's ``write_parquet`` names files by block and appends, so
a re-run after a kill duplicates rows, and partial writes of a killed dataset stay visible. The
actor pool gives the same benefit as ``ActorPoolStrategy`` (model loaded once per actor, batches
inside). Pool size defaults to CPUs - 1 (ecosystem.md §2.1: 2 actors on 2 CPUs deadlock), and
``--local`` runs the same per-shard code in-process without Ray (tests, laptops).

Shards are read and decoded by ``workers`` DataLoader processes beside the model, through the
reader training uses (``eval.per_shard``). Memory is bounded by one shard's output per worker
(codes + optional features, ~1.2 MB for 1000 samples at D=300) plus two batches per worker, never
by the corpus. ``codes_manifest.json`` is written last.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from eval.codes import MANIFEST, CodeSetError, code_file_name, pack_code_file, read_code_file, write_manifest
from eval.per_shard import ShardOutput, shard_outputs
from shards import storage
from shards.config import above, at_least
from shards.manifest import Manifest, check_shards, sha256_of
from shards import config as tconfig

JOB_FILE = "encode_job.json"  # written first: pins the checkpoint a (resumed) job writes for


@dataclass
class EncodeConfig:
    """How the corpus is encoded; ``gpus_per_actor`` < 0 means "1 when the cluster has GPUs"."""

    batch_size: int = 256
    image_size: int = 0  # 0: the size the encoder was trained at (the checkpoint's reader.image_size)
    features: bool = True  # store the float features f (needed for feature scoring and baselines)
    actors: int = 0  # 0: CPUs - 1 (at least 1)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = -1.0
    progress_every_s: float = 10.0
    max_shards: int = 0  # encode at most this many new shards in this run, then stop (0: all)
    # DataLoader processes that read and decode shards beside the model (shards.reader); 0: the
    # model's own process, no overlap. Each Ray actor call hands an actor this many shards, one a worker.
    workers: int = 1
    # A shard that holds fewer samples than its manifest count (truncated, unreadable, ended early)
    # gets no code file and the code set is not published, unless partial output is asked for.
    partial: bool = False
    verify_sha256: bool = False  # before encoding, compare every shard's sha256 (byte sizes always)

    def __post_init__(self):
        at_least(self, "batch_size", 1)
        for key in ("image_size", "actors", "max_shards", "workers", "progress_every_s"):
            at_least(self, key, 0)
        above(self, "cpus_per_actor", 0)


class EncodeError(ValueError):
    """The job cannot run as asked; the message names the culprit."""


def read_quantizer(checkpoint: str):
    """The checkpoint's quantizer; an unreadable ``quantizer.npz`` is one error naming it."""
    from trainer.quantizers import load_quantizer

    try:
        return load_quantizer(io.BytesIO(storage.read_bytes(storage.join(checkpoint, "quantizer.npz"))))
    except FileNotFoundError:
        raise EncodeError(f"checkpoint {checkpoint}: missing quantizer.npz") from None
    except Exception as exn:  # noqa: BLE001 - np.load raises ValueError, OSError, BadZipFile, KeyError
        msg = str(exn).split(": ", 1)[-1] if "BytesIO" in str(exn) else str(exn)
        raise EncodeError(f"checkpoint {checkpoint}: quantizer.npz unreadable ({type(exn).__name__}: "
                          f"{msg[:160]})") from None


def checkpoint_identity(checkpoint: str) -> dict:
    """sha256 of the checkpoint files that decide the codes, and its meta (method, tag hash, ...)."""
    meta_url = storage.join(checkpoint, "meta.json")
    try:
        meta = json.loads(storage.read_bytes(meta_url).decode("utf-8"))
    except FileNotFoundError:
        raise EncodeError(f"checkpoint {checkpoint}: no meta.json (not an inference checkpoint)") from None
    except (UnicodeDecodeError, ValueError) as exn:
        raise EncodeError(f"checkpoint {checkpoint}: meta.json is not UTF-8 JSON ({exn})") from None
    hashes = {}
    for name in ("model.pt", "quantizer.npz"):
        try:
            hashes[name] = sha256_of(storage.join(checkpoint, name))[0]
        except FileNotFoundError:
            raise EncodeError(f"checkpoint {checkpoint}: missing {name}") from None
    return {"meta": meta, "sha256": hashes}


class ShardEncoder:
    """Loads the checkpoint once; ``encode_shards`` turns each input shard of ``source`` into one
    code file."""

    def __init__(self, checkpoint: str, cfg: EncodeConfig, source: Manifest):
        from shards.reader import ReaderConfig
        from trainer.inference import load_inference

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_inference(checkpoint, self.device)
        self.cfg, self.source = cfg, source
        enc = self.model.encoder_config
        self.features_only = enc.get("kind") == "mlp"
        self.in_features = enc.get("in_features") if self.features_only else None
        # Image encoders are fed the size they were trained at unless told otherwise: another size
        # is a distribution the network never saw (and costs (size/trained)^2 more compute).
        self.image_size = cfg.image_size or self.model.image_size
        if not self.features_only and not self.image_size:
            raise EncodeError(f"checkpoint {checkpoint} records no image_size: pass image_size=<pixels>")
        self.reader = ReaderConfig(batch_size=cfg.batch_size, image_size=self.image_size or 1, augment=False,
                                   num_workers=cfg.workers, features_only=self.features_only)
        q = self.model.quantizer
        self.empty = {"codes": np.zeros((0, q.M), np.uint8)} | (
            {"feat": np.zeros((0, q.D), np.float32)} if cfg.features else {})

    def _model_input(self, batch: dict) -> torch.Tensor:
        """Pixels are normalised here, once per batch and on the model's device (4x less to copy)."""
        from shards.transforms import normalise_batch

        if not self.features_only:
            return normalise_batch(batch["image"].to(self.device))
        x = batch["feat"].float()
        if self.in_features and x.shape[1:] != (self.in_features,):
            raise EncodeError(f"{batch['url'][0]}:{batch['key'][0]}: feat.npy holds {x[0].numel()} values, the "
                              f"checkpoint's encoder takes {self.in_features}")
        return x.to(self.device)

    @torch.no_grad()
    def _codes(self, batch: dict) -> dict[str, np.ndarray]:
        f = self.model.embed(self._model_input(batch))
        out = {"codes": torch.as_tensor(self.model.encode_embeddings(f)).to("cpu", torch.uint8).numpy()}
        return out | ({"feat": f.float().cpu().numpy()} if self.cfg.features else {})

    def encode_shards(self, todo: list[tuple[int, str]]) -> Iterator[dict]:
        """Encode each ``(position in source, code file url)``; yields each shard's manifest entry as
        soon as its code file is written. The workers read ahead of the model across all of ``todo``."""
        out = dict(todo)
        for r in shard_outputs(self.source, [p for p, _ in todo], self.reader, self._codes, self.empty, EncodeError):
            yield self._write(r, out[r.shard])

    def _write(self, r: ShardOutput, out_url: str) -> dict:
        if r.short and not self.cfg.partial:  # no code file: a re-run (or --partial) redoes this shard
            return {"url": None, "shard": r.url, "rows": 0, "sha256": None, "skipped": r.skipped, "short": r.short}
        data = pack_code_file(r.keys, np.asarray(r.index, np.int64), r.arrays["codes"], r.labels,
                              r.arrays["feat"] if self.cfg.features else None)
        storage.write_bytes(out_url, data)
        entry = {"url": out_url.rstrip("/").rsplit("/", 1)[-1], "shard": r.url, "rows": len(r.keys),
                 "sha256": hashlib.sha256(data).hexdigest(), "skipped": r.skipped}
        return entry | ({"short": r.short} if r.short else {})

    def encode_group(self, todo: list[tuple[int, str]]) -> list[dict]:
        """A few shards, one per worker (the Ray actor call)."""
        return list(self.encode_shards(todo))


def existing_entry(out_url: str, shard: str, m: int, with_features: bool) -> dict | None:
    """The manifest entry of an already written, valid code file; None when it must be (re)done."""
    if not storage.exists(out_url):
        return None
    data = storage.read_bytes(out_url)
    try:
        d = read_code_file(out_url, data)
    except CodeSetError:
        return None
    if d["codes"].ndim != 2 or d["codes"].shape[1] != m or (with_features and "feat" not in d):
        return None
    return {"url": out_url.rstrip("/").rsplit("/", 1)[-1], "shard": shard, "rows": int(len(d["key"])),
            "sha256": hashlib.sha256(data).hexdigest(), "skipped": None}


def _remove_stale_temps(out: str) -> int:
    """Temp files a killed local write left behind (``.codes-*.tmp``); S3 puts leave none."""
    if storage.is_s3(out) or not Path(out).is_dir():
        return 0
    stale = list(Path(out).glob(".codes-*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


class Progress:
    def __init__(self, total: int, every_s: float, log, verb: str = "encoded"):
        self.total, self.every_s, self.log, self.verb = total, every_s, log, verb
        self.done = self.samples = 0
        self.t0 = self.last = time.perf_counter()

    def step(self, rows: int) -> None:
        self.done += 1
        self.samples += rows
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            rate = self.samples / max(now - self.t0, 1e-9)
            self.log(f"{self.verb} {self.done}/{self.total} shards, {self.samples:,} samples, {rate:,.0f} samples/s")
            self.last = now


def _run_ray(checkpoint: str, source: Manifest, todo: list[tuple[int, str]], cfg: EncodeConfig,
             progress: Progress) -> list[dict]:
    from eval.actor_pool import run_pool

    per_call = max(1, cfg.workers)  # each actor call: one shard per worker
    groups = [todo[i:i + per_call] for i in range(0, len(todo), per_call)]
    return run_pool(ShardEncoder, (checkpoint, cfg, source), "encode_group", groups, cfg.actors, cfg.cpus_per_actor,
                    cfg.gpus_per_actor, progress)


def run(checkpoint: str, shards: str, out: str, cfg: EncodeConfig, local: bool = False, log=print) -> dict | None:
    """Encode every shard not yet encoded; write the manifest when all are done (returns it), else None."""
    checkpoint, shards, out = str(checkpoint), str(shards), str(out)
    source = Manifest.load(shards)
    check_shards(source, checksums=cfg.verify_sha256)  # a missing or changed shard: refused before any work
    ident = checkpoint_identity(checkpoint)
    meta = ident["meta"]
    q = read_quantizer(checkpoint)
    if not local:  # an unusable model.pt is one line here, not a traceback from every Ray actor
        from trainer.inference import load_inference

        load_inference(checkpoint, "cpu")
    job = {"checkpoint": checkpoint, "checkpoint_sha256": ident["sha256"],
           "tag_semantics_hash": meta.get("tag_semantics_hash"), "shards": source.url, "features": cfg.features,
           "partial": False}  # set once a short shard's code file is written (--partial)
    job_url = storage.join(out, JOB_FILE)
    prev: dict = {}
    if storage.exists(job_url):
        prev = json.loads(storage.read_bytes(job_url).decode("utf-8"))
        if prev.get("partial") and not cfg.partial:
            raise EncodeError(f"{out} holds codes of a --partial run (shards that fell short are in it): "
                              "re-run with --partial or use a fresh --out")
        for key in ("checkpoint_sha256", "tag_semantics_hash", "shards", "features"):
            if prev.get(key) != job[key]:
                raise EncodeError(
                    f"{out} already holds codes of another job ({key}: {str(prev.get(key))[:80]} there, "
                    f"{str(job[key])[:80]} now; tags {str(prev.get('tag_semantics_hash'))[:12]} vs "
                    f"{str(job['tag_semantics_hash'])[:12]}): use a fresh --out")
    else:
        storage.write_bytes(job_url, (json.dumps(job, indent=1) + "\n").encode())

    def record(entry: dict) -> None:
        entries[entry["shard"]] = entry
        if entry.get("short") and entry["url"] and not prev.get("partial"):  # a short shard's file exists
            prev["partial"] = True
            storage.write_bytes(job_url, (json.dumps(job | {"partial": True}, indent=1) + "\n").encode())

    for name in ("quantizer.npz", "meta.json"):
        storage.write_bytes(storage.join(out, name), storage.read_bytes(storage.join(checkpoint, name)))
    stale = _remove_stale_temps(out)
    if stale:
        log(f"removed {stale} temp file(s) a killed run left in {out}")
    urls = source.shard_urls()
    entries: dict[str, dict] = {}
    todo = []
    for i, url in enumerate(urls):
        target = storage.join(out, code_file_name(url))
        done = existing_entry(target, url, q.M, cfg.features)
        if done is not None:
            entries[url] = done
        else:
            todo.append((i, target))
    log(f"{len(urls)} shards in {source.url}: {len(entries)} already encoded, {len(todo)} to do")
    if cfg.max_shards:
        todo = todo[: cfg.max_shards]
    enc = ShardEncoder(checkpoint, cfg, source) if todo and local else None
    progress = Progress(len(todo), cfg.progress_every_s, log)  # rates exclude model loading
    if todo:
        if enc is not None:
            for entry in enc.encode_shards(todo):
                record(entry)
                progress.step(entry["rows"])
        else:
            for entry in _run_ray(checkpoint, source, todo, cfg, progress):
                record(entry)
    short = [e["short"] for e in entries.values() if e.get("short")]
    if short and not cfg.partial:
        raise EncodeError(f"refusing to publish the code set: {len(short)} shard(s) fell short of their manifest "
                          f"count: {'; '.join(short[:3])}{' ...' if len(short) > 3 else ''}; the other shards' code "
                          "files are kept (a re-run resumes); pass --partial to publish without the lost samples")
    if len(entries) < len(urls):
        log(f"stopped after {len(todo)} new shard(s) (max_shards); {len(urls) - len(entries)} remain: re-run to resume")
        return None
    files = [entries[u] for u in urls]
    skipped = Counter()
    for f in files:
        skipped.update(f.pop("skipped") or {})
    info = {"quantizer_kind": q.kind, "M": q.M, "K": q.K, "D": q.D, "bits": q.spec.bits,
            "method": meta.get("method"), "checkpoint": checkpoint, "checkpoint_sha256": ident["sha256"],
            "tag_semantics_hash": meta.get("tag_semantics_hash"), "has_features": cfg.features,
            "source": {"url": source.url, "split": source.split, "total": source.total, "source": source.source},
            "label_names": source.label_names, "skipped_this_run": dict(skipped), "created_by": "wsdhq eval.encode",
            "partial": bool(short), "short_shards": short,
            "config": tconfig.to_dict(cfg)}
    m = write_manifest(out, info, files)
    log(f"wrote {m['total']:,} codes ({info['bits']} bits) in {len(files)} files + {MANIFEST} to {out}")
    return m


def shard_sets(shards: str, out: str) -> list[tuple[str, str]]:
    """``(shard set, code set)`` pairs: the one set given, or each split of a dataset root (one job,
    one model load per split's pool)."""
    from shards.manifest import MANIFEST_NAME
    from shards.writer import SPLITS

    if storage.exists(storage.join(shards, MANIFEST_NAME)):
        return [(shards, out)]
    found = [(storage.join(shards, s), storage.join(out, s)) for s in SPLITS
             if storage.exists(storage.join(shards, s, MANIFEST_NAME))]
    return found or [(shards, out)]  # neither: run() names the missing manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.encode", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="inference checkpoint dir (local or s3://)")
    p.add_argument("--shards", required=True, help="shard set to encode (dir or s3:// prefix), or a dataset "
                   "root holding train/query/database sets (each encoded into --out/<split>)")
    p.add_argument("--out", required=True, help="code set output (dir or s3:// prefix)")
    p.add_argument("--config", help="YAML with EncodeConfig fields")
    p.add_argument("--local", action="store_true", help="encode in this process, without Ray")
    p.add_argument("--partial", action="store_true",
                   help="publish the code set even when shards hold fewer samples than their manifest (recorded)")
    p.add_argument("--verify-sha256", action="store_true", help="compare every shard's sha256 before encoding")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. batch_size=512 features=false")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = tconfig.load(EncodeConfig, a.config, a.overrides)
        cfg = dataclasses.replace(cfg, partial=cfg.partial or a.partial,
                                  verify_sha256=cfg.verify_sha256 or a.verify_sha256)
        for shards, out in shard_sets(a.shards, a.out):
            run(a.checkpoint, shards, out, cfg, local=a.local, log=lambda s: print(s, flush=True))
    except (tconfig.ConfigError, EncodeError, CodeSetError, ValueError, OSError) as exn:
        # every user error names its file: a missing/changed shard, an unusable checkpoint, storage
        print(f"encode: error: {exn}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
