"""Encode job throughput and peak memory vs corpus size, ``--local`` and through the Ray actor pool.

    .venv/bin/python -m benchmarks.scale.encode_job [--sizes 10000 100000 1000000] [--ray-sizes ...]

Corpus: ``benchmarks.scale.corpus`` (features mode, 256-d ``feat.npy``, 10,000 samples per shard),
generated once per size under ``--work`` and kept. Checkpoint: ``benchmarks.bench_encode.make_checkpoint``
(WSDHQ, MLP 256 -> 512 -> 64, M=4 x K=256 additive codes, ICM 3 sweeps). Each run is a fresh
process: ``eval.encode.run`` into a fresh output directory; throughput is the job's own progress
rate (model loading excluded; in Ray mode the actor's start and model load are inside it),
end-to-end seconds alongside (Ray start-up included). Peak memory: the job process's
``ru_maxrss``; in Ray mode the driver's, plus the actor process's peak RSS sampled every 0.1 s
(the actor is a Ray worker, not a child the driver waits for, so ``ru_maxrss`` cannot see it).
Also the job process's resident size after its 2nd and after its last shard (``--local``): growth
in between is memory kept per sample, which a start-up peak can hide from ``ru_maxrss``.
"""
from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

from benchmarks.scale.serving import (IMG, by, children_rss_mb, conditions, finish, in_fresh_process, plot_slopes,
                                      report, rss_mb)

FEAT = 256  # benchmarks.bench_encode's MLP input width


def _actor_peak_mb(stop: threading.Event, peak: list[float]) -> None:
    import psutil

    while not stop.is_set():
        for p in psutil.process_iter(["cmdline", "memory_info"]):
            if "ShardEncoder" in " ".join(p.info["cmdline"] or ()) and p.info["memory_info"]:
                peak[0] = max(peak[0], p.info["memory_info"].rss / 2**20)
        stop.wait(0.1)


def encode(checkpoint: str, corpus: str, out: str, mode: str, batch_size: int = 256) -> dict:
    """One encode job (run in a fresh process); mode "local" or "ray" (a 1-actor pool)."""
    from eval.encode import EncodeConfig, run

    lines: list[tuple[str, float, float]] = []  # progress lines (one per shard), this process's and its workers' RSS
    stop, peak = threading.Event(), [0.0]
    sampler = threading.Thread(target=_actor_peak_mb, args=(stop, peak), daemon=True)
    if mode == "ray":
        sampler.start()
    t = time.perf_counter()
    m = run(checkpoint, corpus, out, EncodeConfig(batch_size=batch_size, actors=1, progress_every_s=0),
            local=mode == "local", log=lambda s: lines.append((s, rss_mb(), children_rss_mb())))
    seconds = time.perf_counter() - t
    stop.set()
    shards = [line for line in lines if line[0].startswith("encoded ")]
    rate = float(shards[-1][0].split(", ")[-1].split()[0].replace(",", ""))
    out_bytes = sum(f.stat().st_size for f in Path(out).glob("codes-*.npz"))
    row = {"n": m["total"], "mode": mode, "samples_per_s": rate, "end_to_end_s": round(seconds, 2),
           "code_bytes_per_item": round(out_bytes / m["total"], 1),
           # resident size after the 2nd shard (allocator warmed up) and after the last: a job that
           # keeps anything per sample grows between the two, whatever start-up transient set the peak
           "rss_shard2_mb": round(shards[min(1, len(shards) - 1)][1], 1), "rss_end_mb": round(shards[-1][1], 1),
           # the same for the DataLoader workers, where the reading and decoding happen (--local)
           "workers_rss_shard2_mb": round(shards[min(1, len(shards) - 1)][2], 1),
           "workers_rss_end_mb": round(shards[-1][2], 1)}
    if mode == "ray":
        row["actor_peak_rss_mb"] = round(peak[0], 1)
    return row


def corpus(work: Path, n: int, shard_size: int = 10_000) -> Path:
    """The scale corpus of ``n`` samples (written once, reused across runs)."""
    from benchmarks.scale.corpus import CorpusConfig, write_corpus

    out = work / f"corpus{n}"
    if not (out / "manifest.json").exists():
        r = write_corpus(str(out), n, CorpusConfig(dim=FEAT, shard_size=shard_size), overwrite=True)
        print(f"# corpus {n:,}: {r.shards} shards, {r.bytes_per_sample:.0f} bytes/sample, {r.seconds:.0f}s")
    return out


def main(argv=None) -> None:
    from benchmarks.bench_encode import make_checkpoint

    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000], help="--local runs")
    p.add_argument("--ray-sizes", type=int, nargs="*", default=[10_000, 100_000], help="1-actor Ray pool runs")
    p.add_argument("--work", default="/tmp/wsdhq-scale-encode", help="corpora and checkpoint (kept)")
    p.add_argument("--plot", default=str(IMG / "serve_encode.png"))
    p.add_argument("--rows", help="also write the rows as JSON here")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "ckpt"
    if not (ckpt / "meta.json").exists():
        make_checkpoint(ckpt)
    print(f"# encode job scaling, {conditions()}")
    rows = []
    for mode, sizes in (("local", a.sizes), ("ray", a.ray_sizes)):
        for n in sizes:
            src, out = corpus(work, n), work / f"codes-{mode}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            rows.append(report(in_fresh_process("benchmarks.scale.encode_job:encode", checkpoint=str(ckpt),
                                                corpus=str(src), out=str(out), mode=mode)))
            shutil.rmtree(out, ignore_errors=True)
    finish(rows, a.rows, plot, a.plot)


def plot(rows: list[dict], path: str) -> None:
    series = {}
    for mode, sel in by(rows, "mode").items():
        n = [r["n"] for r in sel]
        series[f"{mode}: end-to-end s"] = (n, [r["end_to_end_s"] for r in sel])
        series[f"{mode}: job peak RSS MB"] = (n, [r["peak_rss_mb"] for r in sel])
        if mode == "ray":
            series["ray: actor peak RSS MB"] = (n, [r["actor_peak_rss_mb"] for r in sel])
    plot_slopes(path, "Encode job (features mode) vs corpus size", "corpus size N (samples)", "seconds / MB",
                series, "cost")

if __name__ == "__main__":
    main()
