"""Seeded damage applied to small shard sets, every stage run on each: nothing is lost silently.

Each case damages one shard of a 4 x 16-sample set (tiny PNGs + feat.npy, ``tests.eval.conftest.
write_corpus``) and runs every stage that reads a shard set: ``shards summary``, ``trainer.tags
build``, a training pass and a codebook-update (eval) pass of the reader, ``eval.encode --local`` and
``eval.evaluate --train-shards``. Each must give the exact outcome: either the accounting invariant
(samples read + samples skipped by reason = the manifest's total, the lost samples under the right
reason, and eval-type stages refusing to publish unless ``--partial``), or one line naming the shard
before anything streams. Expected read counts are predicted from the original tar's member list,
independently of the reader.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from eval import encode as encode_cli, evaluate as evaluate_cli
from shards import __main__ as shards_cli
from shards.manifest import Manifest, ManifestError
from shards.reader import ReaderConfig, make_loader
from shards.summary import split_stats
from tests.eval.conftest import make_checkpoint, write_corpus
from trainer.tags import __main__ as tags_cli

N, PER_SHARD, FEAT = 64, 16, 16
LOSS = {"cut_header": "short_shard", "flip_header": "short_shard", "cut_data": "truncated_tar",
        "zero_bytes": "truncated_tar"}
TAGS_OVERRIDES = ["num_tasks=0", "vocab.min_count=1", "label_sample=0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An intact corpus, a checkpoint, and query/database code sets to evaluate against."""
    root = tmp_path_factory.mktemp("fuzz")
    write_corpus(root / "corpus", N, PER_SHARD, seed=1)
    make_checkpoint(root / "ckpt", feat_dim=FEAT)
    write_corpus(root / "q", 12, 12, seed=2, prefix="q")
    write_corpus(root / "db", 40, 20, seed=3, prefix="db")
    for name in ("q", "db"):
        assert encode_cli.main(["--checkpoint", str(root / "ckpt"), "--shards", str(root / name),
                                "--out", str(root / f"{name}-codes"), "--local", "workers=0"]) == 0
    return root


