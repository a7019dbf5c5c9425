"""``python -m eval.evaluate --query <codes> --database <codes> --out <dir>``: retrieval report.

Rows of the report: the model's codes scored by AQD (raw query feature vs database reconstruction),
SQD (query reconstruction vs database reconstruction) and the raw features, at every code prefix
for progressive codes; unsupervised faiss baselines (PQ, OPQ, residual, LSQ, random) trained on the
encoder's features at the same bit budgets; all ranked by the same chunked LUT search and scored
by the same metrics (methods.md §5).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from eval import plots, report
from eval.baselines import BaselineConfig, BaselineError, train_baseline
from eval.codes import CodeSet, CodeSetError, check_compatible, load_code_set
from eval.metrics import CONVENTIONS, TIE_BREAKING, RankingAccumulator
from eval.scoring import AQDSearcher, query_chunks, search_features
from shards import storage
from shards.config import at_least, one_of, require
from shards import config as tconfig


@dataclass
class EvaluateConfig:
    """What to compute; ``top_k`` is an integer or "all" (the whole database, as DPQ on CIFAR)."""

    top_k: int | str = 5000
    precision_at: list[int] = field(default_factory=lambda: [10, 100, 1000])
    scorings: list[str] = field(default_factory=lambda: ["aqd", "sqd", "feature"])
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    headline_convention: str = "skip"
    query_chunk: int = 256
    db_chunk: int = 1 << 18
    search_backend: str = "auto"  # auto | faiss | torch (eval.scoring.AQDSearcher)
    pr_points: int = 40
    grid_queries: int = 4
    grid_top: int = 10

    def __post_init__(self):
        require(self.top_k == "all" or (isinstance(self.top_k, int) and self.top_k >= 1), "top_k",
                f"expected a positive integer or 'all', got {self.top_k!r}")
        require(all(k >= 1 for k in self.precision_at), "precision_at",
                f"every cut-off must be >= 1, got {self.precision_at!r}")
        one_of(self, "scorings", ("aqd", "sqd", "feature"), many=True)
        one_of(self, "headline_convention", sorted(CONVENTIONS))
        one_of(self, "search_backend", ("auto", "faiss", "torch"))
        for key in ("query_chunk", "db_chunk", "grid_top"):
            at_least(self, key, 1)
        at_least(self, "pr_points", 2)
        at_least(self, "grid_queries", 0)


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given; the message names the culprit."""


def _k(cfg: EvaluateConfig, n: int) -> int:
    return n if cfg.top_k == "all" else min(int(cfg.top_k), n)


def shard_keys(shard_set: str, partial: bool = False) -> set[str]:
    """Every key of a shard set (only the small tags.json members are read). A shard that holds
    fewer samples than its manifest would leave the disjointness check blind to the lost keys:
    refused (``IncompleteRead``) unless ``partial``."""
    from shards.manifest import Manifest, check_shards
    from shards.reader import check_complete, iter_set

    m = Manifest.load(shard_set)
    check_shards(m)
    reads: list = []
    keys = {s["__key__"] for s in iter_set(m, ["tags.json"], reads=reads)}
    check_complete(reads, f"evaluate: --train-shards {shard_set}", partial)
    return keys


def check_whole(code_set: CodeSet, partial: bool) -> None:
    """A code set published with ``--partial`` (shards that fell short) is refused unless ``partial``."""
    short = code_set.manifest.get("short_shards") or []
    if short and not partial:
        raise EvaluationError(f"{code_set.url} is a partial code set ({len(short)} shard(s) fell short at encoding, "
                              f"e.g. {short[0]}); pass --partial to evaluate it anyway")


def check_disjoint(query: CodeSet, db: CodeSet, train_keys: set[str] | None) -> dict:
    """Queries must be disjoint from the database and from training (the database may hold train)."""
    both = query.keys[np.isin(query.keys, db.keys)]  # sorted numpy strings: no Python set of 10^7 keys
    if len(both):
        raise EvaluationError(f"{len(both)} query key(s) are also in the database (e.g. {str(min(both))!r}): "
                              f"{query.url} and {db.url} must be disjoint")
    out = {"query_vs_database": "disjoint"}
    if train_keys is not None:
        both = set(query.keys.tolist()) & train_keys
        if both:
            raise EvaluationError(f"{len(both)} query key(s) were used in training (e.g. {sorted(both)[0]!r})")
        out["query_vs_train"] = "disjoint"
    return out


