"""A seeded synthetic FEATURES-mode corpus of any size, written through the product's own shard writer.

    .venv/bin/python -m benchmarks.scale.corpus --n 1000000 --out /tmp/corpus [--vocab 10000] [--dim 32]
        [--classes 100] [--shard-size 10000] [--seed 0] [--layout set|dataset] [--no-labels]

Why synthetic: the scale runs need 10^4-10^7 samples and the real data here has 25k. Each sample has
a latent class drawn Zipf(1.1) over ``classes``, so classes have web-like long-tail sizes:

* ``feat.npy``: the class centre (a random unit vector of ``dim``) plus N(0, noise^2) per coordinate,
  so codes learned from it cluster by class rather than fitting pure noise;
* ``tags.json``: each of the class's ``tags_per_class`` signature tags kept with p = ``tag_keep``, plus
  Poisson(``noise_tags``) tags drawn Zipf(1.1) over the whole vocabulary ``t0..t{vocab-1}``, so tag
  co-occurrence carries the class structure and the vocabulary has a web-like long tail;
* ``labels.json`` (unless ``labels=False``): ``["c<class>"]``, for retrieval evaluation;
* ``png``: an 8x8 swatch in the class's colour (one encoded PNG per class, reused): the sample
  schema requires an image and evaluation grids show it.

Layouts: ``set`` writes one shard set of exactly ``n`` samples at ``out`` (``shards.writer.ShardSetWriter``);
``dataset`` writes ``out/{train,query,database}`` through ``shards.writer.DatasetWriter`` (hash splits,
database includes train, so about ``n * (1 + train_fraction)`` samples are written).

Generation is vectorised per chunk of ``chunk`` samples (classes, features, tag ids drawn at once); only
the per-sample encoding (``shards.schema.encode_sample``) and the tar write are per sample. Memory is
one chunk, one shard, and the writer's set of written keys (the writer keeps it to refuse duplicate
keys and to prove splits disjoint: about 100 bytes per sample, the only part that grows with ``n``).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from shards import storage
from shards.manifest import Manifest
from shards.schema import encode_sample
from shards.writer import DatasetWriter, ShardingConfig, ShardSetWriter

SOURCE = "wsdhq synthetic scale corpus"


@dataclass
class CorpusConfig:
    """Shape of the synthetic corpus; every field is recorded in the result for the docs."""

    vocab: int = 10_000
    dim: int = 32
    classes: int = 100
    tags_per_class: int = 5
    tag_keep: float = 0.6
    noise_tags: float = 3.0
    zipf: float = 1.1
    noise: float = 0.35
    labels: bool = True
    shard_size: int = 10_000
    seed: int = 0
    chunk: int = 8192


@dataclass
class CorpusResult:
    out: str
    n: int                      # items generated
    written: dict               # split -> samples written ("set" for the set layout)
    shards: int
    bytes: int                  # sum of shard bytes from the manifests
    seconds: float
    config: dict

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes / max(1, sum(self.written.values()))


def _zipf_cdf(n: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    return np.cumsum(p / p.sum())


def _draw(cdf: np.ndarray, rng: np.random.Generator, size) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size)), len(cdf) - 1)


class CorpusModel:
    """The latent structure (class centres, class tags, swatches) and a chunked sample generator."""

    def __init__(self, cfg: CorpusConfig):
        if cfg.vocab < cfg.tags_per_class or cfg.classes < 1 or cfg.dim < 1:
            raise ValueError(f"vocab ({cfg.vocab}) must be >= tags_per_class ({cfg.tags_per_class}); "
                             f"classes ({cfg.classes}) and dim ({cfg.dim}) >= 1")
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        centres = rng.standard_normal((cfg.classes, cfg.dim))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        # signature tags drawn from the whole vocabulary (head and tail alike), distinct within a class
        self.class_tags = np.stack([rng.choice(cfg.vocab, cfg.tags_per_class, replace=False)
                                    for _ in range(cfg.classes)])
        self.class_cdf = _zipf_cdf(cfg.classes, cfg.zipf)
        self.tag_cdf = _zipf_cdf(cfg.vocab, cfg.zipf)
        self.swatches = [self._swatch(c) for c in range(cfg.classes)]
        self.tag_names = np.array([f"t{i}" for i in range(cfg.vocab)], dtype=object)

    def _swatch(self, c: int) -> bytes:
        rgb = (127.5 * (1 + np.resize(self.centres[c], 3))).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(np.broadcast_to(rgb, (8, 8, 3)).copy()).save(buf, format="PNG")
        return buf.getvalue()

    def chunks(self, n: int):
        """Yield (start, classes (B,), features (B, dim) float32, tag lists) for samples 0..n-1.

        Each chunk draws from a generator seeded by (seed, chunk index), so a sample's content does
        not depend on ``n``: the first 10^4 samples of a 10^6 corpus are the 10^4 corpus.
        """
        cfg = self.cfg
        for start in range(0, n, cfg.chunk):
            b = min(cfg.chunk, n - start)
            rng = np.random.default_rng([cfg.seed, 1, start // cfg.chunk])
            cls = _draw(self.class_cdf, rng, b)
            feat = (self.centres[cls] + cfg.noise * rng.standard_normal((b, cfg.dim))).astype(np.float32)
            keep = rng.random((b, cfg.tags_per_class)) < cfg.tag_keep
            n_noise = rng.poisson(cfg.noise_tags, b)
            noise = _draw(self.tag_cdf, rng, int(n_noise.sum()))
            bounds = np.concatenate([[0], np.cumsum(n_noise)])
            sig = self.class_tags[cls]
            tags = [list(self.tag_names[np.concatenate([sig[i][keep[i]], noise[bounds[i]:bounds[i + 1]]])])
                    for i in range(b)]
            yield start, cls, feat, tags


def write_corpus(out: str, n: int, cfg: CorpusConfig | None = None, layout: str = "set",
                 sharding: ShardingConfig | None = None, overwrite: bool = False) -> CorpusResult:
    """Write ``n`` generated items to ``out`` (local path or s3://) and return counts, bytes, seconds."""
    cfg = cfg or CorpusConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if layout not in ("set", "dataset"):
        raise ValueError(f"layout must be 'set' or 'dataset', got {layout!r}")
    t0 = time.perf_counter()
    model = CorpusModel(cfg)
    label_names = [f"c{c}" for c in range(cfg.classes)] if cfg.labels else None
    if layout == "set":
        writer = ShardSetWriter(out, SOURCE, "train", label_names, max_count=cfg.shard_size, overwrite=overwrite)
        for start, cls, feat, tags in model.chunks(n):
            for i in range(len(cls)):
                c = int(cls[i])
                writer.write(encode_sample(f"s{start + i:010d}", model.swatches[c], "png", tags[i],
                                           [f"c{c}"] if cfg.labels else None, feat=feat[i]))
        manifests = {"set": writer.close()}
    else:
        sharding = sharding or ShardingConfig(max_count=cfg.shard_size, query_fraction=0.01, train_fraction=0.5,
                                              split_seed=cfg.seed, validate_images=False)
        with DatasetWriter(out, SOURCE, label_names, sharding, overwrite) as writer:
            for start, cls, feat, tags in model.chunks(n):
                for i in range(len(cls)):
                    c = int(cls[i])
                    writer.add(f"s{start + i:010d}", model.swatches[c], tags[i],
                               [f"c{c}"] if cfg.labels else None, feat=feat[i])
        if writer.skipped:
            raise RuntimeError(f"{out}: generated samples were skipped: {dict(writer.skipped)}")
        manifests = {s: Manifest.load(storage.join(out, s)) for s in writer.writers}
    seconds = time.perf_counter() - t0
    return CorpusResult(out=str(out), n=n, written={s: m.total for s, m in manifests.items()},
                        shards=sum(len(m.shards) for m in manifests.values()),
                        bytes=sum(e.bytes for m in manifests.values() for e in m.shards),
                        seconds=seconds, config=asdict(cfg))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = CorpusConfig()
    ap.add_argument("--n", type=int, required=True, help="items to generate")
    ap.add_argument("--out", required=True, help="output directory or s3:// prefix")
    ap.add_argument("--vocab", type=int, default=d.vocab)
    ap.add_argument("--dim", type=int, default=d.dim)
    ap.add_argument("--classes", type=int, default=d.classes)
    ap.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per shard")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--layout", choices=("set", "dataset"), default="set",
                    help="set: one shard set of n samples; dataset: train/query/database splits")
    ap.add_argument("--query-fraction", type=float, default=0.01, help="dataset layout only")
    ap.add_argument("--train-fraction", type=float, default=0.5, help="dataset layout only")
    ap.add_argument("--no-labels", action="store_true", help="omit labels.json")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    cfg = CorpusConfig(vocab=a.vocab, dim=a.dim, classes=a.classes, shard_size=a.shard_size, seed=a.seed,
                       labels=not a.no_labels)
    try:
        sharding = ShardingConfig(max_count=a.shard_size, query_fraction=a.query_fraction,
                                  train_fraction=a.train_fraction, split_seed=a.seed, validate_images=False)
        r = write_corpus(a.out, a.n, cfg, a.layout, sharding, a.overwrite)
    except (ValueError, FileExistsError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(json.dumps({**asdict(r), "samples_per_s": round(sum(r.written.values()) / r.seconds, 1),
                      "bytes_per_sample": round(r.bytes_per_sample, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