def _copy_corpus(world: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(world / "corpus", dst)
    return dst


def _members(tar_bytes: bytes) -> list[tuple[str, str, int, int]]:
    """(key, suffix, header offset, data offset) of every member, read with tarfile's random access."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
        return [(m.name.split(".", 1)[0], m.name.split(".", 1)[1], m.offset, m.offset_data) for m in t.getmembers()]


def _refresh(set_dir: Path, shard: int, count: int | None = None) -> None:
    """Rewrite the shard's manifest entry to its current bytes (as ``verify`` after a re-upload would)."""
    m = json.loads((set_dir / "manifest.json").read_text())
    data = (set_dir / m["shards"][shard]["url"]).read_bytes()
    m["shards"][shard].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if count is not None:
        m["shards"][shard]["count"] = count
    m["total"] = sum(s["count"] for s in m["shards"])
    (set_dir / "manifest.json").write_text(json.dumps(m))


def damage(set_dir: Path, kind: str, seed: int) -> dict:
    """Apply one seeded damage to one shard; returns what a correct reader must report."""
    rng = random.Random(seed)
    shard = rng.randrange(4)
    path = set_dir / f"shard-{shard:06d}.tar"
    data = path.read_bytes()
    members = _members(data)
    j = rng.randrange(1, len(members))  # the damaged member: at least one member before it survives
    if kind == "cut_header":
        path.write_bytes(data[: members[j][2] + rng.randrange(1, 511)])
        _refresh(set_dir, shard)
    elif kind == "cut_data":
        path.write_bytes(data[: members[j][3] + rng.randrange(1, 64)])
        _refresh(set_dir, shard)
    elif kind == "flip_header":  # same size: the cheap size check passes, sha256 would not
        b = bytearray(data)
        b[members[j][2] + rng.randrange(0, 100)] ^= 0xFF  # inside the name field: checksum fails
        path.write_bytes(bytes(b))
    elif kind == "zero_bytes":
        path.write_bytes(b"")
        _refresh(set_dir, shard)
        j = 0
    delivered: dict[str, set[str]] = {}
    for key, suffix, _, _ in members[:j]:
        delivered.setdefault(key, set()).add(suffix)
    return {"shard": shard, "url": str(path), "reason": LOSS[kind], "delivered": delivered}


def predicted_read(d: dict, needed: set[str]) -> int:
    """Samples a correct reader yields: every sample of the intact shards, plus the damaged shard's
    samples whose needed members all come before the damage."""
    return N - PER_SHARD + sum(needed <= s for s in d["delivered"].values())


def assert_accounted(read: int, skips: dict, d: dict, needed: set[str], total: int = N) -> None:
    assert read == predicted_read(d, needed)
    assert read + sum(skips.values()) == total, (read, skips)  # the invariant
    assert skips.get(d["reason"], 0) >= 1
    boundary = {k: v for k, v in skips.items() if k != d["reason"]}  # the one sample cut in half
    assert set(boundary) <= {"missing_tags", "missing_image", "missing_feat"} and sum(boundary.values()) <= 1


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING")]
    assert len(lines) == 1, err
    return lines[0]


CASES = [(kind, seed) for kind in ("cut_header", "flip_header", "cut_data") for seed in (0, 1, 2)]
CASES += [("zero_bytes", 0)]


@pytest.mark.parametrize("kind,seed", CASES)
def test_damaged_shard_every_stage_accounts_for_every_sample(world, tmp_path, capsys, kind, seed):
    s = _copy_corpus(world, tmp_path / "set")
    d = damage(s, kind, seed)
    m = Manifest.load(str(s))
    lost_line = rf"{d['url']}: \d+ of {PER_SHARD} samples lost \({d['reason']}"

    # shards summary: the invariant in its numbers, the shard named, exit 1
    st = split_stats(m)
    assert_accounted(st["samples"], st["read_skips"], d, {"tags.json"})
    assert len(st["short_shards"]) == 1
    capsys.readouterr()
    assert shards_cli.main(["summary", str(s)]) == 1
    assert f"SHORT {d['url']}: " in capsys.readouterr().out
    assert shards_cli.main(["verify", str(s)]) == 1  # sha256 refreshed or not: the count falls short
    assert re.search(f"FAIL {d['url']}: ", capsys.readouterr().err)

    # codebook-update pass (eval mode): every sample once, accounted
    loader = make_loader(m, ReaderConfig(batch_size=5, num_workers=0, features_only=True), train=False)
    read = sum(len(b["key"]) for b in loader)
    assert_accounted(read, dict(loader.skips), d, {"tags.json", "feat.npy"})

    per_read = loader.skips[d["reason"]]
    # the same pass over 5 ranks (more slots than shards: every slot reads every shard, keeps its
    # share by index): the shares' counts add up to the same accounting
    read, skips = 0, Counter()
    for rank in range(5):
        loader = make_loader(m, ReaderConfig(batch_size=5, num_workers=0, features_only=True), rank=rank,
                             world_size=5, train=False)
        read += sum(len(b["key"]) for b in loader)
        skips += loader.skips
    assert_accounted(read, dict(skips), d, {"tags.json", "feat.npy"})

    # training pass: exactly len(loader) batches; every read of the damaged shard counts its loss
    loader = make_loader(m, ReaderConfig(batch_size=8, num_workers=0, features_only=True, shuffle_buffer=0),
                         train=True)
    assert sum(1 for _ in loader) == len(loader) == N // 8
    reads = loader.skips[d["reason"]] // per_read
    assert reads >= 1 and loader.skips[d["reason"]] == reads * per_read

    # tags build: refused in one line naming the shard; --partial builds and records it
    out = tmp_path / "tags"
    assert tags_cli.main(["build", "--shards", str(s), "--out", str(out), *TAGS_OVERRIDES]) == 2
    assert re.search(lost_line, one_line(capsys.readouterr().err))
    assert not out.exists()
    assert tags_cli.main(["build", "--shards", str(s), "--out", str(out), "--partial", *TAGS_OVERRIDES]) == 0
    stats = json.loads((out / "semantics.json").read_text())["stats"]
    capsys.readouterr()
    assert stats["images"] == predicted_read(d, {"tags.json"}) and len(stats["short_shards"]) == 1

    # encode: refused (no code set published), then --partial publishes it with the loss recorded
    codes = tmp_path / "codes"
    args = ["--checkpoint", str(world / "ckpt"), "--shards", str(s), "--out", str(codes), "--local", "workers=0"]
    assert encode_cli.main(args) == 2
    err = one_line(capsys.readouterr().err)
    assert "refusing to publish the code set" in err and re.search(lost_line, err)
    assert not (codes / "codes_manifest.json").exists()
    assert not (codes / f"codes-shard-{d['shard']:06d}.npz").exists()
    assert encode_cli.main(args + ["--partial"]) == 0
    cm = json.loads((codes / "codes_manifest.json").read_text())
    skipped = cm["skipped_this_run"]
    assert_accounted(cm["total"], skipped, d, {"tags.json", "feat.npy"})
    assert cm["partial"] is True and len(cm["short_shards"]) == 1
    capsys.readouterr()
    assert encode_cli.main(args) == 2  # a later run without --partial does not pass the partial set off as whole
    assert "holds codes of a --partial run" in one_line(capsys.readouterr().err)

    # evaluate: a damaged train shard set blinds the disjointness check -> refused; a partial code
    # set is refused too; --partial accepts both and says so in the report
    ev = ["--query", str(world / "q-codes"), "--database", str(world / "db-codes"), "--train-shards", str(s),
          "top_k=10", "precision_at=[5]", "baselines.methods=[]", "scorings=[aqd]"]
    assert evaluate_cli.main(ev + ["--out", str(tmp_path / "r1")]) == 2
    assert re.search(lost_line, one_line(capsys.readouterr().err))
    partial_db = ["--query", str(world / "q-codes"), "--database", str(codes), "top_k=10", "precision_at=[5]",
                  "baselines.methods=[]", "scorings=[aqd]"]
    assert evaluate_cli.main(partial_db + ["--out", str(tmp_path / "r2")]) == 2
    assert "is a partial code set" in one_line(capsys.readouterr().err)
    assert evaluate_cli.main(ev + ["--out", str(tmp_path / "r3"), "--partial"]) == 0


def _duplicate_sample(set_dir: Path, seed: int, adjacent: bool) -> str:
    """Rewrite one shard with one of its samples written a second time (its manifest count + 1)."""
    rng = random.Random(seed)
    shard = rng.randrange(4)
    path = set_dir / f"shard-{shard:06d}.tar"
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    key = members[rng.randrange(len(members))][0].name.split(".", 1)[0]
    again = [(m, b) for m, b in members if m.name.startswith(key + ".")]
    last = max(i for i, (m, _) in enumerate(members) if m.name.startswith(key + "."))
    out = members[: last + 1] + again + members[last + 1:] if adjacent else members + again
    with tarfile.open(path, "w") as t:
        for m, b in out:
            t.addfile(m, io.BytesIO(b))
    _refresh(set_dir, shard, count=PER_SHARD + 1)
    return key


@pytest.mark.parametrize("adjacent", [True, False])
def test_a_duplicated_sample_is_counted_once_per_sample_in_every_stage(world, tmp_path, capsys, adjacent):
    s = _copy_corpus(world, tmp_path / "set")
    _duplicate_sample(s, 7, adjacent)
    m = Manifest.load(str(s))
    assert m.total == N + 1
    st = split_stats(m)
    assert st["samples"] == N and st["read_skips"] == {"duplicate_key": 1} and not st["short_shards"]
    loader = make_loader(m, ReaderConfig(batch_size=5, num_workers=0, features_only=True), train=False)
    assert sum(len(b["key"]) for b in loader) == N and loader.skips == {"duplicate_key": 1}
    loader = make_loader(m, ReaderConfig(batch_size=8, num_workers=0, features_only=True, shuffle_buffer=0),
                         train=True)
    assert sum(1 for _ in loader) == len(loader) and loader.skips == {"duplicate_key": 1}
    out = tmp_path / "tags"
    assert tags_cli.main(["build", "--shards", str(s), "--out", str(out), *TAGS_OVERRIDES]) == 0
    stats = json.loads((out / "semantics.json").read_text())["stats"]
    assert stats["images"] == N and stats["skips"] == {"sample_duplicate_key": 1}
    codes = tmp_path / "codes"
    assert encode_cli.main(["--checkpoint", str(world / "ckpt"), "--shards", str(s), "--out", str(codes),
                            "--local", "workers=0"]) == 0
    cm = json.loads((codes / "codes_manifest.json").read_text())
    assert cm["total"] == N and cm["skipped_this_run"] == {"duplicate_key": 1} and not cm["partial"]


def _train_config(tmp_path: Path, train: Path) -> Path:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(json.dumps({"data": {"train": str(train), "tags": str(tmp_path / "no-tags-needed")},
                               "storage": {"path": str(tmp_path / "runs"), "name": "x"}}))
    return cfg


@pytest.mark.parametrize("kind", ["missing", "size", "sha256"])
def test_missing_or_changed_shard_is_refused_by_every_stage_before_streaming(world, tmp_path, capsys, kind):
    from trainer import train as train_cli

    s = _copy_corpus(world, tmp_path / "set")
    shard = s / "shard-000002.tar"
    if kind == "missing":
        shard.unlink()
        why = rf"{shard}: shard listed in {s / 'manifest.json'} does not exist"
    elif kind == "size":
        shard.write_bytes(shard.read_bytes() + b"\0" * 512)  # one more (empty) block: still a valid tar
        why = rf"{shard}: \d+ bytes but {s / 'manifest.json'} says \d+; the shard changed"
    else:
        b = bytearray(shard.read_bytes())
        b[700] ^= 0xFF  # inside the first member's data: same size, same samples, another sha256
        shard.write_bytes(bytes(b))
        why = rf"{shard}: sha256 \w+\.\.\. does not match manifest"
    sha = ["--verify-sha256"] if kind == "sha256" else []
    capsys.readouterr()
    if kind != "sha256":  # byte sizes are checked by default, everywhere
        assert shards_cli.main(["summary", str(s)]) == 2
        assert re.search(why, one_line(capsys.readouterr().err))
        with pytest.raises((FileNotFoundError, ManifestError), match=why):
            make_loader(str(s), ReaderConfig(num_workers=0, features_only=True))
        assert train_cli.main(["--config", str(_train_config(tmp_path, s))]) == 2
        assert re.search("data.train: " + why, one_line(capsys.readouterr().err))
        ev = ["--query", str(world / "q-codes"), "--database", str(world / "db-codes"), "--train-shards", str(s),
              "--out", str(tmp_path / "r"), "baselines.methods=[]"]
        assert evaluate_cli.main(ev) == 2
        assert re.search(why, one_line(capsys.readouterr().err))
    assert tags_cli.main(["build", "--shards", str(s), "--out", str(tmp_path / "tags"), *sha, *TAGS_OVERRIDES]) == 2
    assert re.search(why, one_line(capsys.readouterr().err))
    assert encode_cli.main(["--checkpoint", str(world / "ckpt"), "--shards", str(s), "--out", str(tmp_path / "c"),
                            "--local", *sha]) == 2
    assert re.search(why, one_line(capsys.readouterr().err))
    assert not (tmp_path / "c" / "codes_manifest.json").exists() and not list((tmp_path / "c").glob("codes-*"))


# ---- converters: every bad source item a counted skip naming it; a refused conversion leaves nothing

def test_list_rows_with_wrong_json_types_are_counted_skips_naming_the_row(tmp_path):
    from shards.converters.generic import convert_list
    from tests.shards.conftest import png
    from shards.writer import ShardingConfig

    (tmp_path / "a.png").write_bytes(png(1))
    rows = [{"image": "a.png", "tags": ["x"]}, {"image": "a.png", "tags": ["x"], "caption": 123, "key": "b"},
            {"image": 5, "tags": ["x"]}, {"image": "a.png", "tags": 7, "key": "c"},
            {"image": "a.png", "tags": ["x"], "labels": {"a": 1}, "key": "d"}, {"image": "a.png", "tags": ["y"],
                                                                               "key": 12}]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    w = convert_list(str(tmp_path / "l.jsonl"), str(tmp_path / "out"), ShardingConfig(max_count=10))
    assert w.skipped == {"bad_list_line": 2, "bad_tags": 1, "bad_labels": 1}
    assert w.examples["bad_list_line"] == f"{tmp_path / 'l.jsonl'}:2: 'caption' must be str, got int '123'"
    assert sum(sum(e.count for e in sw.entries) for s, sw in w.writers.items() if s != "train") == 2  # a, 12


def test_folder_with_a_broken_symlink_and_a_gif_counts_both_and_converts_the_rest(tmp_path):
    from shards.converters.generic import convert_folder
    from shards.writer import ShardingConfig
    from tests.shards.conftest import png

    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        (src / f"{name}.png").write_bytes(png(3))
        (src / f"{name}.tags.txt").write_text("sky\n")
    (src / "gone.png").symlink_to(src / "nowhere.png")
    (src / "gone.tags.txt").write_text("sky\n")
    (src / "anim.gif").write_bytes(b"GIF89a")
    (src / "anim.tags.txt").write_text("sky\n")
    w = convert_folder(str(src), str(tmp_path / "out"), ShardingConfig(max_count=10))
    assert w.skipped == {"missing_image_file": 1, "unsupported_image_format": 1}
    assert "gone.png: not readable" in w.examples["missing_image_file"]
    assert "anim.gif: .gif images are not stored" in w.examples["unsupported_image_format"]


def test_csv_without_a_header_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys):
    from tests.shards.conftest import png

    (tmp_path / "a.png").write_bytes(png(1))
    (tmp_path / "l.csv").write_text("a.png,sky|sea\n")
    out = tmp_path / "out" / "deeper"
    assert shards_cli.main(["from-manifest", str(tmp_path / "l.csv"), "--out", str(out)]) == 2
    assert "CSV needs a header with an 'image' column" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_conversion_failing_midway_removes_the_folders_it_made(tmp_path):
    from shards.writer import DatasetWriter

    with pytest.raises(RuntimeError):
        with DatasetWriter(str(tmp_path / "new" / "root"), "t"):
            raise RuntimeError("source died")
    assert not (tmp_path / "new").exists()


