"""docs/results.md on the pretrained backbone: WSDHQ and its references on real MIRFLICKR-25K images.

    .venv/bin/python -m benchmarks.results_backbone [--out runs/results_backbone] [--seeds 0 1 2]

The product's own commands, each printed and appended to ``<out>/commands.txt``:
``python -m shards mirflickr-matrix`` (images, the split of docs/results.md), ``python -m eval.extract``
(EfficientNet-Lite0 ImageNet features, once), ``python -m trainer.tags build-matrix``, then per seed
and model ``python -m trainer.train --config configs/mirflickr_lite0.yaml`` (the Ray Train loop in
local mode), ``python -m eval.encode --local`` and ``python -m eval.evaluate``. The WSDHQ runs'
evaluations also train the unsupervised references on the same backbone features
(``baselines.on=inputs``, L2-normalised, AQD inner-product reading): faiss PQ / OPQ / RQ / LSQ on the
raw 1280-d features (where faiss can train them on 575 vectors), after PCA-64, and after the weak-tag
ridge map (the simple tag baseline). A model whose report.json exists is not run again.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.results_mirflickr import DATA, REPO, Runner, parse_args

CONFIG = "configs/mirflickr_lite0.yaml"
BITS = (8, 16, 24, 32)
BASELINES = ("pq", "opq", "residual", "lsq")
PROJECTIONS = ("none", "pca", "tags")


# The tag semantics of the recipe (docs/results.md, "what was tried"): a 128-d co-occurrence space whose
# graph enhancement gives the neighbours 0.95 of each tag's vector; configs/mirflickr_lite0.yaml trains
# in it (method.embed_dim: 128) with the additive quantizer's ridge at 1.0 (with 575 training images the
# least-squares solve for M*K = 1,024 codewords is under-determined: the 1e-3 ridge left 0.006-0.011 of
# quantization loss at 32 bits).
TAG_BUILD = ("graph.target_units=1178", "vectors.cooccurrence_dim=128", "graph.mix=0.95")


def models() -> dict[str, list[str]]:
    out = {f"wsdhq-{b}": ["method.name=wsdhq", f"method.quantizer.M={b // 8}"] for b in BITS}
    progressive = "method.quantizer={kind: progressive, M: 4, feature_epochs: 3}"  # L_Q from epoch 3 of 6
    out["wsdhq_progressive"] = ["method.name=wsdhq_progressive", progressive]
    out["dpq-labels"] = ["method.name=dpq", "method.embed_dim=64", progressive]
    return out


class BackboneRunner(Runner):
    def data(self) -> Path:
        images, feats = self.out / "images", self.out / "lite0"
        if not (images / "database" / "manifest.json").is_file():
            self.sh("-m", "shards", "mirflickr-matrix", str(DATA / "subset1000_with_images.npz"), "--out",
                    str(images), "--query-fraction", "0.2", "--train-fraction", "0.8", "--train-needs-tags",
                    "--max-count", "200", "--overwrite")
        if not (feats / "database" / "manifest.json").is_file():
            self.sh("-m", "eval.extract", "--shards", str(images), "--out", str(feats), "--local")
        if not (feats / "tags" / "semantics.json").is_file():
            self.sh("-m", "trainer.tags", "build-matrix", "--npz",
                    str(DATA / "cleared20015_tags1386_labels24.npz"), "--labels-key", "labels",
                    "--out", str(feats / "tags"), *TAG_BUILD)
        return feats

    def model(self, data: Path, seed: int, name: str, overrides: list[str], tags: Path | None = None,
              baselines_on: bool | None = None) -> dict:
        run = f"{name}-s{seed}"
        report = self.out / "reports" / run / "report.json"
        if not report.is_file():
            on = name.startswith("wsdhq-") if baselines_on is None else baselines_on
            self.run_model(run, CONFIG, data / "train", tags or data / "tags", data, seed, overrides,
                           list(BASELINES) if on else [], PROJECTIONS)
        rows = json.loads(report.read_text())["rows"]
        return {f"{r['method']}|{r['scoring']}|{r['bits']}": r["metrics"]["mAP"] for r in rows}


def table(results: dict) -> str:
    """mean ± sample sd over seeds, both conventions; baselines pooled from the WSDHQ runs' reports."""
    seeds = sorted(results)

    def vals(find, conv):
        out = []
        for s in seeds:
            for model, rows in results[s].items():
                v = find(model, rows)
                if v is not None:
                    out.append(v[conv])
                    break
        return out

    def cell(find, conv):
        v = vals(find, conv)
        if not v:
            return "n/a"
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"

    def own(model, bits):
        def find(m, rows):
            if m != model:
                return None
            for key, v in rows.items():
                meth, scoring, b = key.split("|")
                if scoring == "aqd" and b == str(bits) and meth not in BASELINES and "/" not in meth:
                    return v
            return None
        return find

    def feature(model):
        return lambda m, rows: next((v for k, v in rows.items() if k.endswith("|feature|None")
                                     and not k.startswith("inputs")), None) if m == model else None

    def baseline(meth, bits):
        return lambda m, rows: rows.get(f"{meth}|aqd|{bits}") if m == f"wsdhq-{bits}" else None

    inputs_float = lambda m, rows: rows.get("inputs|feature|None") if m == "wsdhq-32" else None  # noqa: E731
    lines = ["| model | 8 bits | 16 bits | 24 bits | 32 bits | float |", "|---|---|---|---|---|---|"]
    for conv in ("skip", "zero"):
        lines.append(f"| **mAP@all, {conv} convention** | | | | | |")
        wsdhq = [cell(own(f"wsdhq-{b}", b), conv) for b in BITS]
        lines.append("| WSDHQ, frozen Lite0 + trained head (one model per length) | " + " | ".join(wsdhq)
                     + f" | {cell(feature('wsdhq-32'), conv)} |")
        for model, label in (("wsdhq_progressive", "WSDHQ-progressive (one model, every prefix)"),
                             ("dpq-labels", "DPQ with the 24 labels (upper reference)")):
            lines.append(f"| {label} | " + " | ".join(cell(own(model, b), conv) for b in BITS)
                         + f" | {cell(feature(model), conv)} |")
        lines.append("| Lite0 features, cosine (no code) | | | | | " + cell(inputs_float, conv) + " |")
        for proj, where in (("", "raw 1280-d"), ("/pca64", "PCA-64"), ("/tags64", "tag-ridge map (weak tags)")):
            for meth in BASELINES:
                name = dict(pq="PQ", opq="OPQ", residual="RQ", lsq="LSQ")[meth]
                lines.append(f"| faiss {name}, Lite0 {where} | "
                             + " | ".join(cell(baseline(meth + proj, b), conv) for b in BITS) + " | |")
    return "\n".join(lines)


