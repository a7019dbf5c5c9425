"""Index directories (eval.index) and the search command (eval.search): exact rankings, groups, tags."""
import json

import numpy as np
import pytest
import torch

from eval.codes import load_code_set
from eval.baselines import BaselineConfig
from eval.evaluate import EvaluateConfig, evaluate
from eval.index import IndexDirError, build_index, groups_of, merge
from eval.scoring import AQDSearcher
from eval.search import IndexSearcher
from tests.eval.conftest import brute_scores, make_checkpoint, write_code_set, write_corpus

QUIET = dict(log=lambda *_: None)


def _code_sets(tmp_path, data, files=5):
    dkeys, dcodes, dlab, dfeat = data["db"]
    qkeys, qcodes, qlab, qfeat = data["q"]
    write_code_set(tmp_path / "db", data["cb"], dkeys, dcodes, dlab, dfeat, files=files)
    write_code_set(tmp_path / "q", data["cb"], qkeys, qcodes, qlab, qfeat, files=1)
    return load_code_set(tmp_path / "q"), load_code_set(tmp_path / "db")


@pytest.mark.parametrize("kind", ["pq", "fastscan"])
def test_index_round_trip_returns_the_keys_and_scores_of_evaluates_ranking(kind, tmp_path, retrieval_data):
    query, db = _code_sets(tmp_path, retrieval_data)
    m = build_index(tmp_path / "db", tmp_path / "idx", kind=kind, **QUIET)
    assert (m["kind"], m["total"], len(m["groups"]), m["K"]) == (kind, 400, 1, 16)
    searcher = IndexSearcher(tmp_path / "idx")
    s, rows = searcher.search(query.feat, 40)
    # eval.evaluate's headline ranking (its top-10 grid ids) for the same queries
    _, grid = evaluate(query, db, EvaluateConfig(top_k=40, scorings=["aqd"], grid_top=10,
                                                 baselines=BaselineConfig(methods=[])), **QUIET)
    assert np.array_equal(rows[:, :10], grid)
    brute = brute_scores(query.feat, db.codes, db.codebooks)
    ref = np.argsort(-brute, axis=1, kind="stable")[:, :40]
    assert np.array_equal(rows, ref)
    np.testing.assert_allclose(s, np.take_along_axis(brute, ref, 1), rtol=1e-5, atol=1e-5)
    hits = searcher.hits(s[3], rows[3])
    assert [h.key for h in hits] == db.keys[ref[3]].tolist()
    assert [h.labels for h in hits] == [db.labels_of(j) for j in ref[3]]


@pytest.mark.parametrize("kind", ["pq", "fastscan"])
def test_grouped_build_equals_one_build_and_faiss_merges_the_groups(kind, tmp_path, retrieval_data):
    query, db = _code_sets(tmp_path, retrieval_data, files=5)  # 5 code files of 80 rows
    one = build_index(tmp_path / "db", tmp_path / "one", kind=kind, **QUIET)
    grouped = build_index(tmp_path / "db", tmp_path / "grouped", group_rows=170, kind=kind, **QUIET)
    assert [g["rows_count"] for g in grouped["groups"]] == [160, 160, 80]
    assert [g["first_row"] for g in grouped["groups"]] == [0, 160, 320]
    assert len(one["groups"]) == 1
    # a block of duplicates across the group boundary: ties must still come out by ascending row
    q = np.concatenate([query.feat, db.feat[150:155]])
    a = IndexSearcher(tmp_path / "one").search(q, 60)
    b = IndexSearcher(tmp_path / "grouped").search(q, 60)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    merged = merge(tmp_path / "grouped")
    assert merged.ntotal == 400
    s, i = AQDSearcher(db.codebooks, db.codes, "faiss", index=merged).search(q, 60)
    assert np.array_equal(i, a[1])
    np.testing.assert_allclose(s, a[0], rtol=1e-6, atol=1e-6)


def test_groups_pack_whole_code_files():
    files = [{"rows": r} for r in (5, 5, 20, 1, 1)]
    assert [[f["rows"] for f in g] for g in groups_of(files, 10)] == [[5, 5], [20], [1, 1]]


def test_changed_index_file_is_refused_by_its_sha256(tmp_path, retrieval_data):
    _code_sets(tmp_path, retrieval_data)
    build_index(tmp_path / "db", tmp_path / "idx", **QUIET)
    (tmp_path / "idx" / "rows-000000.npz").write_bytes(b"not the rows")
    with pytest.raises(IndexDirError, match=r"rows-000000.npz: sha256 differs"):
        IndexSearcher(tmp_path / "idx").search(np.zeros((1, 8), np.float32), 5)