# ---- the encode job's and evaluation's user errors: one line, exit 2, naming the file

def test_a_malicious_checkpoint_is_refused_in_one_line_and_never_unpickled(world, tmp_path, capsys):
    import pickle
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(world / "ckpt", ckpt)
    ran = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (ran,))

    (ckpt / "model.pt").write_bytes(pickle.dumps({"w": Evil()}))
    for local in (["--local"], []):  # the Ray path refuses on the driver, before any actor starts
        rc = encode_cli.main(["--checkpoint", str(ckpt), "--shards", str(world / "q"), "--out",
                              str(tmp_path / "c"), *local])
        assert rc == 2
        line = one_line(capsys.readouterr().err)
        assert f"checkpoint {ckpt}: model.pt is not a weights-only torch state dict" in line
        assert "weights_only=False" not in line
    assert not ran.exists()


# ---- storage: an S3 endpoint that goes away is named as an outage, within a bounded time

@pytest.fixture
def own_s3(s3_server, monkeypatch):
    """A second moto server this test may stop; the storage client is pointed at it (and back after)."""
    import boto3

    from shards import storage
    from tests.conftest import start_moto

    server, endpoint = start_moto()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setattr(storage, "_clients", {})
    monkeypatch.setattr(storage, "S3_RETRY_BUDGET_S", 1.0)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="fuzz-bucket")
    state = {"endpoint": endpoint, "running": True}

    def stop():
        server.stop()
        state["running"] = False
    state["stop"] = stop
    yield state
    if state["running"]:
        server.stop()