def sweep(argv: list[str]) -> int:
    """One variant of the WSDHQ recipe, per seed and length: ``sweep --name V --features DIR [--tags DIR]
    [--bits 16 32] [--seeds 0 1 2] [--baselines] -- [key=value ...]`` (the overrides, after ``--``, go
    to ``trainer.train`` after the config's). Each (seed, length) appends one line to
    ``<out>/sweep.jsonl``: AQD and float mAP@all, both conventions, the worst codebook's live
    codewords after each epoch (the latest update), and with ``--baselines`` every baseline row of
    the report (faiss and tag-ridge on the same features: needed when the features are new)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.results_backbone sweep")
    p.add_argument("--out", default="runs/results_backbone")
    p.add_argument("--name", required=True, help="variant label; runs are <name>-<bits>-s<seed>")
    p.add_argument("--features", required=True, help="features root with train/query/database")
    p.add_argument("--tags", default=None, help="tag semantics artifact (default: <features>/tags)")
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baselines", action="store_true",
                   help="also train the faiss and tag-ridge baselines on these features (new features only)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    r = BackboneRunner((REPO / a.out).resolve())
    feats = (REPO / a.features).resolve()
    tags = (REPO / a.tags).resolve() if a.tags else None
    for seed in a.seeds:
        for bits in a.bits:
            name = f"{a.name}-{bits}"
            rows = r.model(feats, seed, name, ["method.name=wsdhq", f"method.quantizer.M={bits // 8}", *a.overrides],
                           tags=tags, baselines_on=a.baselines)
            own_key = next(k for k in rows if k.split("|")[1] == "aqd" and k.split("|")[2] == str(bits)
                           and "/" not in k.split("|")[0] and k.split("|")[0] not in BASELINES)
            flt_key = next(k for k in rows if k.endswith("|feature|None") and not k.startswith("inputs"))
            own, flt = rows[own_key], rows[flt_key]
            metrics = json.loads((r.out / "runs" / f"{name}-s{seed}" / "final" / "metrics.json").read_text())
            live = [min(m["live_codewords"]) for m in metrics if m.get("live_codewords")]
            line = dict(name=a.name, bits=bits, seed=seed, features=a.features, tags=a.tags,
                        overrides=a.overrides, aqd=own, float=flt, live=live,
                        baselines={k: v for k, v in rows.items() if a.baselines and k not in (own_key, flt_key)})
            with (r.out / "sweep.jsonl").open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"{a.name} {bits} bits seed {seed}: AQD {own['skip']:.4f} float {flt['skip']:.4f} (skip)",
                  flush=True)
    return 0


def codebook_size(argv: list[str]) -> int:
    """4-bit (K=16) against 8-bit (K=256) codebooks at the same bits on the backbone features (issue 18):
    ``codebook-size --features DIR [--bits 16 32 64] [--seeds 0 1 2]``. Per seed: WSDHQ with K=256
    (M = bits/8) and K=16 (M = bits/4) at every length, WSDHQ-progressive at the largest, each trained,
    encoded and evaluated by the product's commands (as ``main``); then
    ``benchmarks.tag_search_mirflickr`` over all of them: image -> image mAP@all beside faiss's own PQ
    at the same M and bits per level (4-bit for K=16) on the input features and on the encoder's
    embeddings, tag -> image, and whether the index (FastScan for K=16) returns the exact top-100."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.results_backbone codebook-size")
    p.add_argument("--out", default="runs/results_backbone")
    p.add_argument("--features", required=True, help="features root with train/query/database (and tags)")
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args(argv)
    r = BackboneRunner((REPO / a.out).resolve())
    feats = (REPO / a.features).resolve()
    top = max(a.bits)
    progressive = "{kind: progressive, M: %d, K: %d, feature_epochs: 3}"
    runs = []
    for seed in a.seeds:
        for k in (256, 16):
            per = 8 if k == 256 else 4
            todo = {f"wsdhq-k{k}-{b}": ["method.name=wsdhq", f"method.quantizer.M={b // per}",
                                        f"method.quantizer.K={k}"] for b in a.bits}
            todo[f"wsdhq_progressive-k{k}-{top}"] = [
                "method.name=wsdhq_progressive", f"method.quantizer={progressive % (top // per, k)}"]
            for name, overrides in todo.items():
                r.model(feats, seed, name, overrides, baselines_on=False)
                run = f"{name}-s{seed}"
                runs += ["--run", run, str(r.out / "runs" / run / "final"), str(r.out / "codes" / run / "query"),
                         str(r.out / "codes" / run / "database")]
    r.sh("-m", "benchmarks.tag_search_mirflickr", "--database-shards", str(feats / "database"),
         "--query-shards", str(feats / "query"), "--train-shards", str(feats / "train"),
         "--out", str(r.out / "codebook_size.json"), *runs)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:
        return sweep(argv[1:])
    if argv[:1] == ["codebook-size"]:
        return codebook_size(argv[1:])
    a = parse_args(argv, __doc__.splitlines()[0], "runs/results_backbone")
    r = BackboneRunner((REPO / a.out).resolve())
    data = r.data()
    results = {}
    for seed in a.seeds:
        results[seed] = {name: r.model(data, seed, name, ov) for name, ov in models().items()
                         if a.models is None or name in a.models}
        (r.out / "results.json").write_text(json.dumps(results, indent=1))
        (r.out / "results.md").write_text(table(results) + "\n")
        print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
