"""Embedding sets: round trip, the reader's contract across ranks and workers, clip-retrieval sets as they
are, every bad input as one error naming the file, S3, and resumable writing."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards.embedding_loader import make_embedding_loader
from shards.embeddings import EmbeddingSetError, EmbeddingSetWriter, is_embedding_set, open_embedding_set
from shards.reader import ReaderConfig, ReaderError, make_loader

SIZES = [7, 12, 5, 9, 11]  # 44 rows in 5 uneven parts


def rows(i0: int, n: int, dim: int) -> np.ndarray:
    """Row i holds i in column 0 and i / 8 + j / 4 elsewhere: exact in float16 for i < 64."""
    i = np.arange(i0, i0 + n, dtype=np.float32)[:, None]
    out = i / 8 + np.arange(dim, dtype=np.float32)[None, :] / 4
    out[:, 0] = i[:, 0]
    return out


def write(url, dtype="float16", dim=6, sizes=SIZES, labels=True) -> EmbeddingSetWriter:
    w = EmbeddingSetWriter(str(url), dim=dim, dtype=dtype, source={"test": "synthetic"})
    off = 0
    for p, n in enumerate(sizes):
        idx = range(off, off + n)
        w.write_part(f"{p:05d}", [f"s{i:04d}" for i in idx], rows(off, n, dim),
                     [[f"t{i}", "common"] for i in idx], [[f"l{i % 3}"] for i in idx] if labels else None)
        off += n
    return w


def passes(url, world, train, batch_size=4, workers=2, epoch=0, seed=0):
    """Per rank: (len(loader), batches)."""
    cfg = ReaderConfig(batch_size=batch_size, num_workers=workers, seed=seed)
    out = []
    for rank in range(world):
        loader = make_loader(str(url), cfg, rank=rank, world_size=world, epoch=epoch, train=train)
        out.append((len(loader), list(loader)))
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_keeps_values_keys_tags_and_labels_exactly(tmp_path, dtype):
    es = write(tmp_path / "set", dtype).close()
    assert (es.dim, es.dtype, len(es), [p.rows for p in es.parts]) == (6, dtype, 44, SIZES)
    assert es.label_names == ["l0", "l1", "l2"] and es.source == {"test": "synthetic"}
    manifest = json.loads((tmp_path / "set" / "embeddings.json").read_text())
    assert manifest["format"] == "wsdhq-embeddings" and manifest["version"] == 1
    assert [(p["name"], p["rows"]) for p in manifest["parts"]] == [(f"{i:05d}", n) for i, n in enumerate(SIZES)]
    stored = np.load(tmp_path / "set" / "img_emb" / "img_emb_00001.npy")
    assert stored.dtype == np.dtype(dtype) and stored.shape == (12, 6)
    [(n, batches)] = passes(tmp_path / "set", 1, train=False, batch_size=5, workers=0)
    assert n == len(batches) == 9
    index = np.concatenate([b["index"].numpy() for b in batches])
    assert index.tolist() == list(range(44))
    feat = np.concatenate([b["feat"].numpy() for b in batches])
    assert feat.dtype == np.float32 and np.array_equal(feat, rows(0, 44, 6))
    assert [k for b in batches for k in b["key"]] == [f"s{i:04d}" for i in range(44)]
    assert [t for b in batches for t in b["tags"]] == [[f"t{i}", "common"] for i in range(44)]
    assert [lab for b in batches for lab in b["labels"]] == [[f"l{i % 3}"] for i in range(44)]


def test_absent_labels_read_as_empty_lists_and_no_label_names(tmp_path):
    es = write(tmp_path / "set", labels=False).close()
    assert es.label_names is None
    [(_, batches)] = passes(tmp_path / "set", 1, train=False, workers=0)
    assert all(lab == [] for b in batches for lab in b["labels"])


@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_eval_reads_every_row_exactly_once_across_ranks_and_workers(tmp_path, world, workers):
    write(tmp_path / "set").close()
    seen = Counter()
    for n, batches in passes(tmp_path / "set", world, train=False, batch_size=4, workers=workers):
        assert len(batches) == n
        for b in batches:
            seen.update(b["index"].tolist())
            assert b["feat"][:, 0].tolist() == b["index"].float().tolist()
    assert sorted(seen) == list(range(44)) and set(seen.values()) == {1}


@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_train_gives_every_rank_equal_full_batches_and_no_row_twice_in_an_epoch(tmp_path, world, workers):
    write(tmp_path / "set").close()
    results = passes(tmp_path / "set", world, train=True, batch_size=4, workers=workers)
    expect = 44 // (world * 4)  # 11 batches on one rank, 5 on each of two
    assert [(n, len(batches)) for n, batches in results] == [(expect, expect)] * world
    assert all(len(b["key"]) == 4 and b["feat"].shape == (4, 6) for _, batches in results for b in batches)
    index = [i for _, batches in results for b in batches for i in b["index"].tolist()]
    assert len(index) == len(set(index)) == expect * world * 4  # 44 on one rank; 40 of 44 on two
    for _, batches in results:  # rows travel with their metadata
        for b in batches:
            assert b["key"] == [f"s{i:04d}" for i in b["index"].tolist()]
            assert b["feat"][:, 0].tolist() == b["index"].float().tolist()


def test_too_few_rows_for_one_batch_per_rank_is_refused_with_the_numbers(tmp_path):
    write(tmp_path / "set", sizes=[3, 4]).close()
    with pytest.raises(ReaderError, match=r"set: 7 samples < world_size 2 x batch_size 4; no full batch per rank"):
        make_loader(str(tmp_path / "set"), ReaderConfig(batch_size=4), rank=0, world_size=2)


def test_train_order_is_a_function_of_seed_epoch_rank_and_world_size_not_of_workers(tmp_path):
    write(tmp_path / "set").close()

    def order(epoch, seed=0, world=2, workers=2):
        return [[b["index"].tolist() for b in batches]
                for _, batches in passes(tmp_path / "set", world, True, 4, workers, epoch, seed)]

    a = order(0)
    assert a == order(0)
    assert a != order(1) and a != order(0, seed=1)
    for rank in range(2):  # a rank's rows do not depend on how many DataLoader workers read them
        assert sorted(sum(a[rank], [])) == sorted(sum(order(0, workers=0)[rank], []))
    # rows are shuffled across parts: some batch mixes rows of more than one part
    bounds = np.cumsum(SIZES)
    assert any(len(set(np.searchsorted(bounds, b, side="right"))) > 1 for rank in a for b in rank)


def _clip_retrieval_set(root: Path, parts: dict[str, int], dim=4, dtype=np.float16, columns=("image_path", "caption")):
    """Written as clip-retrieval's inference writes it: img_emb_<n>.npy + metadata_<n>.parquet, no manifest."""
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    start = 0
    for name, n in parts.items():
        np.save(root / "img_emb" / f"img_emb_{name}.npy", rows(start, n, dim).astype(dtype))
        table = {"image_path": [f"images/{i:05d}.jpg" for i in range(start, start + n)],
                 "caption": [f"A dog number {i} on the beach at sunset" for i in range(start, start + n)],
                 "url": [f"http://example.com/{i}.jpg" for i in range(start, start + n)],
                 "category": [f"c{i % 2}" for i in range(start, start + n)]}
        pq.write_table(pa.table({c: table[c] for c in (*columns, "url", "category")}),
                       root / "metadata" / f"metadata_{name}.parquet")
        start += n