@pytest.mark.s3
def test_s3_outage_is_named_with_the_endpoint_refused_by_eval_passes_and_bounded_in_training(world, own_s3,
                                                                                             tmp_path, capsys):
    import time

    from shards import storage
    from shards.reader import IncompleteRead, ReaderError, check_complete, iter_set

    for f in sorted((world / "corpus").iterdir()):
        storage.upload_file(f, f"s3://fuzz-bucket/set/{f.name}")
    m = Manifest.load("s3://fuzz-bucket/set")
    # one object gone (not an outage): counted in training as unreadable_shard, its whole count
    storage.remove("s3://fuzz-bucket/set/shard-000001.tar")
    cfg = ReaderConfig(batch_size=8, num_workers=0, features_only=True, shuffle_buffer=0, check_sizes=False)
    loader = make_loader(m, cfg, train=True)
    assert sum(1 for _ in loader) == len(loader) and loader.skips["unreadable_shard"] % PER_SHARD == 0
    storage.upload_file(world / "corpus" / "shard-000001.tar", "s3://fuzz-bucket/set/shard-000001.tar")

    train_loader = make_loader(m, cfg, train=True)  # shards checked while the endpoint is up
    own_s3["stop"]()
    name = rf"S3 endpoint {re.escape(own_s3['endpoint'])} unavailable"
    # eval passes: the lost shards are named (endpoint + error), nothing is replaced by other reads
    reads: list = []
    assert sum(1 for _ in iter_set(m, ["tags.json"], reads=reads)) == 0
    assert [r.reason for r in reads] == ["unreadable_shard"] * 4 and all(r.unavailable for r in reads)
    with pytest.raises(IncompleteRead, match=name):
        check_complete(reads, "test")
    # training: stops naming the outage once it outlasts the retry budget, not after minutes of skips
    t0 = time.monotonic()
    with pytest.raises(ReaderError, match="storage outage: .*" + name):
        list(train_loader)
    assert time.monotonic() - t0 < 30
    # a stage started during the outage refuses before streaming, naming the endpoint
    capsys.readouterr()
    assert encode_cli.main(["--checkpoint", str(world / "ckpt"), "--shards", "s3://fuzz-bucket/set", "--out",
                            str(tmp_path / "c"), "--local"]) == 2
    assert re.search(name, one_line(capsys.readouterr().err))