@pytest.mark.s3
def test_index_on_s3_searches_like_the_local_one(tmp_path, s3_bucket, retrieval_data):
    from shards import storage

    query, _ = _code_sets(tmp_path, retrieval_data)
    dkeys, dcodes, dlab, dfeat = retrieval_data["db"]
    write_code_set(f"s3://{s3_bucket}/codes", retrieval_data["cb"], dkeys, dcodes, dlab, dfeat, files=5)
    build_index(tmp_path / "db", tmp_path / "idx", group_rows=200, **QUIET)
    m = build_index(f"s3://{s3_bucket}/codes", f"s3://{s3_bucket}/idx", group_rows=200, **QUIET)
    assert len(m["groups"]) == 3 and storage.exists(f"s3://{s3_bucket}/idx/index-000002.faiss")
    a = IndexSearcher(tmp_path / "idx").search(query.feat, 25)
    b = IndexSearcher(f"s3://{s3_bucket}/idx").search(query.feat, 25)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


# --- the search command on a trained weak-tag model ------------------------------------------------

def _tagged_model(tmp_path, name, k):
    """A WSDHQ model trained (fit_plain) on a 4-class features corpus where class c carries tag t<c>
    (and label c<c>), its tag semantics artifact, the corpus encoded (eval.encode) and indexed."""
    from eval.encode import EncodeConfig, run
    from trainer.inference import save_inference
    from trainer.encoders import EncoderConfig
    from benchmarks.plain_loop import fit_plain
    from trainer.methods import method_config, OptimConfig, build_method, label_embeddings
    from trainer.tags import TagSemantics

    sem = TagSemantics(names=["t0", "t1", "t2", "t3"], embeddings=label_embeddings(4, 8).numpy(),
                       vocab=["t0", "t1", "t2", "t3"], counts=[1, 1, 1, 1],
                       merge_map={f"t{c}": c for c in range(4)}, config={})
    sem.save(str(tmp_path / "tags"))
    write_corpus(tmp_path / "corpus", 320, 80)
    from shards.manifest import Manifest
    from shards.reader import iter_samples

    samples = [s for url in Manifest.load(str(tmp_path / "corpus")).shard_urls() for s in iter_samples(url)]
    x = torch.tensor(np.stack([s["feat"] for s in samples]), dtype=torch.float32)
    y = torch.from_numpy(sem.targets([s["tags"] for s in samples]))
    schedule = {"update_every": 2} if name == "wsdhq" else {"feature_epochs": 6}
    cfg = method_config(name=name, M=2, K=k, seed=0, **schedule)
    method = build_method(cfg, EncoderConfig(kind="mlp", in_features=16, hidden=32), sem.embeddings)
    assert method.cfg.embed_dim == 8  # method.embed_dim defaults to the tag embeddings' dimension
    fit_plain(method, lambda e: [{"x": x[i:i + 64], "y": y[i:i + 64]} for i in range(0, len(x), 64)], 12,
              OptimConfig(lr=3e-3, decay_every_steps=0))
    save_inference(str(tmp_path / "ckpt"), method,
                   {"tag_semantics_hash": sem.hash, "config": {"data": {"tags": str(tmp_path / "tags")}}})
    run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, **QUIET)
    build_index(tmp_path / "codes", tmp_path / "idx", **QUIET)
    return load_code_set(tmp_path / "codes")


@pytest.mark.parametrize("name", ["wsdhq", "wsdhq_progressive"])
def test_4_bit_codes_learned_from_tags_answer_tag_queries_with_the_items_carrying_the_tag(
        name, tmp_path, capsys):
    from eval.search import main

    codes = _tagged_model(tmp_path, name, k=16)
    assert codes.codes.dtype == np.uint8 and codes.codes.shape == (320, 2) and int(codes.codes.max()) < 16
    assert codes.manifest["bits"] == 8 and json.loads((tmp_path / "idx" / "index_manifest.json").read_text())[
        "kind"] == "fastscan"
    for c in range(4):
        carrying = sum(f"c{c}" in codes.labels_of(i) for i in range(len(codes)))
        assert main(["--index", str(tmp_path / "idx"), "--checkpoint", str(tmp_path / "ckpt"),
                     "--tags", f"T{c}", "-k", "20", "--json"]) == 0  # tags normalised as in training
        out = json.loads(capsys.readouterr().out)
        assert out["query"]["units"] == [f"t{c}"]
        assert carrying >= 20
        assert all(f"c{c}" in r["labels"] for r in out["results"]), (c, [r["labels"] for r in out["results"]])


