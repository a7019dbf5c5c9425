"""What per-sample accounting costs the shard reader: ``shards.reader.raw_samples`` (a hook call per
tar member, every sample held to its manifest count) vs webdataset's bare ``url_opener ->
tar_file_expander -> group_by_keys`` over the same shards, alternating, best of ``--repeats``.

    .venv/bin/python -m benchmarks.bench_accounting [--repeats 15]

Data: the database split of the 1000 real MIRFLICKR thumbnails (../shared/data/mirflickr25k_real)
converted to shards of 250; no decode on either side.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter

from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from benchmarks.bench_shards import REAL
from shards.converters.mirflickr import convert_matrix
from shards.manifest import Manifest
from shards.reader import raw_samples
from shards.writer import ShardingConfig


def bare(urls: list[str]) -> int:
    n = 0
    for u in urls:
        keep_going = lambda _exn: True  # noqa: E731
        for _ in group_by_keys(tar_file_expander(url_opener([{"url": u}], handler=keep_going),
                                                 handler=keep_going), handler=keep_going):
            n += 1
    return n


def accounted(urls: list[str], counts: list[int]) -> int:
    n = 0
    for u, c in zip(urls, counts):
        for _ in raw_samples(u, Counter(), None, c):
            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsdhq-bench-acct-") as root:
        convert_matrix(str(REAL), root, ShardingConfig(max_count=250), None, True)
        m = Manifest.load(f"{root}/database")
        urls, counts = m.shard_urls(), [e.count for e in m.shards]
        best = {"bare": float("inf"), "accounted": float("inf")}
        for _ in range(a.repeats):
            for name, fn in (("bare", lambda: bare(urls)), ("accounted", lambda: accounted(urls, counts))):
                t = time.perf_counter()
                n = fn()
                best[name] = min(best[name], time.perf_counter() - t)
        print(f"{n} samples in {len(urls)} shards; best of {a.repeats}: webdataset bare {best['bare']:.4f} s, "
              f"raw_samples accounted {best['accounted']:.4f} s, speed ratio {best['bare'] / best['accounted']:.3f}")


if __name__ == "__main__":
    main()