@pytest.mark.s3
@pytest.mark.parametrize("budget", [1.0, 3.0])
def test_s3_retries_stop_at_the_time_budget_and_name_the_endpoint(monkeypatch, budget):
    """An endpoint nobody listens on: botocore's standard retries (8 attempts, backoff up to 20 s
    each, ~70 s of sleeping) are cut off by the budget hook."""
    import socket
    import time

    from shards import storage

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connection refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(storage, "_clients", {})
    monkeypatch.setattr(storage, "S3_RETRY_BUDGET_S", budget)
    t0 = time.monotonic()
    with pytest.raises(storage.StorageUnavailable,
                       match=rf"s3://bkt/k: S3 endpoint http://127\.0\.0\.1:{port} unavailable \(EndpointConnection"):
        storage.size("s3://bkt/k")
    # the cut comes at the first retry decision past the budget: at most one backoff (random, <= 2^n s) later
    assert budget <= time.monotonic() - t0 < budget + 10


@pytest.mark.parametrize("name,data,says", [
    ("quantizer.npz", b"PK\x03\x04 not a zip", "quantizer.npz unreadable (BadZipFile"),
    ("quantizer.npz", None, "missing quantizer.npz"),
    ("meta.json", b"{nope", "meta.json is not UTF-8 JSON"),
    ("model.pt", b"", "model.pt is not a weights-only torch state dict"),
    ("model.pt", b"PK\x03\x04 truncated", "model.pt is not a weights-only torch state dict"),
])
def test_a_damaged_checkpoint_file_is_one_line_exit_2_naming_it(world, tmp_path, capsys, name, data, says):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(world / "ckpt", ckpt)
    if data is None:
        (ckpt / name).unlink()
    else:
        (ckpt / name).write_bytes(data)
    capsys.readouterr()
    assert encode_cli.main(["--checkpoint", str(ckpt), "--shards", str(world / "q"), "--out", str(tmp_path / "c"),
                            "--local"]) == 2
    assert f"checkpoint {ckpt}: {says}" in one_line(capsys.readouterr().err)
