"""``python -m eval.extract --shards <set or root> --out <dir>``: frozen-backbone features, once.

A pretrained backbone (``encoder.kind=efficientnet_lite0`` by default) runs over image shards and
writes what features mode trains on and the baselines read, so the expensive forward pass is paid
once per corpus instead of once per epoch and per model:

- ``format=shards`` (default): per input shard one WebDataset shard of the same name holding each
  sample's key, ``tags.json``, ``labels.json`` and ``feat.npy`` (float32), plus the set's manifest
  (split and label names carried over). Every stage reads it as it reads any features-mode set.
- ``format=embeddings``: a columnar embedding set (``shards.embeddings``: contiguous float16/32
  arrays + parquet metadata in clip-retrieval's layout), for training at memory speed.

Like the encode job it is per shard, resumable and idempotent: an output shard is written in one
atomic step (temp + rename, or one S3 put), a killed job re-run skips the shards already written,
and the manifest is written last. ``--shards`` may name one shard set or a dataset root holding
``train`` / ``query`` / ``database`` sets (all extracted by one job, one model load). Ray actor pool
(GPU per actor when the cluster has GPUs) or ``--local``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import logging
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np
import torch

from eval.encode import Progress
from eval.per_shard import ShardOutput, shard_outputs
from shards import storage
from shards.manifest import Manifest, ShardEntry
from shards import config as tconfig
from trainer.encoders import EncoderConfig, build_backbone

JOB_FILE = "extract_job.json"


@dataclass
class ExtractConfig:
    """What backbone, and how the job runs (``gpus_per_actor`` < 0: 1 when the cluster has GPUs)."""

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(kind="efficientnet_lite0"))
    image_size: int = 0  # 0: the backbone's own resolution (224 / 240 / 260 for Lite0 / 1 / 2)
    batch_size: int = 64
    format: Literal["shards", "embeddings"] = "shards"
    dtype: Literal["float32", "float16"] = "float32"  # embeddings format; shards store float32
    workers: int = 1  # DataLoader processes decoding beside the backbone (0: its own process)
    actors: int = 0  # 0: CPUs - 1 (at least 1)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = -1.0
    progress_every_s: float = 10.0

    def __post_init__(self):
        if self.batch_size < 1:
            raise tconfig.ConfigError(f"batch_size={self.batch_size}: must be >= 1")
        if self.image_size < 0:
            raise tconfig.ConfigError(f"image_size={self.image_size}: 0 (the backbone's own) or pixels")
        if self.workers < 0:
            raise tconfig.ConfigError(f"workers={self.workers}: must be >= 0")


class ExtractError(ValueError):
    """The job cannot run as asked; the message names the culprit."""


def backbone_identity(cfg: ExtractConfig) -> dict:
    """What decides the features: the encoder config and the weights' sha256."""
    from trainer.encoders.efficientnet import VARIANTS, packaged_weights

    enc = cfg.encoder
    if enc.kind in ("mlp", "small_cnn"):
        raise ExtractError(f"encoder.kind={enc.kind}: extraction needs a pretrained image backbone "
                           "(efficientnet_lite0/1/2, resnet18/50 with encoder.weights, torchvision, timm)")
    if enc.trainable != 0:
        raise ExtractError(f"encoder.trainable={enc.trainable}: features are extracted by a frozen backbone (0)")
    weights = enc.weights or (packaged_weights(enc.kind) if enc.kind in VARIANTS else None)
    from shards.manifest import sha256_of

    digest = sha256_of(weights)[0] if weights else None
    encoder = tconfig.to_dict(enc)
    if enc.head == "plain":  # the pyramid keys do not act: a plain job pinned before they existed still matches
        for key in ("head", "pyramid_stages", "pyramid_scales"):
            encoder.pop(key)
    return {"encoder": encoder, "weights_sha256": digest}


