"""The streaming data-path stages keep memory flat as the corpus grows (a 4x larger N, same peak).

Each stage runs in a fresh interpreter (``benchmarks.scale.data_stages point``) at N = 5,000 and
N = 20,000, and its own addition to the process's peak RSS (peak minus the peak after imports) is
compared. Bounds, and why:

* reading a shard set (``make_loader``, features_only) and the tag counting pass: nothing may grow
  with N; bound 4 MiB (measured growth: reader -0.1 MiB, tag counting 1.0 MiB; holding the 15,000
  extra samples instead: 9.9 MiB as batches, 24.5 MiB as tag samples);
* corpus generation through ``ShardSetWriter``: the writer keeps the set of written keys by design
  (duplicate refusal; ~100 B per sample, docs/shards.md), so the bound is a per-sample growth of at most
  300 B (measured 157 B; holding the encoded samples: 837 B).

Working sets that are flat only beyond a fixed cap are brought under it at this size, so that what is
compared is growth with N alone: the generator draws 1,000 samples at a time (``--chunk``; default
8,192), the tag counter keeps a label sample of 1,000 images (``label_sample``; default 50,000, held
as up to twice that many rows, ~250 B each), and the vocabulary is 100 tags, so the co-occurrence
matrix is saturated (its non-zeros grow with N until every pair seen is seen; docs/scaling.md
measures that growth at realistic vocabularies).
"""
from __future__ import annotations

import pytest

from benchmarks.scale.data_stages import run_point

SMALL, LARGE = 5_000, 20_000
FLAT_MIB = 4.0
WRITER_BYTES_PER_SAMPLE = 300

pytestmark = pytest.mark.slow


def _added(row: dict) -> float:
    return row["rss_peak_mib"] - row["rss_base_mib"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Both corpora, written by the generator under measurement; the two write points ride along."""
    root = tmp_path_factory.mktemp("scale")
    rows = {n: run_point(["write", "--n", n, "--corpus", root / f"n{n}", "--vocab", 100, "--chunk", 1000], timeout=180)
            for n in (SMALL, LARGE)}
    return {n: str(root / f"n{n}") for n in rows}, rows


def test_corpus_generation_grows_only_by_the_writers_key_set(corpora):
    _, rows = corpora
    assert [rows[n]["samples"] for n in (SMALL, LARGE)] == [SMALL, LARGE]
    small, large = _added(rows[SMALL]), _added(rows[LARGE])
    per_sample = (large - small) * 2**20 / (LARGE - SMALL)
    assert per_sample < WRITER_BYTES_PER_SAMPLE, (
        f"corpus generation added {small:.1f} MiB at N={SMALL} and {large:.1f} MiB at N={LARGE}: "
        f"{per_sample:.0f} B per extra sample, bound {WRITER_BYTES_PER_SAMPLE} B (the writer's key set)")


@pytest.mark.parametrize("stage, extra", [
    ("read", ["--path", "loader"]),
    ("tags", ["--tasks", "0", "--label-sample", "1000"]),
], ids=["reader_make_loader", "tag_counting"])
def test_streaming_stage_memory_does_not_grow_with_n(corpora, stage, extra):
    dirs, _ = corpora
    rows = {n: run_point([stage, "--n", n, "--corpus", dirs[n], *extra], timeout=180) for n in (SMALL, LARGE)}
    assert [rows[n]["samples"] for n in (SMALL, LARGE)] == [SMALL, LARGE]
    small, large = _added(rows[SMALL]), _added(rows[LARGE])
    assert large - small < FLAT_MIB, (
        f"{stage} added {small:.1f} MiB at N={SMALL} and {large:.1f} MiB at N={LARGE} "
        f"(peaks {rows[SMALL]['rss_peak_mib']:.1f} / {rows[LARGE]['rss_peak_mib']:.1f} MiB): "
        f"growth {large - small:.1f} MiB over a 4x larger corpus, bound {FLAT_MIB} MiB")
