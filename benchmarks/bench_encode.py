"""Encode job throughput vs the plain forward pass, and its peak memory at two corpus sizes.

    .venv/bin/python -m benchmarks.bench_encode [--sizes 2000 8000] [--ray]

Features-mode corpus (feat.npy per sample, 1000 samples per shard) and a WSDHQ checkpoint with an
MLP encoder (in 256 -> hidden 512 -> f 64, M=4 x K=256 additive codes, ICM 3 sweeps).
- plain: the same model over the same features already in memory (embed + codes), batch 256;
- job: ``eval.encode`` in ``--local`` mode (tar reading, npy decode, code files) and, with ``--ray``,
  through a 1-actor Ray pool; throughput is the job's own progress rate (model loading and Ray
  start-up excluded; in Ray mode the actor's model load is inside), end-to-end seconds alongside;
- peak memory: each job runs in a fresh subprocess that prints its own ``ru_maxrss``.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FEAT, EMBED = 256, 64


def make_corpus(root: Path, n: int) -> np.ndarray:
    from PIL import Image

    from shards.schema import encode_sample
    from shards.writer import ShardSetWriter

    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    png = buf.getvalue()
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, FEAT)).astype(np.float32)
    w = ShardSetWriter(str(root), "bench", "database", label_names=["a", "b"], max_count=1000)
    for i in range(n):
        w.write(encode_sample(f"s{i:07d}", png, "png", ["t"], ["a" if i % 2 else "b"], feat=x[i]))
    w.close()
    return x


def make_checkpoint(url: Path) -> None:
    from trainer.checkpoint_io import save_inference
    from trainer.encoders import EncoderConfig
    from trainer.methods import MethodConfig, build_method, label_embeddings

    torch.manual_seed(0)
    m = build_method(MethodConfig(name="wsdhq", embed_dim=EMBED, M=4, K=256),
                     EncoderConfig(kind="mlp", in_features=FEAT, hidden=512), label_embeddings(32, EMBED))
    m.codebook_update([m.embed(torch.randn(4000, FEAT))])
    m.encoder.eval()
    save_inference(str(url), m, {"tag_semantics_hash": "bench"})


def plain(ckpt: Path, x: np.ndarray, batch: int = 256) -> float:
    from eval.encode import codes_of
    from trainer.checkpoint_io import load_inference

    model = load_inference(str(ckpt))
    xt = torch.from_numpy(x)
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(xt), batch):
            f = model.embed(xt[i:i + batch])
            codes_of(model, f)
    return len(x) / (time.perf_counter() - t)


JOB = """
import resource, sys, time
from eval.encode import EncodeConfig, run
lines = []
t = time.perf_counter()
run(sys.argv[1], sys.argv[2], sys.argv[3], EncodeConfig(batch_size=256, actors=1), local=sys.argv[4] == "local",
    log=lines.append)
rate = [s for s in lines if s.startswith("encoded ")][-1].split(", ")[-1].split()[0].replace(",", "")
print(time.perf_counter() - t, rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def job(ckpt: Path, corpus: Path, out: Path, mode: str) -> tuple[float, float, float]:
    """(end-to-end seconds incl. start-up, steady samples/s from the job's progress line, peak RSS MB)"""
    r = subprocess.run([sys.executable, "-c", JOB, str(ckpt), str(corpus), str(out), mode], cwd=REPO,
                       capture_output=True, text=True, check=True)
    seconds, rate, rss_kb = r.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(rate), float(rss_kb) / 1024


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--ray", action="store_true", help="also time the 1-actor Ray pool")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        tmp = Path(tmp)
        make_checkpoint(tmp / "ckpt")
        rows = []
        for n in a.sizes:
            x = make_corpus(tmp / f"corpus{n}", n)
            base = plain(tmp / "ckpt", x)
            secs, rate, rss = job(tmp / "ckpt", tmp / f"corpus{n}", tmp / f"codes{n}", "local")
            row = {"n": n, "plain_per_s": round(base), "job_local_per_s": round(rate),
                   "ratio_local": round(rate / base, 3), "job_local_end_to_end_s": round(secs, 2),
                   "job_peak_rss_mb": round(rss, 1)}
            if a.ray:
                rsecs, rrate, _ = job(tmp / "ckpt", tmp / f"corpus{n}", tmp / f"ray{n}", "ray")
                row |= {"job_ray_per_s": round(rrate), "ratio_ray": round(rrate / base, 3),
                        "job_ray_end_to_end_s": round(rsecs, 2)}
            rows.append(row)
            print(json.dumps(row))
        print(f"peak RSS growth {a.sizes[0]} -> {a.sizes[-1]} samples: "
              f"{rows[-1]['job_peak_rss_mb'] - rows[0]['job_peak_rss_mb']:+.1f} MB")


if __name__ == "__main__":
    main()
