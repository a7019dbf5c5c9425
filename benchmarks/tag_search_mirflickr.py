"""Tag -> image search and 4-bit vs 8-bit codebooks for trained models (docs/results.md).

    .venv/bin/python -m benchmarks.tag_search_mirflickr --database-shards DATA/database \\
        --run NAME CHECKPOINT QUERY_CODES DATABASE_CODES [--run ...] [--out results.json]

Each ``--run`` is a final checkpoint and the code sets ``eval.encode`` wrote with it for the query
and database splits. Per run:

- **tag -> image**, over the database and, with ``--query-shards``, over the query split as a
  held-out database (on MIRFLICKR-1000 every tagged database image also trains, so the database
  row measures how well training tags are fitted, the query row how search generalises to
  unseen images): every merged tag unit carried by at least ``--min-images`` images
  (their raw tags in the database shards, mapped by the checkpoint's tag semantics artifact) is a
  query: its unit embedding, normalised, as ``wsdhq search --tags`` builds it; relevant = the
  database images carrying the unit. The image side never sees tags: codes come from pixels or
  descriptors only. mAP over the whole ranking (AQD over the codes, ties by row) beside: the same
  query against the float embeddings (no quantization), a random ranking (mean of 20 seeded
  permutations), and a bag-of-tags oracle that scores each image by its own tags' normalised mean
  unit embedding (what the encoder is trained to reproduce: the ceiling of this kind of search).
- **image -> image**: ``eval.evaluate`` mAP@all (labels, skip and zero conventions) of the model's
  AQD ranking, beside faiss's unsupervised PQ at the same M and bits per level trained on the
  encoder's database features (4-bit PQ for K=16 runs) and, with ``--train-shards``, on the
  input features (descriptor or backbone ``feat.npy``) of the training split; and whether the index directory
  (``wsdhq index``, FastScan for K=16) returns the exact scan's top-100 for every query.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from eval.baselines import BaselineConfig
from eval.codes import load_code_set
from eval.evaluate import EvaluateConfig, evaluate
from eval.metrics import average_precision, mean_ap
from eval.scoring import AQDSearcher, search_features
from shards import storage


def database_units(shards: str, keys: np.ndarray, sem) -> np.ndarray:
    """(N, T) bool: which tag units each database item (in code set order) carries."""
    from shards.manifest import Manifest
    from shards.reader import iter_samples

    units = {s["__key__"]: sem.unit_ids(s["tags"]) for url in Manifest.load(shards).shard_urls()
             for s in iter_samples(url, fields=["tags.json"])}
    missing = [k for k in keys.tolist() if k not in units]
    if missing:
        raise SystemExit(f"{len(missing)} database keys are not in {shards} (e.g. {missing[0]!r}): "
                         "pass the shard set the database codes were encoded from")
    out = np.zeros((len(keys), sem.T), bool)
    for r, k in enumerate(keys.tolist()):
        out[r, units[k]] = True
    return out


def ranked_map(order: np.ndarray, carry: np.ndarray, queried: np.ndarray) -> float:
    """mAP over the full rankings ``order`` (Q, N) with relevance carry[:, queried[q]]."""
    rel = np.take_along_axis(carry.T[queried], order, axis=1)
    return mean_ap(*average_precision(rel), "skip")


def tag_to_image(meta: dict, db, shards: str, min_images: int, tag_semantics: str | None = None) -> dict:
    from trainer.tags import TagSemantics

    sem = TagSemantics.load(tag_semantics or meta["config"]["data"]["tags"])
    if sem.hash != meta.get("tag_semantics_hash"):
        raise SystemExit(f"tag semantics hash {sem.hash[:12]} is not the checkpoint's")
    carry = database_units(shards, db.keys, sem)
    queried = np.flatnonzero(carry.sum(0) >= min_images)
    v = sem.embeddings[queried]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    n = len(db)
    out = {"units": int(len(queried)), "database": n,
           "images_per_unit_median": float(np.median(carry.sum(0)[queried])) if len(queried) else 0.0}
    _, order = AQDSearcher(db.codebooks, db.codes).search(v, n)
    out["mAP"] = {"model": ranked_map(order, carry, queried)}
    if db.feat is not None:
        out["mAP"]["float_embedding"] = ranked_map(search_features(v, db.feat, n)[1], carry, queried)
    rng = np.random.default_rng(0)
    out["mAP"]["random"] = float(np.mean([ranked_map(np.tile(rng.permutation(n), (len(queried), 1)), carry,
                                                     queried) for _ in range(20)]))
    bag = carry.astype(np.float32) @ sem.embeddings
    norms = np.linalg.norm(bag, axis=1, keepdims=True)
    bag = np.divide(bag, norms, out=np.zeros_like(bag), where=norms > 0)
    oracle = np.argsort(-(v @ bag.T), axis=1, kind="stable")
    out["mAP"]["bag_of_tags_oracle"] = ranked_map(oracle, carry, queried)
    return out


def index_matches_exact_scan(query, db, k: int = 100) -> bool:
    """Whether ``wsdhq index`` + ``IndexSearcher`` rank the query features' top-k exactly as the
    pure-torch exact scan (the reference ``eval.evaluate``'s searcher is tested equal to)."""
    import tempfile

    from eval.index import build_index
    from eval.search import IndexSearcher

    with tempfile.TemporaryDirectory() as tmp:
        build_index(db.url, tmp, log=lambda *_: None)
        s, i = IndexSearcher(tmp).search(query.feat, k)
    s_ref, i_ref = AQDSearcher(db.codebooks, db.codes, "torch").search(query.feat, k)
    return bool(np.array_equal(i, i_ref) and np.allclose(s, s_ref, rtol=1e-5, atol=1e-5))


def shard_features(shards: str) -> tuple[np.ndarray, list[list[str]]]:
    from shards.manifest import Manifest
    from shards.reader import iter_samples

    rows = [s for url in Manifest.load(shards).shard_urls()
            for s in iter_samples(url, fields=["feat.npy", "labels.json"])]
    if not rows or "feat" not in rows[0]:
        raise SystemExit(f"{shards}: no feat.npy (input-feature PQ needs a features-mode shard set)")
    return np.stack([s["feat"] for s in rows]).astype(np.float32), [s["labels"] for s in rows]


def input_feature_pq(train: str, query: str, database: str, m: int, nbits: int) -> dict:
    """mAP@all of faiss PQ (M sub-quantizers of nbits) trained unsupervised on the training split's
    input features (descriptor or backbone feat.npy), the same queries, database and metric code."""
    from eval.baselines import train_baseline
    from eval.codes import label_matrix
    from eval.evaluate import _total_relevant, rank_and_measure
    from shards.manifest import Manifest

    (xt, _), (xq, lq), (xd, ld) = shard_features(train), shard_features(query), shard_features(database)
    names = Manifest.load(query).label_names
    ql, dl = label_matrix(lq, names), label_matrix(ld, names)
    cfg = EvaluateConfig(top_k="all")
    b = train_baseline("pq", xt, xd, xq, m, nbits, BaselineConfig())
    s = AQDSearcher(b.codebooks, b.db_codes)
    metrics, _ = rank_and_measure(lambda sl: s.search(b.pad_queries(xq[sl]), len(xd)), len(xq), ql, dl,
                                  _total_relevant(ql, dl, cfg.db_chunk), len(xd), cfg)
    return metrics["mAP"]


def image_to_image(query, db) -> list[dict]:
    nbits = int(np.log2(db.manifest["K"]))
    cfg = EvaluateConfig(top_k="all", scorings=["aqd"], baselines=BaselineConfig(methods=["pq"]))
    result, _ = evaluate(query, db, cfg, log=lambda *_: None)
    return [{"method": r["method"], "bits": r["bits"], "bits_per_level": nbits, "mAP": r["metrics"]["mAP"]}
            for r in result["rows"]]


def held(r: dict) -> str:
    h = r.get("tag_to_image_held_out")
    if not h:
        return "n/a"
    t = h["mAP"]
    return (f"{h['units']}, {t['model']:.3f}, {t.get('float_embedding', float('nan')):.3f}, {t['random']:.3f}, "
            f"{t['bag_of_tags_oracle']:.3f}")


def markdown(results: list[dict]) -> str:
    lines = ["| run | K | M | bits | tag units | tag->image mAP: model | float embedding | random | "
             "bag-of-tags oracle | held out: units, model, float, random, oracle | "
             "image->image mAP@all (skip): model | faiss PQ same bits |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["tag_to_image"]["mAP"]
        rows = r["image_to_image"]
        for bits in sorted({x["bits"] for x in rows}):
            model = [x for x in rows if x["bits"] == bits and x["method"] != "pq"]
            pq = [x for x in rows if x["bits"] == bits and x["method"] == "pq"]
            lines.append(
                f"| {r['name']} | {r['K']} | {r['M']} | {bits} | {r['tag_to_image']['units']} | "
                + (f"{t['model']:.3f} | {t.get('float_embedding', float('nan')):.3f} | {t['random']:.3f} | "
                   f"{t['bag_of_tags_oracle']:.3f} | {held(r)}" if bits == r["bits"] else "(full code only) | | | |")
                + f" | {model[0]['mAP']['skip']:.3f} | " + (f"{pq[0]['mAP']['skip']:.3f} |" if pq else "n/a |"))
    return "\n".join(lines)


def over_seeds(results: list[dict]) -> str:
    """Mean ± sd over runs named ``<model>-s<seed>`` (full-length code rows only)."""
    import re
    import statistics

    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(re.sub(r"-s\d+$", "", r["name"]), []).append(r)

    def cell(vals: list[float]) -> str:
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.3f}"

    lines = ["| model | K | M | bits | seeds | tag->image mAP (database) | held out | "
             "image->image mAP@all skip | faiss PQ same bits (encoder features) | "
             "faiss PQ same bits (input features) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in groups.items():
        r0 = rs[0]
        full = [[x for x in r["image_to_image"] if x["bits"] == r["bits"]] for r in rs]
        model = [next(x["mAP"]["skip"] for x in f if x["method"] != "pq") for f in full]
        pq = [x["mAP"]["skip"] for f in full for x in f if x["method"] == "pq"]
        held = [r["tag_to_image_held_out"]["mAP"]["model"] for r in rs if r.get("tag_to_image_held_out")]
        inp = [r["input_feature_pq"]["mAP"]["skip"] for r in rs if r.get("input_feature_pq")]
        lines.append(f"| {name} | {r0['K']} | {r0['M']} | {r0['bits']} | {len(rs)} | "
                     f"{cell([r['tag_to_image']['mAP']['model'] for r in rs])} | {cell(held) if held else 'n/a'} | "
                     f"{cell(model)} | {cell(pq) if pq else 'n/a'} | {cell(inp) if inp else 'n/a'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs=4, action="append", required=True,
                   metavar=("NAME", "CHECKPOINT", "QUERY_CODES", "DATABASE_CODES"))
    p.add_argument("--database-shards", required=True, help="the shard set the database codes came from")
    p.add_argument("--query-shards", help="the query split's shard set: tag -> image over it (held out)")
    p.add_argument("--train-shards", help="training split (features mode): faiss PQ at each run's M and "
                                          "bits per level trained on its input features, as a reference")
    p.add_argument("--tag-semantics", help="default: the checkpoint's data.tags")
    p.add_argument("--min-images", type=int, default=5)
    p.add_argument("--out", help="write every number as JSON here")
    a = p.parse_args(argv)
    results = []
    for name, checkpoint, qcodes, dcodes in a.run:
        meta = json.loads(storage.read_bytes(storage.join(checkpoint, "meta.json")))
        query, db = load_code_set(qcodes), load_code_set(dcodes)
        if db.manifest.get("checkpoint_sha256") != query.manifest.get("checkpoint_sha256"):
            raise SystemExit(f"{name}: query and database codes come from different checkpoints")
        res = {"name": name, "checkpoint": checkpoint, "K": db.manifest["K"], "M": db.M,
               "bits": db.manifest["bits"], "method": meta.get("method"),
               "tag_to_image": tag_to_image(meta, db, a.database_shards, a.min_images, a.tag_semantics)}
        if a.query_shards:
            res["tag_to_image_held_out"] = tag_to_image(meta, query, a.query_shards, a.min_images, a.tag_semantics)
        res["image_to_image"] = image_to_image(query, db)
        res["index_top100_equals_exact_scan"] = index_matches_exact_scan(query, db)
        if a.train_shards and a.query_shards:
            nbits = int(np.log2(db.manifest["K"]))
            res["input_feature_pq"] = {"M": db.M, "nbits": nbits, "mAP": input_feature_pq(
                a.train_shards, a.query_shards, a.database_shards, db.M, nbits)}
        results.append(res)
        print(f"{name}: index top-100 equals the exact scan: {res['index_top100_equals_exact_scan']}; "
              f"tag->image {json.dumps(res['tag_to_image'])}; held out "
              f"{json.dumps(res.get('tag_to_image_held_out'))}", flush=True)
    if a.out:
        storage.write_bytes(a.out, (json.dumps(results, indent=1) + "\n").encode("utf-8"))
    print(markdown(results))
    print(over_seeds(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
