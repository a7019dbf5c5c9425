"""Embedding sets against their baselines, both sides of each ratio printed in the same run.

    .venv/bin/python -m benchmarks.bench_embeddings read [--n 1000000] [--dims 32 1280] [--repeats 3]
    .venv/bin/python -m benchmarks.bench_embeddings train [--n 1000000] [--tar-n 100000] [--workers 2]

``read`` (target: reader >= 0.5 of plain): a plain ``np.load(mmap_mode="r")`` + slice loop over the
parts (each slice copied to float32: the least a batch needs) against ``make_embedding_loader`` in eval
mode (contiguous slices, with keys/tags/labels) and in train mode (the shuffled gather), batches of 256,
no DataLoader workers, one process; the three alternate, best of ``--repeats``, after one untimed plain
pass that brings the arrays into the page cache.

``train`` (target: data-wait <= 10% of the training pass): ``benchmarks.scale.data_stages``'s train
point (``build_trainer(...).fit()``, features mode, MLP, M=2, K=256, ``--workers`` Ray workers, each in a
fresh process) on an embedding set of ``--n`` rows, and on the tar shard set of ``--tar-n`` samples
and the embedding set of the same size beside it. Data-wait is the share of the last epoch's training
pass spent in ``next(loader)`` (trainer.metrics_log.EpochClock). The corpus is
``benchmarks.scale.corpus``'s (dim 32, as docs/scaling.md), written as an embedding set here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.scale.corpus import CorpusConfig, CorpusModel

BATCH = 256


def write_embedding_corpus(url: str, n: int, dim: int, part_rows: int, dtype: str = "float16") -> str:
    """The synthetic scale corpus (same rows as ``write_corpus``) as an embedding set; kept if present."""
    from shards.embeddings import EmbeddingSetWriter, MANIFEST_NAME

    if Path(url, MANIFEST_NAME).is_file():
        return url
    w = EmbeddingSetWriter(url, dim=dim, dtype=dtype, source={"corpus": "benchmarks.scale.corpus", "n": n})
    feats, keys, tags, labels, written = [], [], [], [], 0
    for start, cls, feat, tg in CorpusModel(CorpusConfig(dim=dim)).chunks(n):
        feats.append(feat)
        keys += [f"s{start + i:010d}" for i in range(len(cls))]
        tags += [[str(t) for t in row] for row in tg]
        labels += [[f"c{c}"] for c in cls.tolist()]
        while len(keys) >= part_rows or (keys and start + len(cls) == n):
            k = min(part_rows, len(keys))
            block = np.concatenate(feats)
            w.write_part(f"{written // part_rows:05d}", keys[:k], block[:k], tags[:k], labels[:k])
            feats, keys, tags, labels, written = [block[k:]], keys[k:], tags[k:], labels[k:], written + k
    w.close()
    return url


def plain_pass(paths: list[str]) -> int:
    count = 0
    for p in paths:
        arr = np.load(p, mmap_mode="r")
        for i in range(0, len(arr), BATCH):
            count += len(np.array(arr[i:i + BATCH], dtype=np.float32))
    return count


def reader_pass(url: str, train: bool) -> int:
    from shards.embedding_loader import make_embedding_loader
    from shards.reader import ReaderConfig

    loader = make_embedding_loader(url, ReaderConfig(batch_size=BATCH, num_workers=0), train=train)
    return sum(len(b["key"]) for b in loader)


def embedding_reader_pass(url: str) -> int:
    """embedding-reader (clip-retrieval's reader) over the same set: its ``parquet_npy`` format is this
    layout; in order, as our eval mode, with the same columns turned into lists as our batches carry."""
    from embedding_reader import EmbeddingReader

    reader = EmbeddingReader(str(Path(url, "img_emb")), file_format="parquet_npy",
                             metadata_folder=str(Path(url, "metadata")), meta_columns=["key", "tags", "labels"])
    count = 0
    for emb, meta in reader(batch_size=BATCH, show_progress=False):
        batch = {"feat": np.asarray(emb, dtype=np.float32), "key": meta["key"].tolist(),
                 "tags": meta["tags"].tolist(), "labels": meta["labels"].tolist()}
        count += len(batch["feat"])
    return count


def bench_read(a: argparse.Namespace) -> None:
    from shards.embeddings import open_embedding_set

    for dim in a.dims:
        n = a.n if dim <= 256 else a.n_wide
        url = write_embedding_corpus(str(Path(a.work) / f"emb_n{n}_d{dim}"), n, dim, a.part_rows)
        es = open_embedding_set(url)
        paths = [p.npy_url for p in es.parts]
        mb = sum(p.bytes for p in es.parts) / 1e6
        plain_pass(paths)  # page cache
        paths_ = [("plain", lambda: plain_pass(paths)), ("reader eval", lambda: reader_pass(url, False)),
                  ("reader train", lambda: reader_pass(url, True))]
        try:
            import embedding_reader  # noqa: F401  (not a dependency: pip install embedding-reader to compare)

            paths_.append(("embedding-reader (in order)", lambda: embedding_reader_pass(url)))
        except ImportError:
            print("embedding-reader not installed: its row is left out")
        best = {name: float("inf") for name, _ in paths_}
        for _ in range(a.repeats):
            for name, fn in paths_:
                t = time.perf_counter()
                count = fn()
                best[name] = min(best[name], time.perf_counter() - t)
                assert count >= n - BATCH, (name, count)
        print(f"\nN={n:,} dim={dim} float16, {len(es.parts)} parts, {mb:.0f} MB, batch {BATCH}, best of "
              f"{a.repeats}, load {os.getloadavg()[0]:.1f}")
        print("| path | seconds | rows/s | MB/s | ratio to plain |\n|---|---|---|---|---|")
        for name, s in best.items():
            print(f"| {name} | {s:.3f} | {n / s:,.0f} | {mb / s:,.0f} | {best['plain'] / s:.2f} |")


def bench_train(a: argparse.Namespace) -> None:
    from benchmarks.scale.corpus import write_corpus
    from benchmarks.scale.data_stages import build_tags, run_point

    work = Path(a.work)
    tags = str(work / "tags")
    if not Path(tags, "semantics.json").is_file():
        src = str(work / "tar_n10000")
        if not Path(src, "manifest.json").is_file():
            write_corpus(src, 10_000, CorpusConfig(shard_size=5000), overwrite=True)
        build_tags(src, tags)
    runs = [("embedding set", a.n, write_embedding_corpus(str(work / f"emb_n{a.n}_d32"), a.n, 32, a.part_rows))]
    if a.tar_n:
        tar = str(work / f"tar_n{a.tar_n}")
        if not Path(tar, "manifest.json").is_file():
            write_corpus(tar, a.tar_n, CorpusConfig(shard_size=5000), overwrite=True)
        runs += [("tar shards (feat.npy)", a.tar_n, tar),
                 ("embedding set", a.tar_n, write_embedding_corpus(str(work / f"emb_n{a.tar_n}_d32"), a.tar_n, 32,
                                                                   a.part_rows))]
    print("| data | N | workers | epoch | training pass s | samples/s | data-wait | update s | fit() wall s | "
          "load |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, n, corpus in runs:
        storage = str(work / "runs" / f"{time.strftime('%H%M%S')}-{name.split()[0]}")
        r = run_point(["train", "--n", n, "--corpus", corpus, "--tags", tags, "--workers", a.workers,
                       "--storage", storage, "--epochs", a.epochs])
        e = r["epochs"][-1]
        print(f"| {name} | {n:,} | {a.workers} | {e['epoch'] + 1} of {len(r['epochs'])} | {e['epoch_seconds']:.2f} | "
              f"{e['samples_per_s']:,.0f} | {100 * e['data_wait_fraction']:.1f}% | "
              f"{e['codebook_update_seconds']:.2f} | {r['seconds']:.1f} | {r['load']:.1f} |", flush=True)
        if a.results:
            with open(a.results, "a") as f:
                f.write(json.dumps({"data": name, **r}) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("read", "train"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--n-wide", type=int, default=200_000, help="read: N for dims > 256 (1280 x 2 B = 2.5 KB a row)")
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 1280])
    ap.add_argument("--part-rows", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tar-n", type=int, default=100_000, help="train: the tar-shard side (0: none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="train: the last epoch is reported")
    ap.add_argument("--work", default="/tmp/bench-embeddings")
    ap.add_argument("--results", default="", help="train: append each point's JSON to this file")
    a = ap.parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    (bench_read if a.command == "read" else bench_train)(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
