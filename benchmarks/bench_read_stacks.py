"""The reader's eval pass as training reads it and as the per-shard jobs read it, on the same real-image shards.

    .venv/bin/python -m benchmarks.bench_read_stacks --shards /tmp/mir3k/database [--workers 1 2] [--image-size 224]

- ``loader``: ``shards.reader.make_loader(train=False)`` with ``--workers`` DataLoader workers (forked
  per pass, eval transform in the workers, float tensors back through shared memory), as
  training's eval passes read;
- ``loader_pixels``: the same with ``EvalRead()`` (per-shard reports, uint8 pixels normalised in
  this process per batch), as the encode and extraction jobs read (``eval.per_shard``).

Both end with ImageNet-normalised float32 batches of ``--batch-size`` images at ``--image-size``;
the rate is images per second of a whole pass (worker start-up inside, as it is paid per pass).
Best of ``--repeat`` passes each, alternating, the box being shared. Prints one JSON row per worker
count: both rates, ``ratio_pixels_over_float``, and the CPU microseconds per image each side spent
in all its processes (best pass; less sensitive to a busy box than the rates).

Until commit 5dc7092 this benchmark also ran the encode job's own decoder pool (``eval.decoding``,
removed after it): ``git checkout 5dc7092`` and run it there for the ``pool`` side and the
``ratio_pool_over_loader*`` figures of docs/eval.md ("Reading stack").
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import psutil


def _cpu() -> float:
    """CPU seconds of this process and its ended children (the loader's joined workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


def pass_loader(manifest, cfg, job=None) -> tuple[int, float, float]:
    from shards.reader import Loader
    from shards.transforms import normalise_batch

    n, c, t = 0, _cpu(), time.perf_counter()
    for b in Loader(manifest, cfg, 0, 1, 0, train=False, job=job):
        if b["key"]:
            x = normalise_batch(b["image"]) if job is not None else b["image"]
            n += len(x)
    return n, time.perf_counter() - t, _cpu() - c


def main(argv=None) -> None:
    from shards.manifest import Manifest
    from shards.reader import EvalRead, ReaderConfig

    p = argparse.ArgumentParser()
    p.add_argument("--shards", required=True, help="an image shard set (e.g. built by python -m shards ...)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    m = Manifest.load(a.shards)
    for w in a.workers:
        cfg = ReaderConfig(batch_size=a.batch_size, image_size=a.image_size, num_workers=w, augment=False)
        names = ("loader", "loader_pixels")
        best, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, float("inf"))
        for r in range(a.repeat):
            for name in names[r % 2:] + names[:r % 2]:  # each side first in turn
                n, s, c = pass_loader(m, cfg, EvalRead() if name == "loader_pixels" else None)
                assert n == m.total, (name, n, m.total)
                best[name] = max(best[name], n / s)
                cpu[name] = min(cpu[name], c / n * 1e6)
        print(json.dumps({"images": m.total, "shards": len(m.shards), "workers": w, "image_size": a.image_size,
                          "batch_size": a.batch_size} | {f"{k}_per_s": round(v, 1) for k, v in best.items()}
                         | {"ratio_pixels_over_float": round(best["loader_pixels"] / best["loader"], 3)}
                         | {f"{k}_cpu_us_per_image": round(v) for k, v in cpu.items()}
                         | {"load_avg_1min": round(psutil.getloadavg()[0], 1)}), flush=True)


if __name__ == "__main__":
    main()
