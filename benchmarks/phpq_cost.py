"""The cost of PHPQ's pyramid hybrid pooling head against the plain head, on the same backbone.

    nice -n 10 .venv/bin/python -m benchmarks.phpq_cost [--kind efficientnet_lite0] [--batch 16] [--repeats 5]

Times, on one thread and alternating plain / pyramid so the shared machine's load falls on both
alike: (1) the frozen backbone's forward per image (what ``eval.extract`` pays once per image), and
(2) one training step per image with the last ``--trainable`` stages training (forward, a loss on the
embedding, backward, Adam), what an end-to-end epoch costs per image; (3) a product-quantizer
step (forward + backward) with ``top_k`` 0 / 8 / 32 (partial codebook attention). Prints one JSON
line: the median seconds per image of (1) and (2), the feature lengths, and (3) in ms.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from trainer.encoders import EncoderConfig, build_encoder


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, first-call paths)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.phpq_cost", description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="efficientnet_lite0")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--trainable", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    out = {"kind": a.kind, "batch": a.batch, "size": a.size, "trainable": a.trainable, "threads": 1,
           "load_avg_1m_before": os.getloadavg()[0]}
    for head in ("plain", "pyramid_hybrid"):
        out[head] = {}
    for phase in ("frozen_forward", "train_step"):
        for head in ("plain", "pyramid_hybrid"):
            trainable = 0 if phase == "frozen_forward" else a.trainable
            enc = build_encoder(EncoderConfig(kind=a.kind, head=head, trainable=trainable), embed_dim=128)
            out[head]["features"] = int(enc.backbone.out_dim)
            if phase == "frozen_forward":
                enc.eval()

                def step():
                    with torch.no_grad():
                        enc.backbone(x)
            else:
                enc.train()
                opt = torch.optim.Adam([q for q in enc.parameters() if q.requires_grad], lr=1e-4)

                def step():
                    opt.zero_grad()
                    enc(x).square().mean().backward()
                    opt.step()
            out[head][f"{phase}_s_per_image"] = round(_median_time(step, a.repeats) / a.batch, 5)
    # (3) partial codebook attention: one product-quantizer forward + backward of the soft and
    # straight-through reconstructions (MeCoQ's 16 bits: M=2, K=256) on a batch of 128-d rows
    from trainer.quantizers import ProductQuantizer

    t = torch.randn(2 * a.batch * 4, 128)
    out["product_quantizer_step_ms"] = {}
    for k in (0, 8, 32):
        q = ProductQuantizer(128, 2, 256, top_k=k)

        def qstep():
            q.zero_grad()
            o = q(t)
            (o["soft"].square().sum() + o["hard"].sum()).backward()
        out["product_quantizer_step_ms"][f"top_k={k}"] = round(1000 * _median_time(qstep, 5 * a.repeats), 3)
    out["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
