"""docs/results.md, "MeCoQ and MoPQ": both on the frozen EfficientNet-Lite0 features of MIRFLICKR-1000,
beside faiss PQ / OPQ on the same features and WSDHQ on the same tags.

    .venv/bin/python -m benchmarks.results_family --features runs/rb/lite0 --tags runs/rb/tags \
        [--out runs/results_family] [--seeds 0 1 2] [--bits 8 16 32] [--models mecoq mopq wsdhq]

``--features`` is the feature shard set ``benchmarks.results_backbone`` extracts (``python -m
eval.extract``; train / query / database, the split of docs/results.md), ``--tags`` its tag semantics
(``python -m trainer.tags build-matrix``); both are only read. Per seed, length and model it runs the
product's own commands, printed and appended to ``<out>/commands.txt``: ``python -m trainer.train
--config configs/mirflickr_lite0.yaml`` (the Ray Train loop in local mode), ``python -m eval.encode
--local`` and ``python -m eval.evaluate``; the MeCoQ runs' evaluations also train faiss PQ and OPQ on
the same (L2-normalised) features, raw and after PCA-64, read by inner product (AQD) like the
project's codes. Cost per epoch is the training loop's own ``epoch_seconds`` (mean over epochs after
the first) from ``final/metrics.json``. A model whose report.json exists is not run again.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.results_mirflickr import REPO, Runner

CONFIG = "configs/mirflickr_lite0.yaml"
BASELINES = ("pq", "opq")
PROJECTIONS = ("none", "pca")


def models(bits: int) -> dict[str, list[str]]:
    m = bits // 8
    return {
        # no tags: two feature views (dropout 0.2 + noise 0.1 on the Lite0 features)
        # 40 epochs and codebook Adam at 1e-2 (1e-3, 20 epochs: 0.650 at 16 bits; α = 20: 0.623)
        "mecoq": ["method.name=mecoq", f"method.quantizer={{M: {m}, kmeans_epoch: 2}}",
                  "method.loss={memory_epoch: 4}", "training.epochs=40", "training.optim.codebook_lr=0.01"],
        # T = 0.5 (T = 0.1: 0.653 at 20 epochs, 0.612 at 40: same-tag images are the batch's negatives)
        "mopq": ["method.name=mopq", f"method.quantizer={{M: {m}, kmeans_epoch: 2}}",
                 "method.loss={temperature: 0.5}", "training.epochs=20"],
        "wsdhq": ["method.name=wsdhq", f"method.quantizer.M={m}"],
    }


class FamilyRunner(Runner):
    def model(self, features: Path, tags: Path, seed: int, bits: int, name: str, overrides: list[str]) -> dict:
        run = f"{name}-{bits}-s{seed}"
        report = self.out / "reports" / run / "report.json"
        runs = self.out / "runs"
        if not report.is_file():
            self.sh("-m", "trainer.train", "--config", CONFIG, f"data.train={features / 'train'}",
                    f"data.tags={tags}", f"storage.path={runs}", f"storage.name={run}",
                    "scaling.num_workers=0", f"training.seed={seed}", f"reader.seed={seed}",
                    f"method.seed={seed}", *overrides)
            self.sh("-m", "eval.encode", "--checkpoint", str(runs / run / "final"), "--shards", str(features),
                    "--out", str(self.out / "codes" / run), "--local")
            baselines = list(BASELINES) if name == "mecoq" else []
            self.sh("-m", "eval.evaluate", "--query", str(self.out / "codes" / run / "query"), "--database",
                    str(self.out / "codes" / run / "database"), "--out", str(report.parent),
                    "--train-shards", str(features / "train"), "--query-shards", str(features / "query"),
                    "--database-shards", str(features / "database"), "top_k=all",
                    f"baselines.methods={json.dumps(baselines)}", "baselines.on=inputs", "baselines.normalize=true",
                    f"baselines.projections={json.dumps(list(PROJECTIONS))}", f"baselines.seed={seed}")
        rows = json.loads(report.read_text())["rows"]
        metrics = json.loads((runs / run / "final" / "metrics.json").read_text())
        later = [m["epoch_seconds"] for m in metrics[1:]] or [metrics[0]["epoch_seconds"]]
        out = {f"{r['method']}|{r['scoring']}|{r['bits']}": r["metrics"]["mAP"] for r in rows}
        out["epoch_seconds"] = statistics.mean(later)
        out["samples_per_s"] = statistics.mean(m["samples_per_s"] for m in metrics[1:] or metrics)
        return out


def table(results: dict, bits_list: list[int]) -> str:
    """mean ± sample sd over seeds (skip convention and zero convention), AQD reading throughout."""

    def cell(values):
        if not values:
            return "n/a"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"

    def own(name, bits, conv):
        vals = []
        for per_seed in results.values():
            rows = per_seed.get(f"{name}-{bits}") or {}
            v = next((v for k, v in rows.items() if k.endswith(f"|aqd|{bits}") and "/" not in k
                      and k.split("|")[0] not in BASELINES), None)
            if v is not None:
                vals.append(v[conv])
        return vals

    def base(meth, bits, conv):
        return [per_seed[f"mecoq-{bits}"][f"{meth}|aqd|{bits}"][conv] for per_seed in results.values()
                if f"{meth}|aqd|{bits}" in per_seed.get(f"mecoq-{bits}", {})]

    def floats(model, meth, conv):
        return [per_seed[model][f"{meth}|feature|None"][conv] for per_seed in results.values()
                if f"{meth}|feature|None" in per_seed.get(model, {})]

    def cost(name):
        vals = [rows["epoch_seconds"] for per_seed in results.values() for key, rows in per_seed.items()
                if key.startswith(name + "-")]
        return f"{statistics.mean(vals):.2f}" if vals else "n/a"

    head = "| model | " + " | ".join(f"{b} bits" for b in bits_list) + " | s / epoch |"
    lines = [head, "|" + "---|" * (len(bits_list) + 2)]
    for conv in ("skip", "zero"):
        lines.append(f"| **mAP@all, {conv} convention** |" + " |" * (len(bits_list) + 1))
        for name, label in (("mecoq", "MeCoQ (no tags), Lite0 + trained head"),
                            ("mopq", "MoPQ, merged-tag keys, Lite0 + trained head"),
                            ("wsdhq", "WSDHQ (same tags, same head)")):
            lines.append(f"| {label} | " + " | ".join(cell(own(name, b, conv)) for b in bits_list)
                         + f" | {cost(name)} |")
            lines.append("| &nbsp;&nbsp;its float embeddings (no code) | "
                         + " | ".join(cell(floats(f"{name}-{b}", name, conv)) for b in bits_list) + " | |")
        lines.append("| Lite0 features, cosine (no code) | "
                     + " | ".join(cell(floats(f"mecoq-{b}", "inputs", conv)) for b in bits_list) + " | |")
        for proj, where in (("", "raw 1280-d"), ("/pca64", "PCA-64")):
            for meth in BASELINES:
                lines.append(f"| faiss {meth.upper()}, Lite0 {where} (inner product) | "
                             + " | ".join(cell(base(meth + proj, b, conv)) for b in bits_list) + " | |")
        gaps = []  # the same-run comparison: MeCoQ's mean minus the best faiss baseline's mean
        for b in bits_list:
            best = [statistics.mean(v) for v in (base(m + p, b, conv) for m in BASELINES for p in ("", "/pca64")) if v]
            mine = own("mecoq", b, conv)
            gaps.append(f"{statistics.mean(mine) - max(best):+.3f}" if mine and best else "n/a")
        lines.append("| MeCoQ minus the best faiss row | " + " | ".join(gaps) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True, help="feature shard set (train / query / database)")
    p.add_argument("--tags", required=True, help="tag semantics directory")
    p.add_argument("--out", default="runs/results_family")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--models", nargs="+", default=["mecoq", "mopq", "wsdhq"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for the MeCoQ and MoPQ runs (after the defaults above)")
    a = p.parse_args(argv)
    features, tags = Path(a.features).resolve(), Path(a.tags).resolve()
    if not (features / "train" / "manifest.json").is_file() or not (tags / "semantics.json").is_file():
        raise SystemExit(f"no feature shards at {features} or tag semantics at {tags}; see "
                         "benchmarks/results_backbone.py for the commands that make them")
    r = FamilyRunner((REPO / a.out).resolve())
    results: dict = {}
    for seed in a.seeds:
        results[seed] = {}
        for bits in a.bits:
            for name, overrides in models(bits).items():
                if name != "wsdhq":
                    overrides = overrides + a.set
                if name in a.models:
                    results[seed][f"{name}-{bits}"] = r.model(features, tags, seed, bits, name, overrides)
            (r.out / "results.json").write_text(json.dumps(results, indent=1))
            (r.out / "results.md").write_text(table(results, a.bits) + "\n")
        print(table(results, a.bits), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
