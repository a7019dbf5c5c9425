"""The encode job's two candidate reading stacks side by side, on the same real-image shards.

    .venv/bin/python -m benchmarks.bench_read_stacks --shards /tmp/mir3k/database [--workers 1 2] [--image-size 224]

- ``pool``: the hand-made decoder processes (``eval.decoding.Decoders``, spawned once and reused,
  JSON header + raw uint8 bytes over a pipe, nice 0 here), each batch then normalised in this
  process (``normalise_batch``), as the job did beside its model;
- ``loader``: ``shards.reader.make_loader(train=False)`` with the same number of DataLoader workers
  (forked per pass, eval transform in the workers, float tensors back through shared memory), as
  training's eval passes read;
- ``loader_pixels``: the same with ``EvalRead()`` (per-shard reports, uint8 pixels normalised here
  per batch), as the encode and extraction jobs read.

Both end with the same thing, ImageNet-normalised float32 batches of ``--batch-size`` images at
``--image-size``; the rate is images per second of a whole pass (the pool's process start-up is
outside it, as in the job, which starts its decoders with the model load; the loader's worker
start-up is inside, as it is paid per pass). Best of ``--repeat`` passes each, alternating, the
box being shared. Prints one JSON row per worker count with both rates and ``ratio`` =
pool / loader and pool / loader_pixels (the issue's rule: the pool stays only if its rate is >= 1.10
x the reader's), and the CPU seconds per
image each side spent in all its processes (best pass; less sensitive to a busy box than the rates).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import psutil
import torch


def _cpu(pids: list[int]) -> float:
    """CPU seconds of this process, its ended children (the loader's joined workers) and ``pids``
    (the pool's live decoders)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime + live


def pass_pool(decoders, tasks) -> tuple[int, float, float]:
    from shards.transforms import normalise_batch

    pids = [p.pid for p in decoders.procs]
    n, c, t = 0, _cpu(pids), time.perf_counter()
    for b in decoders.batches(tasks):
        if b.keys:
            x = normalise_batch(torch.from_numpy(b.x))
            n += len(x)
    return n, time.perf_counter() - t, _cpu(pids) - c


def pass_loader(manifest, cfg, job=None) -> tuple[int, float, float]:
    from shards.reader import Loader
    from shards.transforms import normalise_batch

    n, c, t = 0, _cpu([]), time.perf_counter()
    for b in Loader(manifest, cfg, 0, 1, 0, train=False, job=job):
        if b["key"]:
            x = normalise_batch(b["image"]) if job is not None else b["image"]
            n += len(x)
    return n, time.perf_counter() - t, _cpu([]) - c


def main(argv=None) -> None:
    from eval.decoding import Decoders, ReadSpec
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
    tasks = [(i, u, o, e.count) for i, (u, o, e) in enumerate(zip(m.shard_urls(), m.offsets(), m.shards))]
    for w in a.workers:
        decoders = Decoders(ReadSpec(a.batch_size, False, None, a.image_size), w, nice=0)
        cfg = ReaderConfig(batch_size=a.batch_size, image_size=a.image_size, num_workers=w, augment=False)
        names = ("pool", "loader", "loader_pixels")
        best, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, float("inf"))
        try:
            for r in range(a.repeat):
                for name in names[r % 3:] + names[:r % 3]:  # each side first in turn
                    n, s, c = (pass_pool(decoders, tasks) if name == "pool" else
                               pass_loader(m, cfg, EvalRead() if name == "loader_pixels" else None))
                    assert n == m.total, (name, n, m.total)
                    best[name] = max(best[name], n / s)
                    cpu[name] = min(cpu[name], c / n * 1e6)
        finally:
            decoders.close()
        print(json.dumps({"images": m.total, "shards": len(m.shards), "workers": w, "image_size": a.image_size,
                          "batch_size": a.batch_size} | {f"{k}_per_s": round(v, 1) for k, v in best.items()}
                         | {"ratio_pool_over_loader": round(best["pool"] / best["loader"], 3),
                            "ratio_pool_over_loader_pixels": round(best["pool"] / best["loader_pixels"], 3)}
                         | {f"{k}_cpu_us_per_image": round(v) for k, v in cpu.items()}
                         | {"load_avg_1min": round(psutil.getloadavg()[0], 1)}), flush=True)


if __name__ == "__main__":
    main()
