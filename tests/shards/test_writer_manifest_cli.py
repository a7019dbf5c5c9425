"""Writer (shard cuts by count and bytes, duplicate keys, overwrite), manifest round trip, CLI front door."""
from __future__ import annotations

import json

import pytest

from shards import storage
from shards.__main__ import build_parser, main
from shards.manifest import Manifest, ManifestError
from shards.schema import SampleError, encode_sample, make_key
from shards.writer import DatasetWriter, ShardingConfig, ShardSetWriter
from tests.shards.conftest import jpeg, png, write_set


def test_shards_are_cut_by_count(tmp_path):
    m = write_set(tmp_path / "s", n=10, max_count=4)
    assert [s.count for s in m.shards] == [4, 4, 2] and m.total == 10


def test_shard_members_carry_no_pax_headers_so_a_sample_costs_its_payload_plus_512_b_per_member(tmp_path):
    import tarfile

    m = write_set(tmp_path / "s", n=3, max_count=10, feat_dim=4)
    with tarfile.open(tmp_path / "s" / m.shards[0].url) as tar:
        members = tar.getmembers()
    assert len(members) == 3 * 4  # png, tags.json, labels.json, feat.npy
    assert all(not t.pax_headers and isinstance(t.mtime, int) for t in members)
    payload = sum(-(-t.size // 512) * 512 for t in members)
    assert m.shards[0].bytes - payload - 512 * len(members) <= 10240  # + the end-of-archive padding


def test_shards_are_cut_by_bytes(tmp_path):
    w = ShardSetWriter(str(tmp_path / "s"), "t", "train", max_count=1000, max_bytes=7000)
    for i in range(8):
        w.write(encode_sample(f"k{i}", jpeg(i, 64), "jpg", ["a"]))  # ~3.1 KB of payload per sample
    m = w.close()
    # webdataset counts payload bytes and checks before a write: a shard closes once it holds >= 7000
    assert [s.count for s in m.shards] == [3, 3, 2]


def test_manifest_round_trip_with_relative_urls(tmp_path):
    m = write_set(tmp_path / "s", n=5, max_count=2)
    d = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert [e["url"] for e in d["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert d["total"] == 5 and d["schema_version"] == 1 and d["label_names"] == ["l0", "l1", "l2"]
    again = Manifest.load(str(tmp_path / "s" / "manifest.json"))
    assert again.shard_urls() == [str(tmp_path / "s" / f"shard-00000{i}.tar") for i in range(3)]
    assert again.offsets() == [0, 2, 4] and again.shards == m.shards


def test_unknown_schema_version_is_refused(tmp_path):
    write_set(tmp_path / "s", n=1, max_count=2)
    d = json.loads((tmp_path / "s" / "manifest.json").read_text())
    d["schema_version"] = 2
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="schema_version 2"):
        Manifest.load(str(tmp_path / "s"))


def test_writer_refuses_duplicate_keys_and_existing_output(tmp_path):
    w = ShardSetWriter(str(tmp_path / "s"), "t", "train")
    w.write(encode_sample("a", png(1), "png", ["x"]))
    with pytest.raises(SampleError, match="already written"):
        w.write(encode_sample("a", png(2), "png", ["y"]))
    w.close()
    with pytest.raises(FileExistsError, match="--overwrite"):
        ShardSetWriter(str(tmp_path / "s"), "t", "train")


def test_keys_are_made_safe_for_webdataset():
    assert make_key("photos/2009/img.001.jpg") == "photos/2009/img_001_jpg"
    assert make_key("_hidden name") == "hidden_name"
    with pytest.raises(SampleError, match="not a valid shard key"):
        encode_sample("a.b", png(0), "png", [])


def test_split_assignment_is_deterministic_and_seeded():
    cfg = ShardingConfig(query_fraction=0.2, train_fraction=0.5)
    keys = [f"k{i}" for i in range(2000)]
    a = [cfg.splits_of(k) for k in keys]
    assert a == [cfg.splits_of(k) for k in keys]
    assert a != [ShardingConfig(query_fraction=0.2, train_fraction=0.5, split_seed=1).splits_of(k) for k in keys]
    n_query = sum(s == ("query",) for s in a)
    n_train = sum("train" in s for s in a)
    assert 330 < n_query < 470 and 900 < n_train < 1100  # binomial(2000, .2) and (2000, .5), > 4 sigma
    assert all(("train" not in s) or ("database" in s) for s in a)
    # train_needs_tags: an untagged key drawn for train stays in the database only
    strict = ShardingConfig(query_fraction=0.2, train_fraction=0.5, train_needs_tags=True)
    assert [strict.splits_of(k) for k in keys] == a
    assert [strict.splits_of(k, tagged=False) for k in keys] == [("database",) if "train" in s else s for s in a]


def test_empty_split_gets_a_manifest_with_no_shards(tmp_path):
    with DatasetWriter(str(tmp_path / "d"), "t", None, ShardingConfig(query_fraction=0.01)) as w:
        w.add("only", png(3), ["a"])
    assert {s: Manifest.load(str(tmp_path / "d" / s)).total for s in ("train", "query", "database")} in (
        {"train": 1, "query": 0, "database": 1}, {"train": 0, "query": 0, "database": 1})


def test_every_subcommand_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    assert set(sub.choices) == {"demo", "from-manifest", "from-folder", "mirflickr", "mirflickr-matrix",
                                "nuswide", "laion", "summary", "verify"}
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    assert "--max-count" in capsys.readouterr().out


def test_demo_summary_and_verify_via_cli(demo_root, capsys):
    assert main(["summary", str(demo_root)]) == 0
    out = capsys.readouterr().out
    m = {s: Manifest.load(str(demo_root / s)) for s in ("train", "query", "database")}
    assert f"[train] {m['train'].total} samples (manifest: {m['train'].total})" in out
    assert m["query"].total + m["database"].total == 1797
    assert m["train"].label_names == [f"digit_{d}" for d in range(10)]
    assert "digit_0 (" in out and "skipped at conversion: none" in out
    assert main(["verify", str(demo_root)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 4 and "query is disjoint from train and database" in out


def test_verify_finds_a_query_key_that_leaked_into_database(tmp_path, capsys):
    for split, keys in (("train", ["a", "b"]), ("query", ["q", "b"]), ("database", ["a", "c"])):
        w = ShardSetWriter(str(tmp_path / split), "t", split)
        for k in keys:
            w.write(encode_sample(k, png(1), "png", ["x"]))
        w.close()
    assert main(["verify", str(tmp_path)]) == 1
    assert "1 query key(s) also in train/database, e.g. ['b']" in capsys.readouterr().err


def test_demo_is_seeded_and_tags_are_simulated_from_labels(tmp_path):
    from shards.converters.demo import SYNONYMS, NOISE_VOCAB, convert_demo
    from shards.reader import iter_samples

    for name in ("a", "b"):
        convert_demo(str(tmp_path / name))
    shard = lambda n: Manifest.load(str(tmp_path / n / "database")).shard_urls()[0]  # noqa: E731
    a, b = list(iter_samples(shard("a"))), list(iter_samples(shard("b")))
    assert [(s["__key__"], s["tags"], s["image"]) for s in a] == [(s["__key__"], s["tags"], s["image"]) for s in b]
    for s in a:
        digit = int(s["labels"][0].split("_")[1])
        assert set(s["tags"]) <= set(SYNONYMS[digit]) | set(NOISE_VOCAB)


def test_cli_reports_a_missing_input_as_one_line(tmp_path, capsys):
    assert main(["from-manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.jsonl'}: image list not found"
    assert not storage.exists(str(tmp_path / "o" / "train" / "manifest.json"))


@pytest.mark.parametrize("flags, message", [
    (["--query-fraction", "1.5"], "error: --query-fraction: must be in [0, 1), got 1.5\n"),
    (["--train-fraction", "0.95"], "error: --train-fraction: must be > 0 with query_fraction + train_fraction "
                                   "<= 1, got 0.95 (query_fraction 0.1)\n"),
    (["--max-count", "0"], "error: --max-count: must be >= 1, got 0\n"),
])
def test_sharding_flags_come_from_the_config_and_its_checks_name_the_flag(tmp_path, capsys, flags, message):
    """The flags are ShardingConfig's fields (shards.config.add_arguments): its own range checks refuse a
    bad value, before any input is read, in one line naming the flag."""
    assert main(["from-folder", str(tmp_path / "none"), "--out", str(tmp_path / "o"), *flags]) == 2
    assert capsys.readouterr().err == message
    assert not (tmp_path / "o").exists()


def test_a_bool_field_is_a_flag_pair(tmp_path):
    from shards.config import add_arguments, from_arguments
    from shards.writer import ShardingConfig
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p, ShardingConfig)
    cfg = from_arguments(ShardingConfig, p.parse_args(["--no-database-includes-train", "--split-seed", "3"]))
    assert (cfg.database_includes_train, cfg.split_seed, cfg.validate_images) == (False, 3, True)
