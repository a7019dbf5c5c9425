"""The reader: every sample once per pass across ranks x workers, equal batches per rank, determinism."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from shards.manifest import Manifest
from shards.reader import ReaderConfig, ReaderError, iter_samples, make_loader
from tests.shards.conftest import write_set


def _pass(url, cfg, world, train, epoch=0):
    out = []
    for rank in range(world):
        loader = make_loader(str(url), cfg, rank=rank, world_size=world, epoch=epoch, train=train)
        batches = list(loader)
        out.append((len(loader), batches, loader.skips))
    return out


def test_eval_pass_reads_every_sample_exactly_once_across_2_ranks_x_2_workers(tmp_path):
    m = write_set(tmp_path / "set", n=53, max_count=6)  # 9 uneven shards (8 x 6 + 5)
    assert [s.count for s in m.shards] == [6] * 8 + [5]
    cfg = ReaderConfig(batch_size=4, image_size=8, num_workers=2)
    seen = Counter()
    for n_batches, batches, skips in _pass(tmp_path / "set", cfg, world=2, train=False):
        assert len(batches) == n_batches
        assert not skips
        for b in batches:
            seen.update(b["index"].tolist())
            for k, i, tags, labels in zip(b["key"], b["index"].tolist(), b["tags"], b["labels"]):
                assert k == f"s{i:04d}" and tags == [f"t{i}", "common"] and labels == [f"l{i % 3}"]
    assert sorted(seen) == list(range(53)) and set(seen.values()) == {1}


def test_train_pass_gives_every_rank_the_same_batch_count_from_manifest_counts(tmp_path):
    write_set(tmp_path / "set", n=53, max_count=6)
    cfg = ReaderConfig(batch_size=4, image_size=8, num_workers=2, shuffle_buffer=8)
    results = _pass(tmp_path / "set", cfg, world=2, train=True)
    for n_batches, batches, _ in results:
        assert n_batches == 53 // (2 * 4) == 6
        assert len(batches) == 6 and all(b["image"].shape == (4, 3, 8, 8) for b in batches)
    idx = [i for _, batches, _ in results for b in batches for i in b["index"].tolist()]
    assert len(idx) == 48 and all(0 <= i < 53 for i in idx)


def test_train_shard_order_is_seeded_by_epoch_and_identical_across_reruns(tmp_path):
    write_set(tmp_path / "set", n=40, max_count=4)
    cfg = ReaderConfig(batch_size=5, image_size=8, num_workers=0, shuffle_buffer=0, augment=False)

    def order(epoch):
        return [b["index"].tolist() for b in make_loader(str(tmp_path / "set"), cfg, epoch=epoch)]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(sum(order(1), [])) == list(range(40))  # one rank, one worker: a full epoch, no repeats


def test_fewer_shards_than_slots_still_reads_each_sample_once_in_eval(tmp_path):
    write_set(tmp_path / "set", n=11, max_count=8)  # 2 shards < 2 ranks x 2 workers
    cfg = ReaderConfig(batch_size=2, image_size=8, num_workers=2)
    results = _pass(tmp_path / "set", cfg, world=2, train=False)
    idx = sorted(i for _, batches, _ in results for b in batches for i in b["index"].tolist())
    assert idx == list(range(11))
    assert [len(batches) for _, batches, _ in results] == [n for n, _, _ in results]


def test_fewer_shards_than_slots_in_train_gives_equal_batches(tmp_path):
    write_set(tmp_path / "set", n=11, max_count=8)
    cfg = ReaderConfig(batch_size=2, image_size=8, num_workers=2, shuffle_buffer=4)
    results = _pass(tmp_path / "set", cfg, world=2, train=True)
    assert [len(batches) for _, batches, _ in results] == [2, 2]


def test_too_few_samples_for_one_batch_per_rank_is_refused_with_the_numbers(tmp_path):
    write_set(tmp_path / "set", n=5, max_count=8)
    with pytest.raises(ReaderError, match=r"5 samples < world_size 2 x batch_size 4"):
        make_loader(str(tmp_path / "set"), ReaderConfig(batch_size=4), rank=0, world_size=2)


def test_resampled_train_stream_is_deterministic_per_seed_and_epoch(tmp_path):
    write_set(tmp_path / "set", n=24, max_count=4)
    cfg = ReaderConfig(batch_size=4, image_size=8, num_workers=0, resample=True, shuffle_buffer=0, augment=False)

    def run(epoch, seed=0):
        c = ReaderConfig(**{**cfg.__dict__, "seed": seed})
        return [b["index"].tolist() for b in make_loader(str(tmp_path / "set"), c, epoch=epoch)]

    assert run(0) == run(0)
    assert run(0) != run(1) and run(0) != run(0, seed=1)
    assert len(run(0)) == 6


def test_eval_images_are_resized_center_cropped_and_imagenet_normalised(tmp_path):
    write_set(tmp_path / "set", n=3, max_count=8)
    b = next(iter(make_loader(str(tmp_path / "set"), ReaderConfig(batch_size=3, image_size=16, num_workers=0),
                              train=False)))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (3, 3, 16, 16)
    # sample 2 is a constant image of value 2: every pixel of channel 0 is (2/255 - 0.485) / 0.229
    assert torch.allclose(b["image"][2, 0], torch.full((16, 16), (2 / 255 - 0.485) / 0.229), atol=1e-5)


def test_train_augmentation_changes_with_seed_but_keeps_shape(tmp_path):
    from tests.shards.conftest import jpeg
    from shards.schema import encode_sample
    from shards.writer import ShardSetWriter

    w = ShardSetWriter(str(tmp_path / "set"), "test", "train")
    for i in range(4):
        w.write(encode_sample(f"k{i}", jpeg(i, 32), "jpg", ["a"]))
    w.close()

    def first(seed):
        cfg = ReaderConfig(batch_size=4, image_size=12, num_workers=0, seed=seed, shuffle_buffer=0)
        return next(iter(make_loader(str(tmp_path / "set"), cfg)))

    a, b, c = first(0), first(0), first(1)
    assert a["image"].shape == (4, 3, 12, 12)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])


def test_features_mode_batches_feat_without_decoding_images(tmp_path):
    write_set(tmp_path / "set", n=6, max_count=4, feat_dim=5)
    cfg = ReaderConfig(batch_size=3, num_workers=0, features_only=True)
    batches = list(make_loader(str(tmp_path / "set"), cfg, train=False))
    assert "image" not in batches[0]
    feats = torch.cat([b["feat"] for b in batches])
    idx = torch.cat([b["index"] for b in batches])
    assert feats.shape == (6, 5) and torch.equal(feats[:, 0], idx.float())


def test_iter_samples_yields_one_shard_with_json_decoded_and_image_bytes(tmp_path):
    m = write_set(tmp_path / "set", n=7, max_count=4)
    samples = list(iter_samples(Manifest.load(str(tmp_path / "set")).shard_urls()[1]))
    assert [s["__key__"] for s in samples] == ["s0004", "s0005", "s0006"]
    assert samples[0]["tags"] == ["t4", "common"] and samples[0]["labels"] == ["l1"]
    assert samples[0]["image_ext"] == "png" and samples[0]["image"][:4] == b"\x89PNG"
    tags_only = list(iter_samples(m.shard_urls()[0], fields=["tags.json"]))
    assert [s["tags"][0] for s in tags_only] == ["t0", "t1", "t2", "t3"] and "image" not in tags_only[0]


def test_demo_round_trip_2_ranks_x_2_workers(demo_root):
    cfg = ReaderConfig(batch_size=64, image_size=8, num_workers=2)
    m = Manifest.load(str(demo_root / "train"))
    seen = Counter()
    for _, batches, skips in _pass(demo_root / "train", cfg, world=2, train=False):
        assert not skips
        for b in batches:
            seen.update(b["index"].tolist())
            assert all(len(l) == 1 and l[0].startswith("digit_") for l in b["labels"])
    assert len(seen) == m.total and set(seen.values()) == {1}
    assert np.isclose(sum(seen), m.total * (m.total - 1) / 2)


def test_train_epoch_with_even_shards_covers_every_sample_once_across_2_ranks_x_2_workers(tmp_path):
    write_set(tmp_path / "set", n=48, max_count=6)  # 8 shards: 2 per (rank, worker) slot
    cfg = ReaderConfig(batch_size=4, image_size=8, num_workers=2, shuffle_buffer=6)
    for epoch in (0, 1):
        results = _pass(tmp_path / "set", cfg, world=2, train=True, epoch=epoch)
        idx = [i for _, batches, _ in results for b in batches for i in b["index"].tolist()]
        assert [len(batches) for _, batches, _ in results] == [6, 6]
        assert sorted(idx) == list(range(48))