def label_bits(labels: np.ndarray) -> np.ndarray:
    """Multi-hot (N, L) packed into (N, ceil(L/64)) uint64 words: relevance of the top-K items is then
    K word ANDs per query instead of a (Q, K, L) gather."""
    n, l = labels.shape
    packed = np.packbits(np.asarray(labels, dtype=bool), axis=1, bitorder="little")
    words = -(-max(l, 1) // 64)
    out = np.zeros((n, words * 8), np.uint8)
    out[:, :packed.shape[1]] = packed
    return out.view(np.uint64)


def rank_and_measure(search: Callable[[slice], tuple[np.ndarray, np.ndarray]], nq: int, q_labels: np.ndarray,
                     db_labels: np.ndarray, total_relevant: np.ndarray, k: int, cfg: EvaluateConfig,
                     keep_top: int = 0) -> tuple[dict, np.ndarray | None]:
    """Run ``search`` over query chunks and accumulate the metrics; optionally keep the top ids."""
    cut = np.unique(np.round(np.geomspace(1, k, cfg.pr_points)).astype(np.int64))
    acc = RankingAccumulator(k, tuple(cfg.precision_at), cut)
    kept = []
    db_bits, q_bits = label_bits(db_labels), label_bits(q_labels)
    for sl in query_chunks(nq, cfg.query_chunk):
        _, idx = search(sl)
        rel = np.zeros(idx.shape, dtype=bool)
        for w in range(db_bits.shape[1]):  # shared label <=> some 64-label word ANDs non-zero
            rel |= (db_bits[idx, w] & q_bits[sl, w][:, None]) != 0
        acc.add(rel, total_relevant[sl])
        if keep_top:
            kept.append(idx[:, :keep_top])
    return acc.result().to_dict(), (np.concatenate(kept) if kept else None)


def _total_relevant(q_labels: np.ndarray, db_labels: np.ndarray, chunk: int) -> np.ndarray:
    out = np.zeros(len(q_labels), np.int64)
    ql = q_labels.astype(np.float32)
    for sl in query_chunks(len(db_labels), chunk):
        out += ((ql @ db_labels[sl].astype(np.float32).T) > 0).sum(axis=1)
    return out


def evaluate(query: CodeSet, db: CodeSet, cfg: EvaluateConfig, train: CodeSet | None = None,
             train_keys: set[str] | None = None, log=print, inputs: dict | None = None
             ) -> tuple[dict, np.ndarray | None]:
    """All rows of the report (dict) and the top ids of the headline ranking (for the image grid).
    ``inputs``: the shard sets' input features for ``baselines.on=inputs`` (``input_features``)."""
    check_compatible(query, db)
    if not query.has_labels:
        raise EvaluationError(f"query codes {query.url} carry no ground-truth labels: relevance needs them "
                              "(encode a shard set whose samples have labels.json)")
    if not db.has_labels:
        raise EvaluationError(f"database codes {db.url} carry no ground-truth labels")
    disjoint = check_disjoint(query, db, train_keys if train is None else set(train.keys.tolist()))
    names = query.manifest.get("label_names") or sorted(set(query.label_names()) | set(db.label_names()))
    ql, dl = query.label_matrix(names), db.label_matrix(names)
    k = _k(cfg, len(db))
    total = _total_relevant(ql, dl, cfg.db_chunk)
    nbits = int(np.log2(db.manifest["K"]))
    prefixes = list(range(1, db.M + 1)) if db.kind == "progressive" else [db.M]
    cb = db.codebooks
    rows, notes, grid_ids = [], [], None
    qf = query.feat
    if qf is None and ("aqd" in cfg.scorings or cfg.baselines.methods):
        notes.append("query codes carry no features: AQD, feature scoring and baselines skipped "
                     "(re-encode the queries with features on)")

    def add(method, scoring, bits, search, keep=0):
        t = time.perf_counter()
        metrics, top = rank_and_measure(search, len(query), ql, dl, total, k, cfg, keep)
        rows.append({"method": method, "scoring": scoring, "bits": bits, "metrics": metrics,
                     "seconds": round(time.perf_counter() - t, 3)})
        log(f"{method:>10} {scoring:>7} {str(bits):>5} bits  mAP@{cfg.top_k} "
            f"skip={metrics['mAP']['skip']:.4f} zero={metrics['mAP']['zero']:.4f}")
        return top

    model = str(db.meta.get("method") or db.manifest.get("method") or "model")
    for m in prefixes:
        bits = m * nbits
        searcher = AQDSearcher(cb, db.codes[:, :m], cfg.search_backend, cfg.db_chunk)
        if "aqd" in cfg.scorings and qf is not None:
            keep = cfg.grid_top if m == prefixes[-1] else 0
            top = add(model, "aqd", bits, lambda sl, s=searcher: s.search(qf[sl], k), keep)
            if top is not None:
                grid_ids = top
        if "sqd" in cfg.scorings:
            add(model, "sqd", bits,
                lambda sl, s=searcher, m=m: s.search(s.quantizer.decoded(query.codes[sl, :m]), k))
    if "feature" in cfg.scorings and qf is not None:
        if db.feat is None:
            notes.append("database codes carry no features: feature scoring skipped")
        else:
            add(model, "feature", None, lambda sl: search_features(qf[sl], db.feat, k, cfg.db_chunk))
    if cfg.baselines.methods:
        for note in run_baselines(cfg, prefixes, nbits, k, baseline_inputs(cfg, query, db, train, inputs), add, log):
            notes.append(note)
    out = {
        "config": tconfig.to_dict(cfg) | {"top_k": cfg.top_k},
        "conventions": CONVENTIONS, "headline_convention": cfg.headline_convention,
        "tie_breaking": TIE_BREAKING, "k_used": k,
        "query": {"url": query.url, "items": len(query), "source": query.manifest.get("source")},
        "database": {"url": db.url, "items": len(db), "source": db.manifest.get("source")},
        "checkpoint": db.manifest.get("checkpoint"), "checkpoint_sha256": db.manifest.get("checkpoint_sha256"),
        "tag_semantics_hash": db.manifest.get("tag_semantics_hash"),
        "code": {"kind": db.kind, "M": db.M, "K": db.manifest["K"], "bits_per_level": nbits},
        "label_count": len(names), "label_names": names,
        "queries_without_labels": int((ql.sum(axis=1) == 0).sum()),
        "splits": disjoint, "rows": rows, "notes": notes,
    }
    return out, grid_ids


def input_features(shard_set: str, keys: np.ndarray | None = None) -> tuple[np.ndarray, list[list[str]]]:
    """feat.npy (and tags) of a shard set, in the order of ``keys`` (a code set's) when given."""
    from shards.manifest import Manifest
    from shards.reader import iter_samples

    feats, tags, order = [], [], {}
    for url in Manifest.load(shard_set).shard_urls():
        for s in iter_samples(url, fields=["feat.npy", "tags.json"]):
            if "feat" not in s:
                raise EvaluationError(f"baselines.on=inputs: {url}:{s['__key__']} has no feat.npy "
                                      "(input features exist only for features-mode shard sets)")
            order[s["__key__"]] = len(feats)
            feats.append(s["feat"])
            tags.append(s.get("tags", []))
    if keys is not None:
        missing = [str(k) for k in keys if str(k) not in order]
        if missing:
            raise EvaluationError(f"{shard_set}: {len(missing)} key(s) of the code set are not in it "
                                  f"(e.g. {missing[0]!r}): not the shard set these codes were encoded from")
        idx = [order[str(k)] for k in keys]
        feats, tags = [feats[i] for i in idx], [tags[i] for i in idx]
    return np.stack(feats).astype(np.float32), tags


def baseline_inputs(cfg: EvaluateConfig, query: CodeSet, db: CodeSet, train: CodeSet | None,
                    inputs: dict | None) -> dict | None:
    """(train, database, query) features the baselines quantize, and the training tags if known."""
    if cfg.baselines.on == "inputs":
        if not inputs or "query" not in inputs or "database" not in inputs:
            raise EvaluationError("baselines.on=inputs: pass --query-shards and --database-shards "
                                  "(features-mode shard sets holding feat.npy)")
        train_x = inputs.get("train", inputs["database"])
        return {"train": train_x, "database": inputs["database"], "query": inputs["query"],
                "train_tags": inputs.get("train_tags"),
                "source": "train shard set's" if "train" in inputs else "database shard set's"}
    if query.feat is None:
        return None
    base = train.feat if train is not None and train.feat is not None else db.feat
    if base is None:
        return None
    return {"train": base, "database": db.feat, "query": query.feat, "train_tags": None,
            "source": ("train" if train is not None and train.feat is not None else "database")
            + " set's encoder"}


def run_baselines(cfg: EvaluateConfig, prefixes: list[int], nbits: int, k: int, x: dict | None, add, log
                  ) -> list[str]:
    """Rows for every baseline x projection x prefix; returns the notes (what ran, what was skipped)."""
    from eval.baselines import few_points_note, projection

    if x is None:
        return ["no features to train the baselines on: baselines skipped (encode with features on, "
                "or baselines.on=inputs with the shard sets)"]
    bc = cfg.baselines
    notes = [f"baselines trained unsupervised on the {x['source']} features "
             f"({min(len(x['train']), bc.max_train)} sampled){', L2-normalised' if bc.normalize else ''}, "
             "scored by AQD (inner product of the query with the reconstruction)"]
    few = few_points_note(min(len(x["train"]), bc.max_train), nbits, bc.methods)
    if few:
        notes.append(few)
    if bc.normalize:
        x = {**x, **{k: _unit(x[k]) for k in ("train", "database", "query")}}
    if bc.on == "inputs":  # the inputs' own float ranking: the bar any code of them is measured against
        add("inputs", "feature", None, lambda sl: search_features(x["query"][sl], x["database"], k, cfg.db_chunk))
    for proj in bc.projections:
        try:
            a = projection(proj, x["train"], bc.projection_dim, x["train_tags"], bc.ridge)
        except BaselineError as exn:
            notes.append(str(exn))
            continue
        suffix = "" if a is None else f"/{proj}{a.shape[1]}"
        for m in prefixes:
            for method in bc.methods:
                t = time.perf_counter()
                try:
                    b = train_baseline(method, x["train"], x["database"], x["query"], m, nbits, bc, a)
                except BaselineError as exn:
                    notes.append(f"{exn}{suffix}")
                    log(f"baseline {method}{suffix} M={m}: {exn}")
                    continue
                log(f"trained {method}{suffix} M={m} in {time.perf_counter() - t:.1f}s")
                s = AQDSearcher(b.codebooks, b.db_codes, cfg.search_backend, cfg.db_chunk)
                q = x["query"]
                add(method + suffix, "aqd", m * nbits, lambda sl, b=b, s=s, q=q: s.search(b.pad_queries(q[sl]), k))
    return notes


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def shard_images(shard_set: str, keys: set[str], size: int = 96) -> dict[str, np.ndarray]:
    """Thumbnails of the given keys, found by scanning a shard set (image members only)."""
    from shards.images import decode_rgb
    from shards.manifest import Manifest
    from shards.reader import iter_samples
    from shards.schema import IMAGE_EXTS

    found: dict[str, np.ndarray] = {}
    for url in Manifest.load(shard_set).shard_urls():
        if len(found) == len(keys):
            break
        for s in iter_samples(url, fields=IMAGE_EXTS, skips=Counter()):  # features-only sets: no images
            key = s["__key__"]
            if key in keys and key not in found:
                img = decode_rgb(s["image"], f"{url}:{key}")
                img.thumbnail((size, size))
                found[key] = np.asarray(img)
    return found


def write_outputs(result: dict, grid_ids, query: CodeSet, db: CodeSet, out: str, cfg: EvaluateConfig,
                  query_shards: str | None, db_shards: str | None) -> list[str]:
    """report.json, report.md, pr_curves.png, map_vs_bits.png and (with shards) top10_grid.png."""
    local = tempfile.mkdtemp(prefix="wsdhq-eval-") if storage.is_s3(out) else out
    Path(local).mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    best: dict[tuple, dict] = {}  # one PR curve per (method, scoring): its longest code
    for r in rows:
        key = (r["method"], r["scoring"])
        if key not in best or (r["bits"] or 0) > (best[key]["bits"] or 0):
            best[key] = r
    plots.pr_curves(list(best.values()), os.path.join(local, "pr_curves.png"),
                    f"PR over rank cut-offs 1..{result['k_used']} (highest bits per method)")
    plots.map_vs_bits(rows, os.path.join(local, "map_vs_bits.png"), cfg.headline_convention, str(cfg.top_k))
    files = ["pr_curves.png", "map_vs_bits.png"]
    if grid_ids is not None and query_shards and db_shards and cfg.grid_queries > 0:
        labelled = [i for i in range(len(query)) if query.labels_of(i)][: cfg.grid_queries]
        qkeys = {str(query.keys[i]) for i in labelled}
        dkeys = {str(db.keys[j]) for i in labelled for j in grid_ids[i]}
        qimg, dimg = shard_images(query_shards, qkeys), shard_images(db_shards, dkeys)
        missing = (qkeys - set(qimg)) | (dkeys - set(dimg))
        if missing:
            result["notes"].append(f"top-10 grid skipped: {len(missing)} image(s) not found in the shard sets "
                                   f"(e.g. {sorted(missing)[0]!r})")
        else:
            qset = [set(query.labels_of(i)) for i in labelled]
            plots.retrieval_grid(
                [qimg[str(query.keys[i])] for i in labelled],
                [[dimg[str(db.keys[j])] for j in grid_ids[i]] for i in labelled],
                [[bool(qset[n] & set(db.labels_of(j))) for j in grid_ids[i]] for n, i in enumerate(labelled)],
                [f"{query.keys[i]}: {', '.join(query.labels_of(i))}" for i in labelled],
                os.path.join(local, "top10_grid.png"))
            files.append("top10_grid.png")
    report.write(result, out)
    if local != out:
        for name in files:
            storage.upload_file(os.path.join(local, name), storage.join(out, name))
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--query", required=True, help="query code set (dir or s3:// prefix)")
    p.add_argument("--database", required=True, help="database code set")
    p.add_argument("--out", required=True, help="report directory (local or s3://)")
    p.add_argument("--train", help="train code set: baselines train on its features; keys checked disjoint")
    p.add_argument("--train-shards", help="train shard set: query keys are checked disjoint from it (and "
                   "with baselines.on=inputs, the baselines train on its features and tags)")
    p.add_argument("--query-shards", help="query shard set (images for the top-10 grid)")
    p.add_argument("--database-shards", help="database shard set (images for the top-10 grid)")
    p.add_argument("--config", help="YAML with EvaluateConfig fields")
    p.add_argument("--partial", action="store_true",
                   help="accept code sets / shard sets that lost samples at shard level (the report is then partial)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. top_k=all baselines.methods=[pq]")
    a = p.parse_args(argv)
    try:
        cfg = tconfig.load(EvaluateConfig, a.config, a.overrides)
        query, db = load_code_set(a.query), load_code_set(a.database)
        train = load_code_set(a.train) if a.train else None
        for cs in (query, db) + ((train,) if train is not None else ()):
            check_whole(cs, a.partial)
        for shard_set in (a.query_shards, a.database_shards):
            if shard_set:  # the grid's images: a missing or changed shard is refused before any work
                from shards.manifest import Manifest, check_shards

                check_shards(Manifest.load(shard_set))
        train_keys = shard_keys(a.train_shards, a.partial) if a.train_shards else None
        inputs = None
        if cfg.baselines.on == "inputs" and cfg.baselines.methods and a.query_shards and a.database_shards:
            inputs = {"query": input_features(a.query_shards, query.keys)[0],
                      "database": input_features(a.database_shards, db.keys)[0]}
            if a.train_shards:
                inputs["train"], inputs["train_tags"] = input_features(a.train_shards)
        result, grid = evaluate(query, db, cfg, train, train_keys, inputs=inputs)
        for cs in (query, db):
            if cs.manifest.get("short_shards"):
                result["notes"].append(f"PARTIAL: {cs.url} lost samples at encoding: {cs.manifest['short_shards']}")
        files = write_outputs(result, grid, query, db, a.out, cfg, a.query_shards, a.database_shards)
    except (tconfig.ConfigError, CodeSetError, EvaluationError, ValueError, OSError) as exn:
        # ManifestError, IncompleteRead, BaselineError are ValueErrors; storage errors OSErrors
        print(f"evaluate: error: {exn}", file=sys.stderr)
        return 2
    print(f"wrote report.json, report.md, {', '.join(files)} to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