def test_clip_retrieval_layout_reads_as_it_is(tmp_path):
    root = tmp_path / "clip"
    _clip_retrieval_set(root, {"0": 3, "2": 4, "10": 2})
    assert is_embedding_set(str(root)) and not (root / "embeddings.json").exists()
    es = open_embedding_set(str(root), label_column="category")
    assert (es.kind, es.dim, es.dtype, len(es)) == ("clip-retrieval", 4, "float16", 9)
    assert [p.name for p in es.parts] == ["0", "2", "10"]  # numeric part order, as clip-retrieval numbers them
    assert es.label_names == ["c0", "c1"]
    batches = list(make_embedding_loader(es, ReaderConfig(batch_size=4, num_workers=0), train=False))
    assert [k for b in batches for k in b["key"]] == [f"images/{i:05d}.jpg" for i in range(9)]
    assert batches[0]["tags"][0] == ["dog", "number", "beach", "sunset"]  # the LAION converter's caption rule
    assert [lab for b in batches for lab in b["labels"]] == [[f"c{i % 2}"] for i in range(9)]
    assert np.array_equal(np.concatenate([b["feat"].numpy() for b in batches]), rows(0, 9, 4))
    # through the shard reader's entry point too, by URL (no label column: empty labels)
    b = next(iter(make_loader(str(root), ReaderConfig(batch_size=9, num_workers=0), train=False)))
    assert b["index"].tolist() == list(range(9)) and b["labels"] == [[]] * 9


