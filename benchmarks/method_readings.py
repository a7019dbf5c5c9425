"""Paper vs code readings of the methods, measured on the synthetic weakly-tagged set.

Each switch where the paper and the authors' code disagree is trained both ways with the single
process loop (features mode, 600 train/database + 200 queries, 10 latent classes, noisy tags), over
three seeds, and reports AQD mAP (whole database, same-class relevance) and the final loss terms.

    .venv/bin/python -m benchmarks.method_readings
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import torch

from eval.metrics import average_precision, mean_ap
from trainer.encoders import EncoderConfig
from benchmarks.plain_loop import batches_of, fit_plain, synthetic_weak_tags
from trainer.methods import MethodConfig, OptimConfig, build_method, label_embeddings, method_config

SEEDS = (0, 1, 2)
N_TRAIN, N_QUERY = 600, 200


def aqd_map(q, db, q_lab, db_lab) -> float:
    order = np.argsort(-(q @ db.T).numpy(), axis=1, kind="stable")
    ap, r = average_precision(db_lab.numpy()[order] == q_lab.numpy()[:, None])
    return mean_ap(ap, r, "skip")


def run(cfg: MethodConfig, seed: int, epochs: int, optim: OptimConfig, labels_as_targets: bool) -> dict:
    data = synthetic_weak_tags(n=N_TRAIN + N_QUERY, noise=2.0, seed=seed)
    tr, qu = slice(0, N_TRAIN), slice(N_TRAIN, None)
    if labels_as_targets:
        y, V = torch.nn.functional.one_hot(data.labels, 10), label_embeddings(10, cfg.embed_dim, seed)
    else:
        y, V = data.tags, data.V
    m = build_method(dataclasses.replace(cfg, seed=seed), EncoderConfig(kind="mlp", in_features=32, hidden=64), V)
    hist = fit_plain(m, batches_of(data.x[tr], y[tr], 100, seed), epochs, optim)
    q, codes = m.embed(data.x[qu]), m.encode(data.x[tr])
    maps = [aqd_map(q, m.quantizer.decode(codes[:, :l]), data.labels[qu], data.labels[tr])
            for l in range(1, codes.shape[1] + 1)]
    return {"maps": maps, "emb": hist[-1]["emb"], "q": hist[-1].get("q", float("nan"))}


def report(title: str, variants: dict[str, MethodConfig], epochs: int, optim: OptimConfig,
           labels_as_targets: bool = False) -> None:
    print(f"\n## {title} ({epochs} epochs, seeds {SEEDS})")
    print("| variant | AQD mAP using the first 1..M codebooks/levels (mean ± sd over seeds) | final L_emb | final L_q |")
    print("|---|---|---|---|")
    full_code = {}
    for name, cfg in variants.items():
        runs = [run(cfg, s, epochs, optim, labels_as_targets) for s in SEEDS]
        full_code[name] = [r["maps"][-1] for r in runs]
        levels = len(runs[0]["maps"])
        maps = " / ".join(f"{statistics.mean(r['maps'][l] for r in runs):.3f}±"
                          f"{statistics.stdev(r['maps'][l] for r in runs):.3f}" for l in range(levels))
        print(f"| {name} | {maps} | {statistics.mean(r['emb'] for r in runs):.4f} | "
              f"{statistics.mean(r['q'] for r in runs):.4f} |")
    (a, ma), (b, mb) = full_code.items()
    print(f"paired full-code mAP difference ({a}) - ({b}) per seed: "
          + ", ".join(f"{x - y:+.3f}" for x, y in zip(ma, mb)))


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    adam = OptimConfig(lr=3e-3, decay_every_steps=0)
    base = dict(embed_dim=16, M=2, K=16)
    for lam in (1e-4, 1e-1):
        report(f"WSDHQ quantization reading, lambda_q={lam:g} (M=2, K=16: 4 / 8 bits)", {
            "sphere (paper: z, row-normalised V)": method_config(space="sphere", lambda_q=lam, **base),
            "raw (code: tanh f, raw V)": method_config(space="raw", lambda_q=lam, **base),
        }, epochs=8, optim=adam)
    prog = dict(embed_dim=16, M=3, K=16, feature_epochs=3)
    pq_opt = OptimConfig(lr=3e-3, decay_every_steps=0, codebook_lr=1e-2)
    report("DPQ: end to end (paper) vs codebooks only (code)", {
        "end_to_end=True (paper)": method_config(name="dpq", end_to_end=True, **prog),
        "end_to_end=False (code)": method_config(name="dpq", end_to_end=False, **prog),
    }, epochs=8, optim=pq_opt, labels_as_targets=True)
    report("DPQ soft-assignment temperature", {
        "softmax_gamma=1 (code)": method_config(name="dpq", softmax_gamma=1.0, **prog),
        "softmax_gamma=10 (paper: 'large')": method_config(name="dpq", softmax_gamma=10.0, **prog),
    }, epochs=8, optim=pq_opt, labels_as_targets=True)
    report("wsdhq_progressive: end to end vs codebooks only", {
        "end_to_end=True": method_config(name="wsdhq_progressive", end_to_end=True, **prog),
        "end_to_end=False": method_config(name="wsdhq_progressive", end_to_end=False, **prog),
    }, epochs=8, optim=pq_opt)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
