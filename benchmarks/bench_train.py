"""Ray Train loop vs a plain single-process torch loop, and the codebook update's share of an epoch.

    .venv/bin/python -m benchmarks.bench_train [--epochs 3] [--workers 1 2]

1. Throughput: the digits demo (image mode, small CNN, 1260 training images) trained for the same
   epochs by ``benchmarks.plain_loop.fit_plain`` (plain loop over the same shard reader) and by the Ray
   Train loop with 1 and 2 workers; samples/s of the training epochs (codebook updates off in both, so
   the same work is timed) and the ratio. Data-wait fraction from the Ray loop's own clock.
2. Codebook update (encode + all-reduce + solve) as a share of an epoch at the demo's size, from
   a Ray run with update_every=1.
3. How the update grows with M and N: ``Method.codebook_update`` timed alone on N embeddings
   (one process; the all-reduce of (MK)^2 + MK*D float64 is not in this figure).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shards import config as config_lib
from trainer.config import RunConfig


def demo_data(root: Path) -> dict:
    from shards.converters.demo import convert_demo
    from shards.manifest import Manifest
    from trainer.tags import TagConfig, build_from_shards

    convert_demo(str(root))
    sem = build_from_shards(Manifest.load(str(root / "train")).shard_urls(),
                            config_lib.from_dict(TagConfig, {"num_tasks": 0}))
    sem.save(str(root / "tags"))
    return {"train": str(root / "train"), "tags": str(root / "tags"), "dim": sem.dim}


def run_config(data: dict, storage: Path, name: str, epochs: int, workers: int, update_every: int,
               gpu: bool = False) -> RunConfig:
    return config_lib.from_dict(RunConfig, {
        "data": {"train": data["train"], "tags": data["tags"]},
        "reader": {"batch_size": 64, "image_size": 32, "num_workers": 1, "crop_scale": [0.7, 1.0]},
        "encoder": {"kind": "small_cnn", "width": 16},
        "method": {"embed_dim": data["dim"], "quantizer": {"M": 2, "K": 256, "update_every": update_every}},
        "training": {"epochs": epochs},
        "scaling": {"num_workers": workers, "collective_timeout_s": 600, "use_gpu": gpu},
        "storage": {"path": str(storage), "name": name},
    })


def plain_loop(cfg: RunConfig, epochs: int, device: str = "cpu") -> tuple[float, float]:
    """(samples/s of the epochs after the first, wall seconds) of fit_plain over the same reader,
    model and optimizer (no Ray, no DDP); the first epoch is left out as in the Ray figure."""
    from shards.reader import make_loader
    from benchmarks.plain_loop import fit_plain
    from trainer.methods import build_method
    from trainer.tags import TagSemantics

    tags = TagSemantics.load(cfg.data.tags)
    method = build_method(cfg.method, cfg.encoder, tags.embeddings)
    method.net.to(device)
    starts: list[float] = []
    samples: list[int] = []

    def batches(epoch: int):
        starts.append(time.perf_counter())
        samples.append(0)
        for b in make_loader(cfg.data.train, cfg.reader, 0, 1, epoch, train=True):
            samples[-1] += len(b["key"])
            yield {"x": b["image"].to(device), "y": torch.from_numpy(tags.targets(b["tags"])).to(device)}

    start = time.perf_counter()
    fit_plain(method, batches, epochs, cfg.training.optim)
    end = time.perf_counter()
    return sum(samples[1:]) / (end - starts[1]), end - start


def ray_loop(cfg: RunConfig) -> tuple[list[dict], float]:
    """(per-epoch metrics, wall seconds of fit() including worker start-up and checkpoints)."""
    import json

    from trainer.train import build_trainer

    start = time.perf_counter()
    result = build_trainer(cfg).fit()
    wall = time.perf_counter() - start
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / "metrics.json").read_text()), wall


def update_scaling(dim: int) -> list[tuple[int, int, float]]:
    from trainer.encoders import EncoderConfig
    from trainer.methods import method_config, build_method

    rows = []
    V = torch.nn.functional.normalize(torch.randn(17, dim), dim=1)
    for M in (1, 2, 4):
        for N in (1260, 5000, 20000):
            method = build_method(method_config(embed_dim=dim, M=M, K=256), EncoderConfig(kind="mlp", in_features=8), V)
            x = torch.nn.functional.normalize(torch.randn(N, dim), dim=1)
            method.codebook_update(x)  # k-means initialisation + first solve (not timed)
            start = time.perf_counter()
            method.codebook_update(x)
            rows.append((M, N, time.perf_counter() - start))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl); the plain loop on cuda")
    a = p.parse_args(argv)
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}})
    torch.set_num_threads(1)  # a Ray worker gets one CPU: the plain loop gets the same
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = demo_data(root / "demo")
        never = 10**6
        device = "cuda" if a.gpu else "cpu"
        plain, plain_wall = plain_loop(run_config(data, root, "plain", a.epochs, 0, never), a.epochs, device)
        print(f"plain loop (fit_plain, 1 process):  {plain:8.1f} samples/s  (wall {plain_wall:.1f}s "
              f"for {a.epochs} epochs)")
        for w in a.workers:
            hist, wall = ray_loop(run_config(data, root, f"ray{w}", a.epochs, w, never, a.gpu))
            n = sum(m["samples"] for m in hist[1:])
            sps = n / sum(m["epoch_seconds"] for m in hist[1:])
            wait = statistics.mean(m["data_wait_fraction"] for m in hist)
            print(f"Ray Train loop, {w} worker(s):      {sps:8.1f} samples/s  "
                  f"(ratio to plain {sps / plain:.2f}, data-wait {100 * wait:.1f}%; wall {wall:.1f}s with "
                  f"worker start-up and per-epoch checkpoints, ratio {plain_wall / wall:.2f})")
        hist, _ = ray_loop(run_config(data, root, "update", a.epochs, a.workers[-1], 1, a.gpu))
        for m in hist:
            share = m["codebook_update_seconds"] / (m["epoch_seconds"] + m["codebook_update_seconds"])
            print(f"epoch {m['epoch']}: codebook update {m['codebook_update_seconds']:.2f}s = "
                  f"{100 * share:.1f}% of the epoch ({a.workers[-1]} workers, M=2 K=256, N=1260); of it "
                  f"{m['codebook_embed_seconds']:.2f}s re-embedding the share, the rest ICM + all-reduce + solve")
        print("codebook update alone (ICM + statistics + solve, 1 process, K=256):")
        for M, N, s in update_scaling(data["dim"]):
            print(f"  M={M} N={N:6d}: {s:6.2f}s")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