def test_clip_retrieval_set_without_key_or_image_path_uses_part_and_row(tmp_path):
    root = tmp_path / "clip"
    _clip_retrieval_set(root, {"0": 2, "1": 2}, columns=("caption",))
    b = next(iter(make_embedding_loader(str(root), ReaderConfig(batch_size=4, num_workers=0), train=False)))
    assert b["key"] == ["0/0", "0/1", "1/0", "1/1"]


def test_a_set_written_with_key_and_tags_columns_only_takes_them_as_they_are(tmp_path):
    root = tmp_path / "kt"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    np.save(root / "img_emb" / "img_emb_0.npy", rows(0, 3, 4).astype(np.float32))
    pq.write_table(pa.table({"key": ["a", "b", "c"], "tags": [["x", "y"], [], None], "caption": ["dog"] * 3}),
                   root / "metadata" / "metadata_0.parquet")
    es = open_embedding_set(str(root))
    assert (es.key_column, es.tags_column, es.label_column, es.dtype) == ("key", "tags", None, "float32")
    b = next(iter(make_embedding_loader(es, ReaderConfig(batch_size=3, num_workers=0), train=False)))
    assert b["key"] == ["a", "b", "c"] and b["tags"] == [["x", "y"], [], []] and b["labels"] == [[], [], []]


# ---- bad input: one error naming the file, before any batch ------------------------------------------------

def test_array_rows_differing_from_metadata_rows_is_refused_naming_both_files(tmp_path):
    write(tmp_path / "set").close()
    npy = tmp_path / "set" / "img_emb" / "img_emb_00002.npy"
    np.save(npy, rows(0, 6, 6).astype(np.float16))  # 6 rows; the metadata has 5
    with pytest.raises(EmbeddingSetError, match=r"metadata_00002\.parquet: 5 metadata rows but .*img_emb_00002\.npy "
                                                r"has 6 array rows"):
        open_embedding_set(str(tmp_path / "set"), )
    (tmp_path / "set" / "embeddings.json").unlink()  # the same without our manifest
    with pytest.raises(EmbeddingSetError, match=r"metadata_00002\.parquet: 5 metadata rows"):
        open_embedding_set(str(tmp_path / "set"))


@pytest.mark.parametrize("dtype", [np.float64, np.int8])
def test_a_dtype_the_reader_does_not_know_is_refused_naming_the_file(tmp_path, dtype):
    _clip_retrieval_set(tmp_path / "clip", {"0": 3}, dtype=dtype)
    with pytest.raises(EmbeddingSetError, match=rf"img_emb_0\.npy: dtype {np.dtype(dtype).name} is not one the "
                                                r"reader knows \(float16, float32\)"):
        open_embedding_set(str(tmp_path / "clip"))


def test_a_truncated_npy_is_refused_naming_the_file(tmp_path):
    write(tmp_path / "set").close()
    npy = tmp_path / "set" / "img_emb" / "img_emb_00003.npy"
    npy.write_bytes(npy.read_bytes()[:-10])
    with pytest.raises(EmbeddingSetError, match=r"img_emb_00003\.npy: \d+ bytes but its header says 9 x 6 float16 "
                                                r"\(\d+ bytes\): the file is truncated"):
        open_embedding_set(str(tmp_path / "set"))


def test_a_part_listed_in_the_manifest_but_missing_is_refused_naming_it(tmp_path):
    write(tmp_path / "set").close()
    (tmp_path / "set" / "img_emb" / "img_emb_00004.npy").unlink()
    with pytest.raises(EmbeddingSetError, match=r"img_emb_00004\.npy: part '00004' listed in .*embeddings\.json "
                                                r"does not exist"):
        open_embedding_set(str(tmp_path / "set"))


def test_dims_differing_between_parts_are_refused_naming_the_file(tmp_path):
    _clip_retrieval_set(tmp_path / "clip", {"0": 3, "1": 3})
    np.save(tmp_path / "clip" / "img_emb" / "img_emb_1.npy", rows(3, 3, 5).astype(np.float16))
    with pytest.raises(EmbeddingSetError, match=r"img_emb_1\.npy: dim 5 differs from the set's dim 4"):
        open_embedding_set(str(tmp_path / "clip"))