class ShardExtractor:
    """Loads the backbone once; ``extract`` turns each input shard into one output part."""

    def __init__(self, cfg: ExtractConfig, sources: list[Manifest]):
        from shards.reader import ReaderConfig

        torch.manual_seed(0)  # heads of external backbones are dropped; nothing random is kept
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backbone = build_backbone(cfg.encoder).to(self.device).eval()
        self.cfg, self.sources = cfg, sources
        self.image_size = cfg.image_size or getattr(self.backbone, "image_size", 224)
        self.reader = ReaderConfig(batch_size=cfg.batch_size, image_size=self.image_size, augment=False,
                                   num_workers=cfg.workers)
        self.dim = int(self.backbone.out_dim)

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> np.ndarray:
        from shards.transforms import normalise_batch

        return self.backbone(normalise_batch(pixels.to(self.device))).float().cpu().numpy()

    def extract(self, todo: list[tuple[int, int, str]]) -> Iterator[dict]:
        """For each ``(source set, position in it, output url)``: its entry once its part is written."""
        empty = {"feat": np.zeros((0, self.dim), np.float32)}
        for k, group in itertools.groupby(todo, key=lambda t: t[0]):
            out = {pos: url for _, pos, url in group}
            for r in shard_outputs(self.sources[k], list(out), self.reader, lambda b: {"feat": self.features(b["image"])},
                                   empty, ExtractError):
                yield self._write(r, out[r.shard])

    def extract_group(self, todo: list[tuple[int, int, str]]) -> list[dict]:
        return list(self.extract(todo))

    def _write(self, r: ShardOutput, out_url: str) -> dict:
        feat = r.arrays["feat"]
        if self.cfg.format == "embeddings":
            from shards.embeddings import EmbeddingSetWriter

            w = EmbeddingSetWriter(storage.parent(out_url), dim=self.dim, dtype=self.cfg.dtype)
            w.write_part(out_url.rstrip("/").rsplit("/", 1)[-1], r.keys, feat.astype(self.cfg.dtype), r.tags, r.labels)
            nbytes, digest = int(feat.astype(self.cfg.dtype).nbytes), None
        else:
            data = feature_shard(r.keys, r.tags, r.labels, feat)
            storage.write_bytes(out_url, data)
            nbytes, digest = len(data), hashlib.sha256(data).hexdigest()
        return {"shard": r.url, "out": out_url, "rows": len(r.keys), "bytes": nbytes,
                "sha256": digest, "skipped": dict(r.skipped)}


