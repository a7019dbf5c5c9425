"""Memory guards for the serving path: the encode job and the chunked search must not grow with N.

Each run is a fresh process (``benchmarks.scale.serving.in_fresh_process``), so ``ru_maxrss`` is
that run's own peak. The bounds are absolute: far below what keeping per-sample data for the whole
corpus would add, and above the run-to-run noise of the allocator (a few MB, measured).
"""
from __future__ import annotations

import pytest

from benchmarks.scale.serving import in_fresh_process

SMALL, LARGE, SHARD = 2_000, 12_000, 1_000
# Keeping the input rows of the 10,000 extra samples alone would add 10 MB (256 float32 each).
ENCODE_GROWTH_MB = 6.0


@pytest.fixture(scope="module")
def encode_inputs(tmp_path_factory):
    from benchmarks.bench_encode import make_checkpoint
    from benchmarks.scale.corpus import CorpusConfig, write_corpus
    from benchmarks.scale.encode_job import FEAT

    root = tmp_path_factory.mktemp("flat-encode")
    make_checkpoint(root / "ckpt")
    for n in (SMALL, LARGE):
        write_corpus(str(root / f"corpus{n}"), n, CorpusConfig(dim=FEAT, shard_size=SHARD))
    return root


def test_encode_job_peak_memory_does_not_grow_with_the_corpus(encode_inputs):
    root = encode_inputs
    runs = {n: in_fresh_process("benchmarks.scale.encode_job:encode", checkpoint=str(root / "ckpt"),
                                corpus=str(root / f"corpus{n}"), out=str(root / f"codes{n}"), mode="local")
            for n in (SMALL, LARGE)}
    assert [runs[n]["n"] for n in (SMALL, LARGE)] == [SMALL, LARGE]
    small, large = runs[SMALL], runs[LARGE]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    assert growth <= ENCODE_GROWTH_MB, (
        f"encode --local peak RSS {small['peak_rss_mb']} MB at {SMALL:,} samples, {large['peak_rss_mb']} MB at "
        f"{LARGE:,} ({growth:+.1f} MB > {ENCODE_GROWTH_MB} MB): the job keeps something per sample")
    # the peak can be set by a start-up transient that hides later growth (seen under pytest: 341 MB
    # at both sizes, also with every input row kept); the resident size across the run cannot
    during = large["rss_end_mb"] - large["rss_shard2_mb"]
    assert during <= ENCODE_GROWTH_MB, (
        f"encode --local over {LARGE:,} samples: RSS {large['rss_shard2_mb']} MB after shard 2, "
        f"{large['rss_end_mb']} MB after shard {LARGE // SHARD} ({during:+.1f} MB > {ENCODE_GROWTH_MB} MB): "
        f"the job keeps something per sample beyond one {SHARD}-sample shard")
    # the shards are read and decoded in the job's DataLoader worker: it must not grow either
    assert large["workers_rss_shard2_mb"] > 50, large  # the worker is alive and measured (a fork of the job)
    during = large["workers_rss_end_mb"] - large["workers_rss_shard2_mb"]
    assert during <= ENCODE_GROWTH_MB, (
        f"encode --local over {LARGE:,} samples: its reading worker's RSS {large['workers_rss_shard2_mb']} MB "
        f"after shard 2, {large['workers_rss_end_mb']} MB after shard {LARGE // SHARD} ({during:+.1f} MB > "
        f"{ENCODE_GROWTH_MB} MB): the worker keeps something per sample")


def test_chunked_search_peak_memory_grows_only_by_the_codes():
    # 8-bit codes: nearly every query ties at the k-th score and goes through the exact re-ranking
    small, large, chunk, queries = 50_000, 400_000, 1 << 14, 64
    runs = {n: in_fresh_process("benchmarks.scale.search:measure", n=n, m=1, backend="project",
                                queries=queries, db_chunk=chunk) for n in (small, large)}
    growth = runs[large]["peak_rss_mb"] - runs[small]["peak_rss_mb"]
    # the codes and faiss's copy of them: 2 bytes per extra item (0.7 MB), plus allocator noise;
    # a (queries x N) float32 score matrix would add 100 MB
    bound = 2 * (large - small) / 2**20 + 8.0
    assert growth <= bound, (
        f"AQD search peak RSS {runs[small]['peak_rss_mb']} MB at {small:,} codes, {runs[large]['peak_rss_mb']} MB "
        f"at {large:,} ({growth:+.1f} MB > {bound:.1f} MB): memory grows with the database beyond its codes")
