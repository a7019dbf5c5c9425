"""Every number of docs/results.md: WSDHQ and its references on real MIRFLICKR-25K (features mode).

    .venv/bin/python -m benchmarks.results_mirflickr [--out runs/results_mirflickr] [--seeds 0 1 2]

Runs the product's own commands, each printed and appended to ``<out>/commands.txt`` as it runs:
``python -m shards mirflickr-matrix ... --features``, ``python -m trainer.tags build-matrix ...``, then
per seed and model ``python -m trainer.train --config configs/mirflickr_real.yaml ...`` (the Ray
Train loop in local mode, ``scaling.num_workers=0``: one process, the same loop as on a cluster,
whose codebook update is the same on 1 or 2 workers, tests/train), ``python -m eval.encode --local`` and
``python -m eval.evaluate``. The unsupervised references (faiss PQ / OPQ / residual / LSQ, random
codes) are trained on the fixed descriptor itself, i.e. the encoder trained without tags: the
stand-in for the paper's ImageNet-pretrained AlexNet features that its PQ/OPQ baselines use.
A model whose report.json exists is not run again; ``<out>/results.{json,md}`` collect everything.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mirflickr25k_real"
CONFIG = "configs/mirflickr_real.yaml"
BITS = (8, 16, 24, 32)
BASELINES = ("pq", "opq", "residual", "lsq", "random")


def models() -> dict[str, list[str]]:
    """Model name -> overrides of configs/mirflickr_real.yaml (bits = 8 M)."""
    out = {}
    for reading in ("sphere", "raw"):
        for bits in BITS:
            out[f"wsdhq-{reading}-{bits}"] = ["method.name=wsdhq", f"method.space={reading}",
                                             f"method.quantizer.M={bits // 8}"]
    progressive = "method.quantizer={kind: progressive, M: 4, feature_epochs: 20}"  # L_Q from epoch 20 of 40
    out["wsdhq_progressive"] = ["method.name=wsdhq_progressive", progressive]
    out["dpq-labels"] = ["method.name=dpq", progressive]
    return out


class Runner:
    def __init__(self, out: Path):
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "commands.txt"

    def sh(self, *args: str) -> None:
        cmd = [sys.executable, *args]
        shown = "python " + " ".join(shlex.quote(a) for a in args)
        print(f"$ {shown}", flush=True)
        with self.log.open("a") as f:
            f.write(shown + "\n")
        t = time.perf_counter()
        # one intra-op thread: these models are tiny, and on a shared 2-core box spinning OpenMP
        # threads made an epoch ~10x slower
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env={"DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                                   **os.environ})
        if done.returncode:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"failed ({done.returncode}): {shown}")
        tail = [line for line in done.stdout.splitlines() if line.strip()][-1:]
        print(f"  ok in {time.perf_counter() - t:.0f}s: {tail[0][:160] if tail else ''}", flush=True)

    def run_model(self, run: str, config: str, train: Path, tags: Path, data: Path, seed: int,
                  overrides: list[str], baselines: list[str], projections: tuple[str, ...]) -> Path:
        """Train ``run`` (local mode) on ``train``, encode ``data``'s splits and evaluate them with the
        faiss ``baselines`` trained on ``train``'s input features; returns the report's path."""
        runs, codes = self.out / "runs", self.out / "codes" / run
        report = self.out / "reports" / run / "report.json"
        self.sh("-m", "trainer.train", "--config", config, f"data.train={train}", f"data.tags={tags}",
                f"storage.path={runs}", f"storage.name={run}", "scaling.num_workers=0", f"training.seed={seed}",
                f"reader.seed={seed}", f"method.seed={seed}", *overrides)
        self.sh("-m", "eval.encode", "--checkpoint", str(runs / run / "final"), "--shards", str(data),
                "--out", str(codes), "--local")
        self.sh("-m", "eval.evaluate", "--query", str(codes / "query"), "--database", str(codes / "database"),
                "--out", str(report.parent), "--train-shards", str(train), "--query-shards", str(data / "query"),
                "--database-shards", str(data / "database"), "top_k=all",
                f"baselines.methods={json.dumps(baselines)}", "baselines.on=inputs", "baselines.normalize=true",
                f"baselines.projections={json.dumps(list(projections))}", f"baselines.seed={seed}")
        return report

    def data(self) -> Path:
        root = self.out / "data"
        if not (root / "database" / "manifest.json").is_file():
            self.sh("-m", "shards", "mirflickr-matrix", str(DATA / "subset1000_with_images.npz"), "--out",
                    str(root), "--features", "--query-fraction", "0.2", "--train-fraction", "0.8",
                    "--train-needs-tags", "--max-count", "200", "--overwrite")
        if not (root / "tags" / "semantics.json").is_file():
            self.sh("-m", "trainer.tags", "build-matrix", "--npz",
                    str(DATA / "cleared20015_tags1386_labels24.npz"), "--labels-key", "labels",
                    "--out", str(root / "tags"), "graph.target_units=1178")
        return root

    def model(self, data: Path, seed: int, name: str, overrides: list[str]) -> dict:
        run = f"{name}-s{seed}"
        report = self.out / "reports" / run / "report.json"
        if not report.is_file():
            runs = self.out / "runs"
            self.sh("-m", "trainer.train", "--config", CONFIG, f"data.train={data / 'train'}",
                    f"data.tags={data / 'tags'}", f"storage.path={runs}", f"storage.name={run}",
                    "scaling.num_workers=0", "storage.checkpoint_every=40", f"training.seed={seed}",
                    f"reader.seed={seed}", f"method.seed={seed}", *overrides)
            for split in ("query", "database"):
                self.sh("-m", "eval.encode", "--checkpoint", str(runs / run / "final"), "--shards",
                        str(data / split), "--out", str(self.out / "codes" / run / split), "--local")
            self.sh("-m", "eval.evaluate", "--query", str(self.out / "codes" / run / "query"), "--database",
                    str(self.out / "codes" / run / "database"), "--out", str(report.parent),
                    "--train-shards", str(data / "train"), "top_k=all", "baselines.methods=[]")
        rows = json.loads(report.read_text())["rows"]
        return {f"{r['scoring']}-{r['bits']}": r["metrics"]["mAP"] for r in rows}

    def descriptor_baselines(self, data: Path, seed: int) -> dict:
        """faiss quantizers and random codes on the fixed descriptor (no network, no tags)."""
        path = self.out / "reports" / f"descriptor-s{seed}.json"
        if path.is_file():
            return json.loads(path.read_text())
        from eval.baselines import BaselineConfig, BaselineError, train_baseline
        from eval.evaluate import EvaluateConfig, _total_relevant, rank_and_measure
        from eval.codes import label_matrix
        from eval.scoring import AQDSearcher, search_features
        from shards.manifest import Manifest
        from shards.reader import iter_samples

        def load(split):
            rows = [s for url in Manifest.load(str(data / split)).shard_urls()
                    for s in iter_samples(url, fields=["feat.npy", "labels.json"])]
            return np.stack([s["feat"] for s in rows]), [s["labels"] for s in rows]

        (xt, _), (xq, lq), (xd, ld) = load("train"), load("query"), load("database")
        names = Manifest.load(str(data / "query")).label_names
        ql, dl = label_matrix(lq, names), label_matrix(ld, names)
        cfg = EvaluateConfig(top_k="all", baselines=BaselineConfig(seed=seed))
        total, k = _total_relevant(ql, dl, cfg.db_chunk), len(xd)
        out = {"feature-None": rank_and_measure(lambda sl: search_features(xq[sl], xd, k, cfg.db_chunk),
                                                len(xq), ql, dl, total, k, cfg)[0]["mAP"]}
        for method in BASELINES:
            for bits in BITS:
                try:
                    b = train_baseline(method, xt, xd, xq, bits // 8, 8, cfg.baselines)
                except BaselineError as exn:  # e.g. more dimensions than training vectors
                    print(f"  descriptor {method} {bits} bits: {exn}", flush=True)
                    continue
                s = AQDSearcher(b.codebooks, b.db_codes, cfg.search_backend, cfg.db_chunk)
                out[f"{method}-{bits}"] = rank_and_measure(lambda sl: s.search(b.pad_queries(xq[sl]), k),
                                                           len(xq), ql, dl, total, k, cfg)[0]["mAP"]
                print(f"  descriptor {method} {bits} bits seed {seed}: mAP@all skip "
                      f"{out[f'{method}-{bits}']['skip']:.4f}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        return out


def table(results: dict) -> str:
    """Markdown: mean ± sample standard deviation over the seeds of mAP@all, both conventions."""
    def cell(key: str, row: str, conv: str) -> str:
        vals = [results[s][key][row][conv] for s in sorted(results) if row in results[s].get(key, {})]
        if not vals:
            return "n/a"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

    lines = ["| model | 8 bits | 16 bits | 24 bits | 32 bits | float features |", "|---|---|---|---|---|---|"]
    seed0 = results[min(results)]
    for conv in ("skip", "zero"):
        lines.append(f"| **mAP@all, {conv} convention** | | | | | |")
        for reading in ("sphere", "raw"):
            cells = [cell(f"wsdhq-{reading}-{b}", f"aqd-{b}", conv) for b in BITS]
            lines.append(f"| WSDHQ, {reading} reading (one model per length) | " + " | ".join(cells)
                         + f" | {cell(f'wsdhq-{reading}-32', 'feature-None', conv)} |")
        for key, label in (("wsdhq_progressive", "WSDHQ progressive (one model, every prefix)"),
                           ("dpq-labels", "DPQ with the 24 labels (upper reference)")):
            if key in seed0:
                lines.append(f"| {label} | " + " | ".join(cell(key, f"aqd-{b}", conv) for b in BITS)
                             + f" | {cell(key, 'feature-None', conv)} |")
        for method in BASELINES:
            label = "random codes" if method == "random" else f"faiss {dict(pq='PQ', opq='OPQ', residual='RQ', lsq='LSQ')[method]}"
            lines.append(f"| {label} on the descriptor (encoder without tags) | "
                         + " | ".join(cell("descriptor", f"{method}-{b}", conv) for b in BITS)
                         + (f" | {cell('descriptor', 'feature-None', conv)} |" if method == "pq" else " | |"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None, description: str, default_out: str) -> argparse.Namespace:
    """The results scripts' shared flags; refuses to start without the real data."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=default_out)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="*", default=None, help="subset of the model names (default: all)")
    a = p.parse_args(argv)
    if not (DATA / "subset1000_with_images.npz").is_file():
        raise SystemExit(f"real MIRFLICKR data not found at {DATA} (../shared/data beside the checkout)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv, __doc__.splitlines()[0], "runs/results_mirflickr")
    r = Runner((REPO / a.out).resolve())
    data = r.data()
    results = {}
    for seed in a.seeds:
        res = {"descriptor": r.descriptor_baselines(data, seed)}
        for name, overrides in models().items():
            if a.models is None or name in a.models:
                res[name] = r.model(data, seed, name, overrides)
        results[seed] = res
        (r.out / "results.json").write_text(json.dumps(results, indent=1))
        (r.out / "results.md").write_text(table(results) + "\n")
        print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
