"""How the data-path stages' time and memory grow with corpus size N: one measurement per fresh process.

    .venv/bin/python -m benchmarks.scale.data_stages run --stages write read tags vocab train update \
        [--ns 10000 100000 1000000] [--work /tmp/scale-data] [--results docs/img/scaling/data_results.json]
    .venv/bin/python -m benchmarks.scale.data_stages plot [--results ...]      # tables + docs/img/scaling/data_*.png
    .venv/bin/python -m benchmarks.scale.data_stages point <stage> --n N ...    # one point, one JSON line

Every point runs in its own subprocess (``point``) so its peak RSS (``ru_maxrss``) is its own: stages
do not inherit each other's high-water marks. ``rss_base`` is the peak after imports, just before the
stage's work starts; ``rss_peak - rss_base`` is what the stage itself added. Corpora come from
``benchmarks.scale.corpus`` (synthetic features-mode samples written by the product's writer) and are
kept under ``--work`` between stages; ``run`` appends each point to ``--results`` as it finishes, so an
interrupted run keeps what it measured. Stages:

* ``write``: ``write_corpus`` (the product's ``ShardSetWriter``) vs ``write_plain`` (the same encoded
  samples through ``tarfile`` with integer mtimes, no manifest or checksums), samples/s, MB/s, bytes/sample;
* ``read``: ``read_plain`` (``benchmarks.bench_shards.plain_tar``: every tar member read, no decode) vs
  ``read_samples`` (``shards.reader.iter_samples``) vs ``read_loader`` (``make_loader``, features_only,
  eval mode, batches of 256);
* ``tags``: ``trainer.tags.build.count_shards`` (both counting passes) in-process and with 2 Ray tasks;
  ``vocab``: the same in-process at fixed N over corpora with vocabularies 10^3, 10^4, 10^5;
* ``train``: ``trainer.train.build_trainer(...).fit()`` in features mode (MLP encoder), 1 and 2 Ray
  workers, 2 epochs with a codebook update after each; epoch time, update time and its parts;
* ``update``: ``Method.codebook_update`` alone (ICM encode + statistics + solve, one process) on
  embeddings of the corpus features (one thread, as a Ray worker), vs N and M.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.scale.corpus import CorpusConfig, CorpusModel, write_corpus

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "img" / "scaling" / "data_results.json"
K = 256
SHARD_SIZE = 5000  # samples per shard: 2 shards at N = 10^4 (one per Ray worker), 200 at 10^6


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus_dir(work: str, n: int, vocab: int) -> str:
    return str(Path(work) / f"n{n}_v{vocab}")


def shard_urls(corpus: str) -> list[str]:
    from shards.manifest import Manifest

    return Manifest.load(corpus).shard_urls()


def corpus_bytes(corpus: str) -> int:
    from shards.manifest import Manifest

    return sum(e.bytes for e in Manifest.load(corpus).shards)


# --- one point each; called in a fresh process by `point` -------------------------------------------

def point_write(n: int, corpus: str, vocab: int, chunk: int) -> dict:
    t = time.perf_counter()
    r = write_corpus(corpus, n, CorpusConfig(vocab=vocab, shard_size=SHARD_SIZE, chunk=chunk), overwrite=True)
    return {"seconds": time.perf_counter() - t, "samples": n, "bytes": r.bytes, "shards": r.shards}


def point_write_plain(n: int, corpus: str, vocab: int) -> dict:
    """The same samples encoded the same way, written by a bare ``tarfile`` loop (the baseline)."""
    from shards.schema import encode_sample

    cfg = CorpusConfig(vocab=vocab, shard_size=SHARD_SIZE)
    model = CorpusModel(cfg)
    out = Path(tempfile.mkdtemp(prefix="plain-write-", dir=Path(corpus).parent))
    t = time.perf_counter()
    tar, nbytes = None, 0
    for start, cls, feat, tags in model.chunks(n):
        for i in range(len(cls)):
            if (start + i) % cfg.shard_size == 0:
                nbytes += _close(tar)
                name = out / f"shard-{(start + i) // cfg.shard_size:06d}.tar"
                tar = tarfile.open(name, "w", format=tarfile.USTAR_FORMAT)
            c = int(cls[i])
            sample = encode_sample(f"s{start + i:010d}", model.swatches[c], "png", tags[i], [f"c{c}"], feat=feat[i])
            key = sample.pop("__key__")
            for ext, data in sorted(sample.items()):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    nbytes += _close(tar)
    seconds = time.perf_counter() - t
    for f in out.iterdir():
        f.unlink()
    out.rmdir()
    return {"seconds": seconds, "samples": n, "bytes": nbytes}


def _close(tar) -> int:
    if tar is None:
        return 0
    tar.close()
    return os.path.getsize(tar.name)


def point_read(n: int, corpus: str, path: str) -> dict:
    from benchmarks.bench_shards import plain_tar, reader_samples

    urls = shard_urls(corpus)
    t = time.perf_counter()
    if path == "plain":
        count = plain_tar(urls, decode=False, size=0)
    elif path == "samples":
        count = reader_samples(urls)
    else:
        from shards.reader import ReaderConfig, make_loader

        cfg = ReaderConfig(batch_size=256, features_only=True, num_workers=0)
        count = sum(len(b["key"]) for b in make_loader(corpus, cfg, train=False))
    return {"seconds": time.perf_counter() - t, "samples": count, "bytes": corpus_bytes(corpus)}


def point_tags(n: int, corpus: str, tasks: int, label_sample: int | None) -> dict:
    from trainer.tags.build import TagConfig, count_shards

    urls = shard_urls(corpus)
    if tasks:
        import ray

        ray.init(num_cpus=tasks, include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    cfg = TagConfig(num_tasks=tasks) if label_sample is None else TagConfig(num_tasks=tasks, label_sample=label_sample)
    counts = count_shards(urls, cfg)
    seconds = time.perf_counter() - t
    if tasks:
        ray.shutdown()
    return {"seconds": seconds, "samples": counts.stats["images"], "bytes": corpus_bytes(corpus),
            "raw_tags": counts.stats["raw_tags"],
            "vocab_tags": counts.stats["vocab_tags"], "cooc_nnz": int(counts.cooc.nnz)}


def point_train(n: int, corpus: str, tags: str, workers: int, storage: str, M: int, epochs: int = 2) -> dict:
    import ray

    from shards import config as config_lib
    from trainer.config import RunConfig
    from trainer.tags import TagSemantics
    from trainer.train import build_trainer

    dim = TagSemantics.load(tags).dim
    cfg = config_lib.from_dict(RunConfig, {
        "data": {"train": corpus, "tags": tags},
        "reader": {"batch_size": 256, "features_only": True, "num_workers": 0, "shuffle_buffer": 1000},
        "encoder": {"kind": "mlp", "in_features": CorpusConfig().dim, "hidden": 256},
        "method": {"embed_dim": dim, "M": M, "K": K, "update_every": 1},
        "training": {"epochs": epochs},
        "scaling": {"num_workers": workers, "collective_timeout_s": 1800},
        "storage": {"path": storage, "name": f"n{n}_w{workers}_m{M}_e{epochs}"},
    })
    ray.init(num_cpus=max(2, workers), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    t = time.perf_counter()
    result = build_trainer(cfg).fit()
    wall = time.perf_counter() - t
    with result.checkpoint.as_directory() as d:
        hist = json.loads((Path(d) / "metrics.json").read_text())
    ray.shutdown()
    keep = ("epoch", "samples", "epoch_seconds", "samples_per_s", "data_wait_fraction",
            "codebook_update_seconds", "codebook_embed_seconds")
    # rows before commit "EpochClock.stop" have the update inside epoch_seconds (the report subtracts it)
    return {"seconds": wall, "samples": n, "epochs": [{k: m[k] for k in keep} for m in hist],
            "epoch_seconds_include_update": False}


def point_update(n: int, M: int, repeats: int = 2) -> dict:
    """``Method.codebook_update`` on N embeddings of the corpus features (untrained MLP), after the
    k-means initialisation (not timed): the steady-state update of one process with one thread,
    without the embed pass (best of ``repeats``)."""
    import torch

    from trainer.encoders import EncoderConfig
    from trainer.methods import method_config, build_method

    torch.manual_seed(0)
    torch.set_num_threads(1)  # as in a Ray Train worker (one CPU); 2 threads on 2 loaded cores ran 2.7x slower
    cfg = CorpusConfig()
    dim = 50
    V = torch.nn.functional.normalize(torch.randn(64, dim), dim=1)
    method = build_method(method_config(embed_dim=dim, M=M, K=K), EncoderConfig(kind="mlp", in_features=cfg.dim), V)
    with torch.no_grad():
        x = torch.cat([method.embed(torch.from_numpy(feat)) for _, _, feat, _ in CorpusModel(cfg).chunks(n)])
    method.codebook_update(x)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        info = method.codebook_update(x)
        best = min(best, time.perf_counter() - t)
    return {"seconds": best, "samples": n, "M": M, "info": {k: v for k, v in info.items()
                                                          if isinstance(v, (int, float))}}


def point(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="data_stages point")
    ap.add_argument("stage", choices=("write", "write_plain", "read", "tags", "train", "update"))
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--corpus", default="")
    ap.add_argument("--vocab", type=int, default=CorpusConfig().vocab)
    ap.add_argument("--path", choices=("plain", "samples", "loader"), default="samples")
    ap.add_argument("--chunk", type=int, default=CorpusConfig().chunk, help="write: samples generated at once")
    ap.add_argument("--tasks", type=int, default=0)
    ap.add_argument("--label-sample", type=int, default=None, help="tags: TagConfig.label_sample (its default)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--M", type=int, default=2)
    ap.add_argument("--tags", default="")
    ap.add_argument("--storage", default="")
    ap.add_argument("--epochs", type=int, default=2, help="train: epochs (the last one is reported)")
    a = ap.parse_args(argv)
    base = rss_mib()
    if a.stage == "write":
        r = point_write(a.n, a.corpus, a.vocab, a.chunk)
    elif a.stage == "write_plain":
        r = point_write_plain(a.n, a.corpus, a.vocab)
    elif a.stage == "read":
        r = point_read(a.n, a.corpus, a.path)
    elif a.stage == "tags":
        r = point_tags(a.n, a.corpus, a.tasks, a.label_sample)
    elif a.stage == "train":
        r = point_train(a.n, a.corpus, a.tags, a.workers, a.storage, a.M, a.epochs)
    else:
        r = point_update(a.n, a.M)
    return {"stage": a.stage, "n": a.n, "vocab": a.vocab, "path": a.path, "tasks": a.tasks, "workers": a.workers,
            "M": a.M, **r, "rss_base_mib": base, "rss_peak_mib": rss_mib(), "load": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_point(args: list[str], timeout: float | None = None) -> dict:
    """One ``point`` in a fresh interpreter; its JSON line back (the child's stderr on failure)."""
    cmd = [sys.executable, "-m", "benchmarks.scale.data_stages", "point", *map(str, args)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=Path(__file__).resolve().parents[2])
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --- the driver --------------------------------------------------------------------------------------

def _record(results: Path, row: dict) -> None:
    rows = json.loads(results.read_text()) if results.is_file() else []
    rows.append(row)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(rows, indent=1))
    keys = ("stage", "n", "vocab", "path", "tasks", "workers", "M", "seconds", "rss_peak_mib", "load")
    print(" ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys), flush=True)


def _ensure_corpus(work: str, n: int, vocab: int, results: Path) -> str:
    corpus = corpus_dir(work, n, vocab)
    if not Path(corpus, "manifest.json").is_file():
        _record(results, run_point(["write", "--n", n, "--corpus", corpus, "--vocab", vocab]))
    return corpus


def build_tags(shards: str, out: str) -> None:
    """The tag semantics artifact the train points use (configs/tags_demo.yaml over ``shards``)."""
    subprocess.run([sys.executable, "-m", "trainer.tags", "build", "--shards", shards, "--out", out,
                    "--config", "configs/tags_demo.yaml", "num_tasks=0"], check=True,
                   capture_output=True, cwd=Path(__file__).resolve().parents[2])


def measure(a: argparse.Namespace) -> None:
    results, V = Path(a.results), CorpusConfig().vocab
    Path(a.work).mkdir(parents=True, exist_ok=True)
    for stage in a.stages:
        if stage == "write":
            for n in a.ns:
                corpus = corpus_dir(a.work, n, V)
                _record(results, run_point(["write", "--n", n, "--corpus", corpus]))
                _record(results, run_point(["write_plain", "--n", n, "--corpus", corpus]))
        elif stage == "read":
            for n in a.ns:
                corpus = _ensure_corpus(a.work, n, V, results)
                for _ in range(a.repeats if n < 10**6 else 1):  # plain and reader alternate
                    for path in ("plain", "samples", "loader") if n <= a.samples_max_n else ("plain", "loader"):
                        _record(results, run_point(["read", "--n", n, "--corpus", corpus, "--path", path]))
        elif stage == "tags":
            for n in a.tags_ns:
                corpus = _ensure_corpus(a.work, n, V, results)
                for tasks in (0, 2):
                    if tasks == 0 or n <= a.ray_max_n:
                        _record(results, run_point(["tags", "--n", n, "--corpus", corpus, "--tasks", tasks]))
        elif stage == "vocab":
            for vocab in a.vocabs:
                corpus = _ensure_corpus(a.work, a.vocab_n, vocab, results)
                _record(results, run_point(["tags", "--n", a.vocab_n, "--corpus", corpus, "--vocab", vocab]))
        elif stage == "train":
            tags = str(Path(a.work) / "tags")
            if not Path(tags, "semantics.json").is_file():
                build_tags(_ensure_corpus(a.work, min(a.train_ns), V, results), tags)
            for n in a.train_ns:
                corpus = _ensure_corpus(a.work, n, V, results)
                for w in a.train_workers:
                    _record(results, run_point(["train", "--n", n, "--corpus", corpus, "--tags", tags,
                                                "--workers", w, "--storage", str(Path(a.work) / "runs"),
                                                "--epochs", a.train_epochs]))
        elif stage == "update":
            for M in a.Ms:
                for n in a.update_ns:
                    _record(results, run_point(["update", "--n", n, "--M", M]))


# --- tables and plots --------------------------------------------------------------------------------

def _best(rows: list[dict], **match) -> dict[int, dict]:
    """The fastest row per N among those matching (best of the repeats)."""
    out: dict[int, dict] = {}
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            if r["n"] not in out or r["seconds"] < out[r["n"]]["seconds"]:
                out[r["n"]] = r
    return dict(sorted(out.items()))


def _series(best: dict[int, dict], value) -> tuple[list[int], list[float]]:
    return list(best), [value(r) for r in best.values()]


def _added(r: dict) -> float:
    return max(r["rss_peak_mib"] - r["rss_base_mib"], 0.1)


def report(results: Path, img: Path) -> None:
    """Markdown tables (stdout) and log-log plots of every stage found in ``results``."""
    from benchmarks.scale.loglog import fit_slope, plot_loglog

    rows = json.loads(results.read_text())
    V = CorpusConfig().vocab
    img.mkdir(parents=True, exist_ok=True)
    secs = lambda r: r["seconds"]  # noqa: E731
    sections = {
        "write": {"shard writer (write_corpus)": _best(rows, stage="write", vocab=V),
                  "plain tarfile, integer mtime": _best(rows, stage="write_plain")},
        "read": {f"{name}": _best(rows, stage="read", path=p)
                 for p, name in (("plain", "plain tarfile loop"), ("samples", "reader iter_samples"),
                                 ("loader", "reader make_loader (features_only)"))},
        "tags": {"count_shards in-process": _best(rows, stage="tags", tasks=0, vocab=V),
                 "count_shards, 2 Ray tasks": _best(rows, stage="tags", tasks=2, vocab=V)},
    }
    for stage, series in sections.items():
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        print(f"\n### {stage}\n")
        print("| path | N | seconds | samples/s | MB/s | bytes/sample | peak RSS MiB | added by stage MiB | load |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, best in series.items():
            for n, r in best.items():
                mb = r.get("bytes", 0)
                print(f"| {name} | {n:,} | {r['seconds']:.2f} | {r['samples'] / r['seconds']:,.0f} | "
                      f"{mb / r['seconds'] / 1e6:.1f} | {mb / max(r['samples'], 1):,.0f} | "
                      f"{r['rss_peak_mib']:.0f} | {_added(r):.1f} | {r['load']:.1f} |")
        print("\nslopes (time; added RSS): " + "; ".join(
            f"{name} {_slope(fit_slope, *_series(b, secs))}; {_slope(fit_slope, *_series(b, _added))}"
            for name, b in series.items()))
        print("at 10^9 samples, linear from the largest N measured (one process): " + "; ".join(
            f"{name} {b[max(b)]['seconds'] * 1e9 / max(b) / 3600:,.0f} h" for name, b in series.items()))
        plot_loglog(str(img / f"data_{stage}.png"), f"{stage}: time vs N", "N (samples)", "seconds",
                    {name: _series(b, secs) for name, b in series.items()})
        plot_loglog(str(img / f"data_{stage}_rss.png"), f"{stage}: memory added by the stage vs N", "N (samples)",
                    "peak RSS above import baseline (MiB)", {name: _series(b, _added) for name, b in series.items()})
    _report_ratio(rows)
    _report_vocab(rows, img, fit_slope, plot_loglog)
    _report_train(rows, img, plot_loglog)
    _report_update(rows, img, plot_loglog)


def _slope(fit, ns, ys) -> str:
    try:
        return f"{fit(ns, ys)[0]:.2f}"
    except ValueError:
        return "n/a"


def _report_ratio(rows: list[dict]) -> None:
    plain = _best(rows, stage="read", path="plain")
    for p in ("samples", "loader"):
        reader = _best(rows, stage="read", path=p)
        ratios = [f"N={n:,}: {plain[n]['seconds'] / r['seconds']:.2f}" for n, r in reader.items() if n in plain]
        if ratios:
            print(f"read throughput {p} / plain: " + ", ".join(ratios))
    write, plain_w = _best(rows, stage="write", vocab=CorpusConfig().vocab), _best(rows, stage="write_plain")
    ratios = [f"N={n:,}: {plain_w[n]['seconds'] / r['seconds']:.2f} (bytes {r['bytes'] / plain_w[n]['bytes']:.2f}x)"
              for n, r in write.items() if n in plain_w]
    if ratios:
        print("write throughput writer / plain: " + ", ".join(ratios))


def _report_vocab(rows: list[dict], img: Path, fit_slope, plot_loglog) -> None:
    by_v: dict[int, dict] = {}
    ns = {r["n"] for r in rows if r["stage"] == "tags" and r["tasks"] == 0 and r["vocab"] != CorpusConfig().vocab}
    if not ns:
        return
    n = max(ns)
    for r in rows:
        if r["stage"] == "tags" and r["tasks"] == 0 and r["n"] == n:
            if r["vocab"] not in by_v or r["seconds"] < by_v[r["vocab"]]["seconds"]:
                by_v[r["vocab"]] = r
    by_v = dict(sorted(by_v.items()))
    print(f"\n### tag counting vs vocabulary (N = {n:,}, in-process)\n")
    print("| vocabulary V | raw tags seen | vocab tags (min_count) | co-occurrence nnz | seconds | peak RSS MiB | "
          "added MiB | load |")
    print("|---|---|---|---|---|---|---|---|")
    for v, r in by_v.items():
        print(f"| {v:,} | {r['raw_tags']:,} | {r['vocab_tags']:,} | {r['cooc_nnz']:,} | {r['seconds']:.2f} | "
              f"{r['rss_peak_mib']:.0f} | {_added(r):.1f} | {r['load']:.1f} |")
    vs = list(by_v)
    print(f"slopes vs V: time {_slope(fit_slope, vs, [r['seconds'] for r in by_v.values()])}, added RSS "
          f"{_slope(fit_slope, vs, [_added(r) for r in by_v.values()])}")
    plot_loglog(str(img / "data_tags_vocab.png"), f"tag counting vs vocabulary (N = {n:,})", "vocabulary V",
                "seconds / MiB", {"seconds": (vs, [r["seconds"] for r in by_v.values()]),
                                  "RSS added (MiB)": (vs, [_added(r) for r in by_v.values()])})


def _report_train(rows: list[dict], img: Path, plot_loglog) -> None:
    train = [r for r in rows if r["stage"] == "train"]
    if not train:
        return
    print("\n### training (features mode, MLP, M=2 K=256, batch 256, update after each epoch; the last epoch)\n")
    print("| N | workers | epoch | training pass s | samples/s | data-wait | update s | of it embed s | "
          "ICM+all-reduce+solve s | update share | fit() wall s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    series: dict[str, tuple[list, list]] = {}
    for w in sorted({r["workers"] for r in train}):
        best = _best(train, workers=w)
        for n, r in best.items():
            e = r["epochs"][-1]
            up, emb, pass_s = e["codebook_update_seconds"], e["codebook_embed_seconds"], _pass_seconds(r)
            print(f"| {n:,} | {w} | {e['epoch'] + 1} of {len(r['epochs'])} | {pass_s:.2f} | "
                  f"{e['samples'] / pass_s:,.0f} | "
                  f"{100 * e['data_wait_fraction'] * e['epoch_seconds'] / pass_s:.0f}% | {up:.2f} | {emb:.2f} | "
                  f"{up - emb:.2f} | {100 * up / (up + pass_s):.1f}% ({100 * (up - emb) / (up + pass_s):.1f}% "
                  f"without embed) | {r['seconds']:.1f} | {r['load']:.1f} |")
        series[f"epoch, {w} worker(s)"] = _series(best, _pass_seconds)
        series[f"update, {w} worker(s)"] = _series(best, lambda r: r["epochs"][-1]["codebook_update_seconds"])
    plot_loglog(str(img / "data_train.png"), "training epoch and codebook update vs N", "N (samples)", "seconds",
                series)


def _pass_seconds(r: dict) -> float:
    """The last epoch's training pass alone: older rows counted the codebook update into it."""
    e = r["epochs"][-1]
    return e["epoch_seconds"] - (e["codebook_update_seconds"] if r.get("epoch_seconds_include_update", True) else 0)


def _report_update(rows: list[dict], img: Path, plot_loglog) -> None:
    up = [r for r in rows if r["stage"] == "update"]
    if not up:
        return
    Ms, ns = sorted({r["M"] for r in up}), sorted({r["n"] for r in up})
    print("\n### codebook update alone (ICM + statistics + solve, 1 process, K=256), seconds\n")
    print("| M \\ N | " + " | ".join(f"{n:,}" for n in ns) + " | peak RSS MiB at largest N |")
    print("|---" * (len(ns) + 2) + "|")
    series = {}
    for M in Ms:
        best = _best(up, M=M)
        print(f"| {M} | " + " | ".join(f"{best[n]['seconds']:.2f}" if n in best else "-" for n in ns) +
              f" | {best[max(best)]['rss_peak_mib']:.0f} |")
        series[f"M={M}"] = _series(best, lambda r: r["seconds"])
    slopes = plot_loglog(str(img / "data_update.png"), "codebook update alone vs N", "N (samples)", "seconds", series)
    print("slopes vs N: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["point"]:
        print(json.dumps(point(argv[1:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("run", "plot"))
    ap.add_argument("--stages", nargs="+", default=["write", "read", "tags", "vocab", "train", "update"])
    ap.add_argument("--ns", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    ap.add_argument("--repeats", type=int, default=2, help="read: best of this many below N = 10^6")
    ap.add_argument("--samples-max-n", type=int, default=10**5, help="largest N for the iter_samples read path")
    ap.add_argument("--tags-ns", type=int, nargs="+", default=[10**4, 3 * 10**4, 10**5])
    ap.add_argument("--ray-max-n", type=int, default=10**5, help="largest N for the Ray tag counting point")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[10**3, 10**4, 10**5])
    ap.add_argument("--vocab-n", type=int, default=3 * 10**4)
    ap.add_argument("--train-ns", type=int, nargs="+", default=[10**4, 3 * 10**4, 10**5])
    ap.add_argument("--train-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--train-epochs", type=int, default=2,
                    help="the last epoch is reported; with 1, its update includes the k-means start")
    ap.add_argument("--update-ns", type=int, nargs="+", default=[10**4, 10**5, 3 * 10**5])
    ap.add_argument("--Ms", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--work", default="/tmp/scale-data")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--img", default=str(RESULTS.parent))
    a = ap.parse_args(argv)
    if a.command == "run":
        measure(a)
    report(Path(a.results), Path(a.img))
    return 0


if __name__ == "__main__":
    sys.exit(main())
