"""Tag counting pass: throughput with 0 (plain in-process baseline), 1 and 2 Ray tasks, and memory.

    .venv/bin/python -m benchmarks.bench_tags [--demo <train shard set>] [--repeats 2]

Datasets: the demo train set (``python -m shards demo``; made in a temp dir when not given) and the
real MIRFLICKR-25K Cleared-Set tag matrix (20,015 images x 1,386 tags) written as tag-only shards
(the matrix has no images). Memory: peak traced allocation (tracemalloc; numpy/scipy buffers
included) of both counting passes over a streamed synthetic Zipf corpus at two raw-vocabulary sizes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared/data/mirflickr25k_real/cleared20015_tags1386_labels24.npz"


def real_matrix_shards(out: str) -> list[str]:
    from shards.writer import ShardSetWriter

    with np.load(REAL, allow_pickle=False) as d:
        tags = d["tags"]
    w = ShardSetWriter(out, source="mirflickr cleared20015 tags (benchmark)", split="train", max_count=2000)
    for i, row in enumerate(tags):
        names = [f"tag_{j:04d}" for j in np.flatnonzero(row)]
        w.write({"__key__": f"row{i:05d}", "jpg": b"", "tags.json": json.dumps(names).encode()})
    return w.close().shard_urls()


def time_counting(urls: list[str], num_tasks: int, repeats: int) -> tuple[float, int]:
    from trainer.tags.build import TagConfig, count_shards

    best, n = float("inf"), 0
    for _ in range(repeats):
        t = time.perf_counter()
        counts = count_shards(urls, TagConfig(num_tasks=num_tasks))
        best = min(best, time.perf_counter() - t)
        n = counts.stats["images"]
    return best, n


def zipf_images(n_images: int, vocab: int, seed: int, per_image: int = 8):
    """Synthetic web-like tags: Zipf(1.1) over ``vocab`` raw tags, streamed (never held)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    p /= p.sum()
    from trainer.tags.counting import Sample

    for start in range(0, n_images, 10_000):
        block = rng.choice(vocab, size=(min(10_000, n_images - start), per_image), p=p)
        for i, row in enumerate(block):
            yield Sample(str(start + i), [f"t{x}" for x in row])


def peak_memory(n_images: int, vocab: int) -> tuple[float, int, int]:
    from trainer.tags.counting import choose_vocab, count_cooccurrence, count_frequencies
    from trainer.tags.normalize import NormalizeConfig

    norm = NormalizeConfig()
    tracemalloc.start()
    freq = count_frequencies(zipf_images(n_images, vocab, 0), norm)
    kept = choose_vocab(freq.freq, min_count=2, max_vocab=None)
    cooc = count_cooccurrence(zipf_images(n_images, vocab, 0), norm, kept)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20, len(freq.freq), cooc.cooc.nnz


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", help="demo train shard set (default: made with `python -m shards demo`)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-images", type=int, default=200_000)
    args = ap.parse_args(argv)

    import ray

    tmp = tempfile.mkdtemp(prefix="bench-tags-")
    demo = args.demo
    if demo is None:
        subprocess.run([sys.executable, "-m", "shards", "demo", "--out", f"{tmp}/demo"], check=True,
                       capture_output=True)
        demo = f"{tmp}/demo/train"
    from shards.manifest import Manifest

    sets = {"demo (1,233 images)": Manifest.load(demo).shard_urls()}
    if REAL.is_file():
        sets["MIRFLICKR real tags (20,015 images)"] = real_matrix_shards(f"{tmp}/real")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print("| data | shards | tasks | seconds (best of %d) | samples/s | vs in-process |" % args.repeats)
    print("|---|---|---|---|---|---|")
    for name, urls in sets.items():
        base = None
        for tasks in (0, 1, 2):
            sec, n = time_counting(urls, tasks, args.repeats)
            base = base or sec
            label = "in-process (no Ray)" if tasks == 0 else f"{tasks} Ray task(s)"
            print(f"| {name} | {len(urls)} | {label} | {sec:.2f} | {n / sec:,.0f} | {base / sec:.2f}x |")
    ray.shutdown()
    print()
    print("| synthetic Zipf corpus | raw tags seen | vocab nnz of co-occurrence | peak traced MiB |")
    print("|---|---|---|---|")
    for vocab in (10_000, 100_000):
        mib, raw, nnz = peak_memory(args.memory_images, vocab)
        print(f"| {args.memory_images:,} images x 8 tags, Zipf over {vocab:,} | {raw:,} | {nnz:,} | {mib:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
