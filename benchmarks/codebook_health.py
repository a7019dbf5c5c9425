"""Codebook collapse, before and after: live codewords after every update and quantized vs float mAP.

    .venv/bin/python -m benchmarks.codebook_health [--epochs 10]

On the built-in demo data (the digits' 64 pixel values, simulated weak tags; configs/demo.yaml's
model) WSDHQ is trained in one process at 8 / 16 / 32 bits twice: with the authors' codebook update
(one greedy ICM pass, one ICM + least-squares round, dead codewords restored, warm start) and with
this project's defaults (ICM from 8 block orders, 3 rounds with dead codewords re-seeded, warm or
fresh k-means start by error). Printed per update: live codewords per codebook of the gathered
sample coded afresh, and the quantization error; per model: AQD mAP of the codes and the mAP of the
float embeddings they quantize (relevance = same digit, all 1,704 database items).
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import tarfile
import tempfile

import numpy as np
import torch

from eval.metrics import average_precision, mean_ap
from shards.converters.demo import DemoConfig, convert_demo
from trainer.encoders import EncoderConfig
from benchmarks.plain_loop import batches_of, fit_plain
from trainer.methods import method_config, OptimConfig, build_method
from trainer.tags.build import TagConfig, build_from_shards

AUTHORS = dict(icm_restarts=1, iters=1, dead_codewords="restore", start="warm")


def load(root: str, split: str):
    keys, x, tags, labels = [], [], [], []
    for f in sorted(glob.glob(f"{root}/{split}/*.tar")):
        samples: dict[str, dict] = {}
        with tarfile.open(f) as tf:
            for m in tf:
                k, ext = m.name.split(".", 1)
                samples.setdefault(k, {})[ext] = tf.extractfile(m).read()
        for k, v in samples.items():
            keys.append(k)
            x.append(np.load(io.BytesIO(v["feat.npy"])))
            tags.append(json.loads(v["tags.json"]))
            labels.append(json.loads(v["labels.json"])[0])
    return np.stack(x).astype(np.float32), tags, np.array(labels)


def mapk(q, d, lq, ld) -> float:
    order = np.argsort(-(q @ d.T), axis=1, kind="stable")
    ap, r = average_precision(ld[order] == lq[:, None])
    return mean_ap(ap, r, "skip")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="wsdhq-health-")
    convert_demo(root, DemoConfig(features=True))
    from shards.config import load as load_config

    from shards.manifest import Manifest

    tag_cfg = load_config(TagConfig, "configs/tags_demo.yaml", ["num_tasks=0"])  # in-process counting
    ts = build_from_shards(Manifest.load(f"{root}/train").shard_urls(), tag_cfg)
    (xt, tt, _), (xq, _, lq), (xd, _, ld) = (load(root, s) for s in ("train", "query", "database"))
    y = torch.tensor(ts.targets(tt)).float()
    keep = y.sum(1) > 0
    print(f"demo: {int(keep.sum())} tagged training images, {len(xq)} queries, {len(xd)} database, "
          f"{ts.T} tag units ({ts.dim}-d)")
    print("| update rule | bits | live codewords per codebook after each update (of 256) | "
          "quantization error after each update | AQD mAP | float mAP |")
    print("|---|---|---|---|---|---|")
    for label, kw in (("authors", AUTHORS), ("this project", {})):
        for m in (1, 2, 4):
            cfg = method_config(embed_dim=ts.dim, M=m, K=256, seed=0, **kw)
            meth = build_method(cfg, EncoderConfig(kind="mlp", in_features=64, hidden=256), ts.embeddings)
            hist = fit_plain(meth, batches_of(torch.tensor(xt)[keep], y[keep], 64, 0), a.epochs,
                             OptimConfig(lr=1e-3, decay_every_steps=0))
            q, d = meth.embed(torch.tensor(xq)).numpy(), meth.embed(torch.tensor(xd)).numpy()
            rec = meth.quantizer.decode(meth.encode(torch.tensor(xd))).numpy()
            ups = [h for h in hist if "live_codewords" in h]
            live = " ; ".join(",".join(str(v) for v in h["live_codewords"]) for h in ups)
            err = " ; ".join(f"{h['quantization_error']:.3f}" for h in ups)
            print(f"| {label} | {8 * m} | {live} | {err} | {mapk(q, rec, lq, ld):.4f} | {mapk(q, d, lq, ld):.4f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
