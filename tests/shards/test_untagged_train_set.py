"""``benchmarks.results_family.untagged_train_set``: MeCoQ's train + untagged split is the database
split only when the split sent exactly the untagged non-query images there (``--train-needs-tags``
with query + train fractions summing to 1); otherwise it refuses, naming what else is there."""
from __future__ import annotations

import pytest

from benchmarks.results_family import untagged_train_set
from shards.manifest import Manifest
from shards.writer import DatasetWriter, ShardingConfig
from tests.shards.conftest import png


def write(root, train_fraction: float) -> dict[str, set[str]]:
    cfg = ShardingConfig(query_fraction=0.2, train_fraction=train_fraction, train_needs_tags=True, max_count=8)
    with DatasetWriter(str(root), "test", cfg=cfg) as w:
        for i in range(40):
            w.add(f"im{i}", png(i), [] if i % 4 == 0 else [f"t{i % 3}"])  # every 4th image untagged
    from shards.reader import iter_samples
    return {split: {s["__key__"] for url in Manifest.load(str(root / split)).shard_urls()
                    for s in iter_samples(url, fields=["tags.json"])} for split in ("train", "query", "database")}


def test_database_split_is_train_plus_the_untagged_images(tmp_path):
    keys = write(tmp_path, 0.8)
    untagged = {f"im{i}" for i in range(0, 40, 4)}
    assert untagged - keys["query"] and not untagged & keys["train"]
    assert keys["database"] == keys["train"] | (untagged - keys["query"])
    assert untagged_train_set(tmp_path) == tmp_path / "database"


def test_a_database_holding_tagged_non_training_images_is_refused(tmp_path):
    keys = write(tmp_path, 0.4)
    tagged_rest = sorted(k for k in keys["database"] - keys["train"] if int(k[2:]) % 4)
    assert tagged_rest
    with pytest.raises(SystemExit, match=rf"0 training images missing, {len(tagged_rest)} tagged non-training images"):
        untagged_train_set(tmp_path)