def test_writer_refuses_wrong_shapes_and_unknown_dtypes(tmp_path):
    with pytest.raises(EmbeddingSetError, match=r"dtype 'float64' is not one the reader knows"):
        EmbeddingSetWriter(str(tmp_path / "s"), dim=4, dtype="float64")
    w = EmbeddingSetWriter(str(tmp_path / "s"), dim=4)
    with pytest.raises(EmbeddingSetError, match=r"part 'a': embeddings of shape \(2, 5\), expected \(2, 4\)"):
        w.write_part("a", ["x", "y"], np.zeros((2, 5)), [[], []])
    with pytest.raises(EmbeddingSetError, match=r"part 'a': 2 keys, 1 tag lists: lengths differ"):
        w.write_part("a", ["x", "y"], np.zeros((2, 4)), [[]])
    assert not (tmp_path / "s").exists()


# ---- resumable, idempotent writing ---------------------------------------------------------------------

def test_a_finished_part_is_skipped_a_half_written_one_is_absent_and_rewriting_replaces(tmp_path, monkeypatch):
    url = str(tmp_path / "set")
    w = EmbeddingSetWriter(url, dim=6)
    w.write_part("00000", ["a", "b"], rows(0, 2, 6), [["x"], ["y"]])
    assert w.has_part("00000") and not w.has_part("00001")

    def killed(*args, **kwargs):  # the run dies after the array is written, before its parquet
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        w.write_part("00001", ["c"], rows(2, 1, 6), [["z"]])
    monkeypatch.undo()
    assert (tmp_path / "set" / "img_emb" / "img_emb_00001.npy").exists() and not w.has_part("00001")
    assert [p.name for p in open_embedding_set(url).parts] == ["00000"]  # by listing: the orphan array is left out
    # a resumed writer skips the finished part and re-writes the other; re-writing a finished one replaces it
    w2 = EmbeddingSetWriter(url, dim=6)
    assert w2.has_part("00000")
    w2.write_part("00001", ["c", "d"], rows(2, 2, 6), [["z"], []])
    w2.write_part("00000", ["a"], rows(10, 1, 6), [["x2"]])
    es = w2.close()
    assert [(p.name, p.rows) for p in es.parts] == [("00000", 1), ("00001", 2)]
    b = next(iter(make_embedding_loader(es, ReaderConfig(batch_size=3, num_workers=0), train=False)))
    assert b["key"] == ["a", "c", "d"] and b["tags"] == [["x2"], ["z"], []] and b["feat"][:, 0].tolist() == [10, 2, 3]
    with pytest.raises(EmbeddingSetError, match=r"existing set is dim 6 float16, this writer dim 8 float16"):
        EmbeddingSetWriter(url, dim=8)


# ---- S3 --------------------------------------------------------------------------------------------------

@pytest.mark.s3
def test_s3_round_trip_through_moto_with_a_local_array_cache(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("WSDHQ_CACHE_DIR", str(tmp_path / "cache"))
    url = f"s3://{s3_bucket}/emb"
    w = write(url, sizes=[7, 12, 5])
    assert w.has_part("00001") and not w.has_part("00003")
    es = w.close()
    assert is_embedding_set(url) and (es.dim, len(es), es.label_names) == (6, 24, ["l0", "l1", "l2"])
    seen = Counter()
    for _, batches in passes(url, 2, train=False, batch_size=5, workers=0):
        for b in batches:
            seen.update(b["index"].tolist())
            assert np.array_equal(b["feat"].numpy(), rows(0, 24, 6)[b["index"].numpy()])
            assert b["key"] == [f"s{i:04d}" for i in b["index"].tolist()]
    assert sorted(seen) == list(range(24)) and set(seen.values()) == {1}
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 3  # each part fetched once
    import boto3

    boto3.client("s3").delete_object(Bucket=s3_bucket, Key="emb/img_emb/img_emb_00002.npy")
    with pytest.raises(EmbeddingSetError, match=rf"s3://{s3_bucket}/emb/img_emb/img_emb_00002\.npy: part '00002' "
                                                r"listed in .* does not exist"):
        open_embedding_set(url)
