"""The counting pass over real WebDataset shards (written with the project's shard writer)."""
import json

import numpy as np
import pytest

from shards.manifest import Manifest
from trainer.tags import (GraphConfig, TagConfig, TagSemantics, VectorConfig, VocabConfig, build_from_shards,
                          build_semantics)
from trainer.tags.__main__ import main

from .conftest import write_shard_set


def _cfg(num_tasks):
    return TagConfig(vectors=VectorConfig(source="cooccurrence", cooccurrence_dim=8),
                     graph=GraphConfig(eps=0.05), num_tasks=num_tasks)


def _random_corpus(n=400, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i:02d}" for i in range(30)]
    tags = [list(rng.choice(words, size=rng.integers(0, 6), replace=False)) for _ in range(n)]
    labels = [[f"l{int(t[0][1:]) % 4}"] if t else [] for t in tags]
    return tags, labels


def test_local_shard_pass_equals_the_in_memory_build(tmp_path):
    tags, labels = _random_corpus()
    urls = write_shard_set(str(tmp_path / "set"), tags, labels, per_shard=70)
    assert len(urls) == 6
    from_shards = build_from_shards(urls, _cfg(0))
    in_memory = build_semantics(tags, _cfg(0), labels)
    assert from_shards.hash == in_memory.hash
    assert from_shards.stats["images"] == 400
    assert from_shards.stats["label_agreement"]["images"] == 400


def test_bad_samples_are_counted_skips_naming_the_shard(tmp_path):
    tags = [["sky", "clouds"], ["sky"], ["a" * 10_000, "sky"], [], ["dog"], ["dog", "sky"]]
    raw = {1: b'["sky", "\xff\xfe"]', 4: b"not json"}
    urls = write_shard_set(str(tmp_path / "set"), tags, per_shard=3, raw_tags=raw)
    sem = build_from_shards(urls, TagConfig(vocab=VocabConfig(min_count=1), vectors=VectorConfig(source="cooccurrence"),
                                            num_tasks=0))
    st = sem.stats
    assert st["images"] == 4                         # two of six skipped
    assert st["skips"] == {"sample_bad_tags": 2, "tag_too_long": 1}
    assert st["images_untagged_after_normalisation"] == 1   # the empty tag list is kept and counted
    assert any("shard-000000.tar" in e for e in st["skip_examples"])
    assert any("shard-000001.tar" in e for e in st["skip_examples"])
    assert sem.vocab == ["sky", "clouds", "dog"]


@pytest.mark.ray
def test_one_ray_task_and_three_ray_tasks_give_the_same_artifact(tmp_path, ray_local):
    tags, labels = _random_corpus(seed=1)
    urls = write_shard_set(str(tmp_path / "set"), tags, labels, per_shard=50)
    one = build_from_shards(urls, _cfg(1))
    three = build_from_shards(urls, _cfg(3))
    assert one.hash == three.hash
    assert one.stats["sizes"] == three.stats["sizes"]
    assert one.stats["label_agreement"] == three.stats["label_agreement"]
    assert one.hash == build_from_shards(urls, _cfg(0)).hash


@pytest.mark.ray
def test_cli_build_over_a_shard_set_writes_a_loadable_artifact(tmp_path, ray_local, capsys):
    tags, labels = _random_corpus(n=120, seed=2)
    write_shard_set(str(tmp_path / "set"), tags, labels, per_shard=40)
    out = tmp_path / "art"
    rc = main(["build", "--shards", str(tmp_path / "set"), "--out", str(out), "num_tasks=2",
               "vectors.source=cooccurrence", "graph.target_units=20"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sem = TagSemantics.load(str(out))
    assert printed["hash"] == sem.hash and sem.T == printed["units"] == 20
    assert Manifest.load(str(tmp_path / "set")).total == 120
    assert main(["show", str(out)]) == 0


def test_cli_reports_a_config_mistake_without_a_traceback(tmp_path, capsys):
    write_shard_set(str(tmp_path / "set"), [["sky"]], per_shard=1)
    rc = main(["build", "--shards", str(tmp_path / "set"), "--out", str(tmp_path / "o"), "graph.epz=0.1"])
    assert rc == 2
    assert "unknown config key 'epz' under 'graph'" in capsys.readouterr().err
    rc = main(["build", "--shards", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.s3
def test_shards_on_s3_give_the_same_artifact_as_local_shards(tmp_path, s3_bucket):
    tags, labels = _random_corpus(n=90, seed=3)
    local = write_shard_set(str(tmp_path / "set"), tags, labels, per_shard=40)
    remote = write_shard_set(f"s3://{s3_bucket}/train", tags, labels, per_shard=40)
    assert remote[0].startswith(f"s3://{s3_bucket}/train/")
    assert build_from_shards(remote, _cfg(0)).hash == build_from_shards(local, _cfg(0)).hash
