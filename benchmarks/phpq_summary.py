"""docs/results.md, "PHPQ": the table and the paired differences from a ``results_backbone sweep`` output.

    python -m benchmarks.phpq_summary [--out runs/phpq]

Reads ``<out>/sweep.jsonl`` (one line per variant, length and seed) and each run's
``<out>/runs/<name>-<bits>-s<seed>/final/metrics.json`` (``epoch_seconds`` of the training pass,
epochs after the first; ``codebook_update_seconds`` summed over the run), and prints the markdown
table (mean ± sample sd over seeds) and the per-seed paired differences of the variants against
their reference (pyramid vs plain, top_k vs the full softmax).
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

PAIRS = (("pyramid", "plain", 16), ("pyramid", "plain", 32), ("pyramid-s1", "plain", 16), ("pyramid-s1", "plain", 32),
         ("prog-topk8", "prog-topk0", 32),
         ("prog-topk32", "prog-topk0", 32), ("mecoq-topk8", "mecoq-topk0", 16), ("mecoq-topk32", "mecoq-topk0", 16))


def _ms(v: list[float]) -> str:
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.phpq_summary", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/phpq")
    root = Path(p.parse_args(argv).out)
    groups: dict[tuple[str, int], dict[int, dict]] = defaultdict(dict)
    for line in (root / "sweep.jsonl").read_text().splitlines():
        r = json.loads(line)
        groups[(r["name"], r["bits"])][r["seed"]] = r  # a re-run seed: the latest line
    print("| variant | bits | seeds | AQD mAP@all, skip | AQD, zero | float, skip | s / epoch (training pass) "
          "| codebook updates, s / run |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, bits), runs in groups.items():
        epoch, update = [], []
        for seed in runs:
            m = json.loads((root / "runs" / f"{name}-{bits}-s{seed}" / "final" / "metrics.json").read_text())
            epoch += [e["epoch_seconds"] for e in m[1:]]
            update.append(sum(e.get("codebook_update_seconds") or 0 for e in m))
        rs = list(runs.values())
        print(f"| {name} | {bits} | {','.join(map(str, runs))} | {_ms([r['aqd']['skip'] for r in rs])} | "
              f"{_ms([r['aqd']['zero'] for r in rs])} | {_ms([r['float']['skip'] for r in rs])} | "
              f"{statistics.mean(epoch):.2f} | {statistics.mean(update):.1f} |")
    print()
    for a, b, bits in PAIRS:
        A, B = groups.get((a, bits)), groups.get((b, bits))
        if not A or not B:
            continue
        seeds = sorted(set(A) & set(B))
        d = [A[s]["aqd"]["skip"] - B[s]["aqd"]["skip"] for s in seeds]
        f = [A[s]["float"]["skip"] - B[s]["float"]["skip"] for s in seeds]
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        print(f"- {a} − {b}, {bits} bits, seeds {seeds}: AQD (skip) {' '.join(f'{x:+.4f}' for x in d)}, "
              f"mean {statistics.mean(d):+.4f} (sd {sd:.4f}); float {' '.join(f'{x:+.4f}' for x in f)}, "
              f"mean {statistics.mean(f):+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