def feature_shard(keys: list[str], tags: list[list[str]], labels: list[list[str]], feat: np.ndarray) -> bytes:
    """One WebDataset tar of features-mode samples (no image), written in memory.

    Integer member mtimes: tarfile then writes no PAX header per member (see shards.writer)."""
    buf = io.BytesIO()
    mtime = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, t, lab, x in zip(keys, tags, labels, feat):
            npy = io.BytesIO()
            np.save(npy, np.asarray(x, np.float32).reshape(-1), allow_pickle=False)
            for ext, data in (("tags.json", json.dumps(t, ensure_ascii=False).encode("utf-8")),
                              ("labels.json", json.dumps(sorted(lab)).encode("utf-8")),
                              ("feat.npy", npy.getvalue())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def written_part(out_url: str, fmt: str) -> dict | None:
    """rows / bytes / sha256 of an already written output part, from one read; None when it must be
    (re)done."""
    if fmt == "embeddings":
        from shards.embeddings import EmbeddingSetError, meta_url, npy_url, read_npy_header

        parent, name = storage.parent(out_url), out_url.rstrip("/").rsplit("/", 1)[-1]
        if not storage.exists(meta_url(parent, name)):  # the parquet, written last, commits a part
            return None
        try:
            h = read_npy_header(npy_url(parent, name))
        except EmbeddingSetError:
            return None
        return {"rows": h.rows, "bytes": h.bytes, "sha256": None}
    if not storage.exists(out_url):
        return None
    data = storage.read_bytes(out_url)
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            rows = sum(1 for m in tf if m.name.endswith(".feat.npy"))
    except tarfile.TarError:
        return None  # a damaged part is redone
    return {"rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def shard_sets(shards: str, out: str) -> list[tuple[Manifest, str]]:
    """(input manifest, output set url) for one shard set or each split of a dataset root."""
    from eval.encode import shard_sets as pairs

    return [(Manifest.load(s), o) for s, o in pairs(shards, out)]


def _run_ray(todo: list[tuple[int, int, str]], cfg: ExtractConfig, sources: list[Manifest],
             progress: Progress) -> list[dict]:
    from eval.actor_pool import run_pool

    per_call = max(1, cfg.workers)  # each actor call: one shard per worker
    groups = [todo[i:i + per_call] for i in range(0, len(todo), per_call)]
    return run_pool(ShardExtractor, (cfg, sources), "extract_group", groups, cfg.actors, cfg.cpus_per_actor,
                    cfg.gpus_per_actor, progress)


def run(shards: str, out: str, cfg: ExtractConfig, local: bool = False, log=print) -> list[str]:
    """Extract every part not yet written; write each set's manifest when all its parts are there.
    Returns the output set URLs."""
    shards, out = str(shards), str(out)
    ident = backbone_identity(cfg)
    job_url = storage.join(out, JOB_FILE)
    job = {"shards": shards, "format": cfg.format, "dtype": cfg.dtype, "image_size": cfg.image_size} | ident
    if storage.exists(job_url):
        prev = json.loads(storage.read_bytes(job_url).decode("utf-8"))
        diff = [k for k in job if prev.get(k) != job[k]]
        if diff:
            raise ExtractError(f"{out} already holds features of another job ({', '.join(diff)} differ): "
                               "use a fresh --out")
    else:
        storage.write_bytes(job_url, (json.dumps(job, indent=1) + "\n").encode())
    sets = shard_sets(shards, out)
    ext = ".tar" if cfg.format == "shards" else ""
    plan, done = [], {}
    for k, (m, set_out) in enumerate(sets):
        for pos, url in enumerate(m.shard_urls()):
            name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar") + ext
            target = storage.join(set_out, name)
            part = written_part(target, cfg.format)
            if part is None:
                plan.append((k, pos, target))
            else:
                done[url] = {"shard": url, "out": target, "skipped": None, **part}
    log(f"{sum(len(m.shards) for m, _ in sets)} shards in {len(sets)} set(s): {len(done)} already extracted, "
        f"{len(plan)} to do ({cfg.encoder.kind}, {cfg.format})")
    progress = Progress(len(plan), cfg.progress_every_s, log, verb="extracted")
    if plan:
        sources = [m for m, _ in sets]
        if local:
            ex = ShardExtractor(cfg, sources)
            for e in ex.extract(plan):
                done[e["shard"]] = e
                progress.step(e["rows"])
        else:
            for e in _run_ray(plan, cfg, sources, progress):
                done[e["shard"]] = e
    outs = []
    for m, set_out in sets:
        entries = [done[u] for u in m.shard_urls()]
        skipped = Counter()
        for e in entries:
            skipped.update(e.get("skipped") or {})
        head = "" if cfg.encoder.head == "plain" else f" {cfg.encoder.head}"
        source = f"{cfg.encoder.kind}{head} features of {m.url} ({m.source})"
        if cfg.format == "embeddings":
            from shards.embeddings import EmbeddingSetWriter

            from shards.embeddings import npy_url, read_npy_header

            name = entries[0]["out"].rstrip("/").rsplit("/", 1)[-1]
            dim = read_npy_header(npy_url(set_out, name)).dim
            EmbeddingSetWriter(set_out, dim=dim, dtype=cfg.dtype, source={
                "from": m.url, "split": m.split, "label_names": m.label_names, "backbone": cfg.encoder.kind,
                "skipped": dict(Counter(m.skipped) + skipped)}).close()
        else:
            shards_out = [ShardEntry(url=e["out"].rstrip("/").rsplit("/", 1)[-1], count=e["rows"],
                                     bytes=e["bytes"], sha256=e["sha256"]) for e in entries]
            Manifest(shards=shards_out, source=source, split=m.split, label_names=m.label_names,
                     skipped=dict(sorted((Counter(m.skipped) + skipped).items())), base_url=set_out).save()
        total = sum(e["rows"] for e in entries)
        log(f"wrote {total:,} feature rows of {m.split} to {set_out}"
            + (f" (skipped this run: {dict(skipped)})" if skipped else ""))
        outs.append(set_out)
    return outs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.extract", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="image shard set, or a dataset root with train/query/database")
    p.add_argument("--out", required=True, help="features output (dir or s3:// prefix)")
    p.add_argument("--config", help="YAML with ExtractConfig fields")
    p.add_argument("--local", action="store_true", help="extract in this process, without Ray")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. encoder.kind=efficientnet_lite1")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = tconfig.load(ExtractConfig, a.config, a.overrides)
        run(a.shards, a.out, cfg, local=a.local, log=lambda s: print(s, flush=True))
    except (tconfig.ConfigError, ExtractError, ImportError, ValueError, OSError) as exn:  # names the culprit
        print(f"extract: error: {exn}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