def test_search_cli_by_key_and_bad_inputs_each_one_line(tmp_path, capsys):
    from eval.search import main

    codes = _tagged_model(tmp_path, "wsdhq", k=16)
    idx, ckpt = str(tmp_path / "idx"), str(tmp_path / "ckpt")
    key = str(codes.keys[5])
    assert main(["--index", idx, "--checkpoint", ckpt, "--key", key, "-k", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = AQDSearcher(codes.codebooks, codes.codes, "torch").search(
        codes.codebooks[np.arange(2), codes.codes[5].astype(int)].sum(0, keepdims=True), 8)
    assert [r["key"] for r in out["results"]] == codes.keys[ref[1][0]].tolist()
    assert out["query"]["labels"] == codes.labels_of(5)

    def error(args):
        assert main(["--index", idx] + args) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err

    assert "unknown tag(s) 'sunset', 'beach'" in error(["--checkpoint", ckpt, "--tags", "sunset t1 beach"])
    assert "key 'nope' is not in the index" in error(["--key", "nope"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    assert "encodes precomputed features" in error(["--checkpoint", ckpt, "--image", str(bad)])
    make_checkpoint(tmp_path / "other", tag_hash="tags-b")
    assert "the index was built from checkpoint" in error(["--checkpoint", str(tmp_path / "other"), "--key", key])
    assert "--image and --tags need --checkpoint" in error(["--tags", "t1"])
    idx = str(tmp_path / "codes")  # a code set, not an index
    assert "no index_manifest.json (not a finished index" in error(["--key", key])


def test_image_query_ranks_as_the_encode_jobs_embedding_of_that_image_and_bad_images_are_one_line(
        tmp_path, capsys):
    from eval.encode import EncodeConfig, run
    from eval.search import main
    from shards.manifest import Manifest
    from shards.reader import iter_samples
    from tests.eval.test_encode import _image_checkpoint

    write_corpus(tmp_path / "corpus", 60, 20)
    _image_checkpoint(tmp_path / "ckpt", image_size=12)
    run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, **QUIET)
    build_index(tmp_path / "codes", tmp_path / "idx", **QUIET)
    cs = load_code_set(tmp_path / "codes")
    sample = [s for url in Manifest.load(str(tmp_path / "corpus")).shard_urls() for s in iter_samples(url)][7]
    (tmp_path / "q.png").write_bytes(sample["image"])
    args = ["--index", str(tmp_path / "idx"), "--checkpoint", str(tmp_path / "ckpt"), "-k", "15"]
    assert main(args + ["--image", str(tmp_path / "q.png"), "--json", "--grid", str(tmp_path / "g.png"),
                        "--shards", str(tmp_path / "corpus")]) == 0
    out = json.loads(capsys.readouterr().out)
    s, i = AQDSearcher(cs.codebooks, cs.codes, "torch").search(cs.feat[7:8], 15)
    assert [r["key"] for r in out["results"]] == cs.keys[i[0]].tolist()
    np.testing.assert_allclose([r["score"] for r in out["results"]], s[0], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "g.png").stat().st_size > 1000
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert main(args + ["--image", str(tmp_path / "bad.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jpg: cannot decode the image" in err and "\n" not in err


def test_wsdhq_index_and_search_subcommands(tmp_path, retrieval_data, capsys):
    from cluster.cli import main

    _, db = _code_sets(tmp_path, retrieval_data)
    assert main(["index", "--codes", str(tmp_path / "db"), "--out", str(tmp_path / "idx"), "--group-rows", "100"]) == 0
    assert "400 rows in 5 group(s), fastscan (M=2, K=16, 8 bits)" in capsys.readouterr().out
    assert main(["search", "--index", str(tmp_path / "idx"), "--key", "db00042", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"top 3 of 400 for key=db00042, labels={db.labels_of(42)}"
    assert len(out) == 4 and all(line.split()[2].startswith("db") for line in out[1:])
    assert main(["index", "--codes", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no codes_manifest.json" in capsys.readouterr().err
