"""docs/results.md, "MeCoQ and MoPQ": both on the frozen EfficientNet-Lite0 features of MIRFLICKR-1000,
beside faiss PQ / OPQ on the same features and WSDHQ on the same tags.

    .venv/bin/python -m benchmarks.results_family --features runs/rb/lite0 --tags runs/rb/tags \
        [--out runs/results_family] [--seeds 0 1 2] [--bits 8 16 32] [--models mecoq mecoq_untagged mopq wsdhq]

``--features`` is the feature shard set ``benchmarks.results_backbone`` extracts (``python -m
eval.extract``; train / query / database, the split of docs/results.md), ``--tags`` its tag semantics
(``python -m trainer.tags build-matrix``); both are only read. Per seed, length and model it runs the
product's own commands, printed and appended to ``<out>/commands.txt``: ``python -m trainer.train
--config configs/mirflickr_lite0.yaml`` (the Ray Train loop in local mode), ``python -m eval.encode
--local`` and ``python -m eval.evaluate``; the MeCoQ runs' evaluations also train faiss PQ, OPQ,
RQ and LSQ on the L2-normalised input features of MeCoQ's own training split (``mecoq``: the tagged
training images; ``mecoq_untagged``: those plus the untagged images, i.e. the database split, see
``untagged_train_set``), raw and after PCA-64, read by inner product (AQD) like the project's codes
(``tagless_table``). Cost per epoch is the training loop's own ``epoch_seconds`` (mean over epochs after
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
# The faiss references of the MeCoQ rows: the whole unsupervised family, trained on MeCoQ's own
# training set (the L2-normalised input features of the same images).
TAGLESS_BASELINES = ("pq", "opq", "residual", "lsq")
# Which feature split each model trains on. "mecoq_untagged" is MeCoQ on the training images plus
# the untagged ones: the split (``--train-needs-tags``, query 0.2 + train 0.8) sends every
# non-query untagged image to the database only, so the database split is exactly train ∪
# untagged (checked by ``untagged_train_set``); its faiss references train on the same split.
TRAIN_SPLIT = {"mecoq_untagged": "database"}
TAGLESS = ("mecoq", "mecoq_untagged")


def models(bits: int) -> dict[str, list[str]]:
    m = bits // 8
    # no tags: two feature views (dropout 0.2 + noise 0.1 on the Lite0 features), 40 epochs,
    # codebook Adam at 1e-2, the codebooks refit by spherical k-means on the trained embeddings after
    # the last epoch, contrastive T per length (docs/results.md, "MeCoQ against faiss": screened on
    # seed 0/1; T 0.4 without the refit lost 0.014-0.017 to quantization)
    mecoq = ["method.name=mecoq", f"method.quantizer={{M: {m}, kmeans_epoch: 2, refit: true}}",
             f"method.loss={{memory_epoch: 4, temperature: {MECOQ_TEMPERATURE[bits]}}}", "training.epochs=40",
             "training.optim.codebook_lr=0.01"]
    return {
        "mecoq": mecoq,
        "mecoq_untagged": mecoq,
        # T = 0.5 (T = 0.1: 0.653 at 20 epochs, 0.612 at 40: same-tag images are the batch's negatives)
        "mopq": ["method.name=mopq", f"method.quantizer={{M: {m}, kmeans_epoch: 2}}",
                 "method.loss={temperature: 0.5}", "training.epochs=20"],
        "wsdhq": ["method.name=wsdhq", f"method.quantizer.M={m}"],
    }


MECOQ_TEMPERATURE = {8: 0.25, 16: 0.3, 32: 0.4}


def untagged_train_set(features: Path) -> Path:
    """The database split, after checking that it holds exactly the training images plus images
    without tags (so training on it adds the untagged images and nothing else)."""
    from shards.manifest import Manifest
    from shards.reader import iter_samples

    def keys(split: str) -> dict[str, bool]:
        return {s["__key__"]: bool(s.get("tags")) for url in Manifest.load(str(features / split)).shard_urls()
                for s in iter_samples(url, fields=["tags.json"])}

    train, db = keys("train"), keys("database")
    extra = set(db) - set(train)
    tagged = sorted(k for k in extra if db[k])
    if set(train) - set(db) or tagged:
        raise SystemExit(f"{features}/database is not train + untagged images ({len(set(train) - set(db))} "
                         f"training images missing, {len(tagged)} tagged non-training images, e.g. "
                         f"{tagged[:1]}): split with --train-needs-tags and query + train fractions summing to 1")
    return features / "database"


class FamilyRunner(Runner):
    def model(self, features: Path, tags: Path, seed: int, bits: int, name: str, overrides: list[str]) -> dict:
        run = f"{name}-{bits}-s{seed}"
        report = self.out / "reports" / run / "report.json"
        runs = self.out / "runs"
        train = untagged_train_set(features) if TRAIN_SPLIT.get(name) == "database" else features / "train"
        if not report.is_file():
            self.run_model(run, CONFIG, train, tags, features, seed, overrides,
                           list(TAGLESS_BASELINES) if name in TAGLESS else [], PROJECTIONS)
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
                      and k.split("|")[0] not in TAGLESS_BASELINES), None)
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


def tagless_table(results: dict, bits_list: list[int]) -> str:
    """MeCoQ against the faiss family trained on the same split, per training split: mean ± sample
    sd over seeds, skip and zero conventions, AQD reading; the margin over the best faiss row (of
    means) and the smallest per-seed margin (the worst seed against that row's mean)."""

    def vals(model, bits, key, conv):
        return [per_seed[f"{model}-{bits}"][key][conv] for per_seed in results.values()
                if key in per_seed.get(f"{model}-{bits}", {})]

    def cell(v):
        if not v:
            return "n/a"
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"

    where = {"mecoq": "575 tagged training images", "mecoq_untagged": "training + untagged images (787)"}
    lines = ["| model | " + " | ".join(f"{b} bits" for b in bits_list) + " |", "|" + "---|" * (len(bits_list) + 1)]
    for conv in ("skip", "zero"):
        for model in TAGLESS:
            if not any(f"{model}-{b}" in per_seed for per_seed in results.values() for b in bits_list):
                continue
            lines.append(f"| **{conv} convention, trained on the {where[model]}** |" + " |" * len(bits_list))
            lines.append("| MeCoQ (no tags), codes | "
                         + " | ".join(cell(vals(model, b, f"mecoq|aqd|{b}", conv)) for b in bits_list) + " |")
            lines.append("| &nbsp;&nbsp;its float embeddings | "
                         + " | ".join(cell(vals(model, b, "mecoq|feature|None", conv)) for b in bits_list) + " |")
            lines.append("| Lite0 features, cosine (no code) | "
                         + " | ".join(cell(vals(model, b, "inputs|feature|None", conv)) for b in bits_list) + " |")
            names = {"pq": "PQ", "opq": "OPQ", "residual": "RQ", "lsq": "LSQ"}
            for proj, label in (("", "raw 1280-d"), ("/pca64", "PCA-64")):
                for meth in TAGLESS_BASELINES:
                    lines.append(f"| faiss {names[meth]}, {label} | "
                                 + " | ".join(cell(vals(model, b, f"{meth}{proj}|aqd|{b}", conv)) for b in bits_list)
                                 + " |")
            best, margin, worst = [], [], []
            for b in bits_list:
                rows = {f"{m}{p}": vals(model, b, f"{m}{p}|aqd|{b}", conv)
                        for m in TAGLESS_BASELINES for p in ("", "/pca64")}
                rows = {k: statistics.mean(v) for k, v in rows.items() if v}
                mine = vals(model, b, f"mecoq|aqd|{b}", conv)
                if not rows or not mine:
                    best.append("n/a"), margin.append("n/a"), worst.append("n/a")
                    continue
                top = max(rows, key=rows.get)
                best.append(f"{rows[top]:.3f} ({top})")
                margin.append(f"{statistics.mean(mine) - rows[top]:+.3f}")
                worst.append(f"{min(mine) - rows[top]:+.3f}")
            lines.append("| best faiss row (mean) | " + " | ".join(best) + " |")
            lines.append("| MeCoQ mean minus best faiss | " + " | ".join(margin) + " |")
            lines.append("| MeCoQ worst seed minus best faiss | " + " | ".join(worst) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True, help="feature shard set (train / query / database)")
    p.add_argument("--tags", required=True, help="tag semantics directory")
    p.add_argument("--out", default="runs/results_family")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--models", nargs="+", default=["mecoq", "mopq", "wsdhq"],
                   help="of mecoq, mecoq_untagged (MeCoQ on the training + untagged images), mopq, wsdhq")
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
            (r.out / "results.md").write_text(table(results, a.bits) + "\n\n" + tagless_table(results, a.bits) + "\n")
        print(table(results, a.bits) + "\n\n" + tagless_table(results, a.bits), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
