"""Sphere vs raw quantization reading on real MIRFLICKR-25K data (features mode).

The 1000 real thumbnails of ``../shared/data/mirflickr25k_real`` with their real user tags (1386-tag
vocabulary, 730 tagged images, the rest untagged) and the 24 ground-truth concepts (evaluation only).
Image features are cheap and fixed (no pretrained CNN can be fetched here): a 12x12 RGB thumbnail plus
an 8x8x8 colour histogram, standardised. Tag embeddings: PPMI + SVD of the tag co-occurrence counted
on the whole 20,015-image Cleared-Set (``trainer.tags.vectors.cooccurrence_embeddings``; the tag
names are unknown, so no word vectors), rows L2-normalised; tags never seen with another are dropped.
Queries: 200 images, database: the other 800 (training set = database). AQD mAP@all, relevance =
at least one shared concept, index tie-breaking, queries without relevant items skipped.

    .venv/bin/python -m benchmarks.method_readings_real
"""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image

from eval.metrics import average_precision, mean_ap
from trainer.encoders import EncoderConfig
from benchmarks.plain_loop import batches_of, fit_plain
from trainer.methods import method_config, OptimConfig, build_method
from trainer.tags.vectors import cooccurrence_embeddings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mirflickr25k_real"
SEEDS, EPOCHS, EMBED = (0, 1, 2), 12, 64


def image_features(files: list[str]) -> np.ndarray:
    rows = []
    for name in files:
        im = Image.open(DATA / name).convert("RGB")
        thumb = np.asarray(im.resize((12, 12), Image.BILINEAR), dtype=np.float32).ravel() / 255.0
        q = (np.asarray(im.resize((64, 64)), dtype=np.int64) // 32).reshape(-1, 3)
        hist = np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512).astype(np.float32)
        rows.append(np.concatenate([thumb, np.sqrt(hist / hist.sum())]))
    x = np.stack(rows)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def main() -> None:
    torch.set_num_threads(1)
    if not (DATA / "subset1000_with_images.npz").is_file():
        raise SystemExit(f"real MIRFLICKR data not found at {DATA} (see ../shared/data)")
    sub = np.load(DATA / "subset1000_with_images.npz", allow_pickle=False)
    cleared = np.load(DATA / "cleared20015_tags1386_labels24.npz", allow_pickle=False)
    t_all = sp.csr_matrix(cleared["tags"].astype(np.float64))
    V = cooccurrence_embeddings(t_all.T @ t_all, EMBED, 0.75, 0)
    norms = np.linalg.norm(V, axis=1)
    keep = norms > 1e-8
    V = V[keep] / norms[keep, None]
    tags = torch.tensor(sub["tags"][:, keep])
    labels = sub["labels"].astype(bool)
    x = torch.tensor(image_features([str(f) for f in sub["image_file"]]), dtype=torch.float32)
    print(f"images {len(x)}, tagged {int((tags.sum(1) > 0).sum())}, tags kept {int(keep.sum())}, "
          f"feature dim {x.shape[1]}")
    perm = np.random.default_rng(0).permutation(len(x))
    qu, db = perm[:200], perm[200:]
    rel_of = lambda order: labels[db][order] & labels[qu][:, None, :]

    def aqd(q: torch.Tensor, d: torch.Tensor) -> float:
        order = np.argsort(-(q @ d.T).numpy(), axis=1, kind="stable")
        ap, r = average_precision(rel_of(order).any(-1))
        return mean_ap(ap, r, "skip")

    print("| reading | AQD mAP 8 bits (M=1) | AQD mAP 16 bits (M=2) | feature mAP (M=2 run) |")
    print("|---|---|---|---|")
    results = {}
    for reading in ("sphere", "raw"):
        per = {1: [], 2: [], "feat": []}
        for seed in SEEDS:
            for M in (1, 2):
                cfg = method_config(embed_dim=int(V.shape[1]), M=M, K=64, space=reading, seed=seed)
                m = build_method(cfg, EncoderConfig(kind="mlp", in_features=x.shape[1], hidden=256), V)
                fit_plain(m, batches_of(x[db], tags[db], 100, seed), EPOCHS,
                          OptimConfig(lr=1e-3, decay_every_steps=0))
                q = m.embed(x[qu])
                per[M].append(aqd(q, m.quantizer.decode(m.encode(x[db]))))
                if M == 2:
                    per["feat"].append(aqd(q, m.embed(x[db])))
        results[reading] = per
        cell = lambda v: f"{statistics.mean(v):.4f}±{statistics.stdev(v):.4f}"
        print(f"| {reading} | {cell(per[1])} | {cell(per[2])} | {cell(per['feat'])} |")
    for M in (1, 2):
        diffs = [a - b for a, b in zip(results["sphere"][M], results["raw"][M])]
        print(f"paired sphere - raw, M={M}, per seed: " + ", ".join(f"{d:+.4f}" for d in diffs))
    rnd = np.random.default_rng(1)
    order = np.stack([rnd.permutation(len(db)) for _ in qu])
    ap, r = average_precision(rel_of(order).any(-1))
    print(f"random ranking mAP: {mean_ap(ap, r, 'skip'):.4f}")


if __name__ == "__main__":
    main()
