import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.codes import load_code_set
from eval.encode import EncodeConfig, EncodeError, run
from shards.config import ConfigError
from shards import storage
from tests.eval.conftest import make_checkpoint, write_corpus
from trainer.inference import load_inference

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(log=lambda *_: None)


def _expected(corpus, ckpt):
    """Codes and features the inference model gives, straight from the shard set's feat.npy."""
    from shards.reader import iter_samples
    from shards.manifest import Manifest

    keys, feats, labels = [], [], []
    for url in Manifest.load(str(corpus)).shard_urls():
        for s in iter_samples(url):
            keys.append(s["__key__"])
            feats.append(s["feat"])
            labels.append(s["labels"])
    model = load_inference(str(ckpt))
    x = torch.tensor(np.stack(feats), dtype=torch.float32)
    return keys, model.encode(x).numpy(), model.embed(x).numpy(), labels


def test_encode_writes_one_row_per_key_with_the_models_codes_and_features(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 50, 16)
    make_checkpoint(tmp_path / "ckpt")
    m = run(tmp_path / "ckpt", corpus, tmp_path / "codes", EncodeConfig(batch_size=7), local=True, **QUIET)
    assert [f["rows"] for f in m["files"]] == [16, 16, 16, 2] and m["total"] == 50
    assert (m["M"], m["K"], m["bits"], m["quantizer_kind"], m["tag_semantics_hash"]) == (2, 16, 8, "additive", "tags-a")
    cs = load_code_set(tmp_path / "codes")
    keys, codes, feats, labels = _expected(corpus, tmp_path / "ckpt")
    assert cs.keys.tolist() == keys and cs.index.tolist() == list(range(50))
    assert np.array_equal(cs.codes, codes)
    np.testing.assert_allclose(cs.feat, feats, rtol=1e-5, atol=1e-6)
    assert cs.labels == labels and {x for ls in labels for x in ls} == {"c0", "c1", "c2", "c3"}


def test_rerun_of_a_finished_job_skips_every_shard_and_changes_nothing(tmp_path):
    write_corpus(tmp_path / "corpus", 30, 10)
    make_checkpoint(tmp_path / "ckpt")
    run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, **QUIET)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "codes").glob("codes-*.npz")}
    lines = []
    run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, log=lines.append)
    assert "3 shards in" in lines[0] and "3 already encoded, 0 to do" in lines[0]
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "codes").glob("codes-*.npz")}


def test_encode_job_killed_half_way_then_rerun_has_exactly_one_row_per_key(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "codes"
    write_corpus(corpus, 1200, 20)  # 60 shards: a job a poll cannot miss the middle of
    make_checkpoint(tmp_path / "ckpt")
    cmd = [sys.executable, "-m", "eval.encode", "--local", "--checkpoint", str(tmp_path / "ckpt"),
           "--shards", str(corpus), "--out", str(out), "batch_size=4"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("codes-*.npz"))) < 3 and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    written = len(list(out.glob("codes-*.npz")))
    assert 3 <= written < 60 and not (out / "codes_manifest.json").exists()
    # a write the kill interrupted leaves only a hidden temp file; simulate one to prove it is cleaned
    (out / ".codes-shard-000029.npz.abc123.tmp").write_bytes(b"partial")
    lines = []
    m = run(tmp_path / "ckpt", corpus, out, EncodeConfig(), local=True, log=lines.append)
    assert any(f"{written} already encoded, {60 - written} to do" in s for s in lines)
    assert any("removed 1 temp file" in s for s in lines)
    cs = load_code_set(out)
    assert len(cs) == 1200 and len(set(cs.keys.tolist())) == 1200 and m["total"] == 1200
    assert sorted(cs.index.tolist()) == list(range(1200))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert np.array_equal(cs.codes, _expected(corpus, tmp_path / "ckpt")[1])


def test_max_shards_stops_early_without_a_manifest_and_a_rerun_finishes(tmp_path):
    write_corpus(tmp_path / "corpus", 30, 10)
    make_checkpoint(tmp_path / "ckpt")
    assert run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(max_shards=2),
               local=True, **QUIET) is None
    assert len(list((tmp_path / "codes").glob("codes-*.npz"))) == 2
    assert not (tmp_path / "codes/codes_manifest.json").exists()
    assert run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True,
               **QUIET)["total"] == 30


def test_resuming_into_codes_of_a_checkpoint_with_another_tag_semantics_hash_is_refused(tmp_path):
    write_corpus(tmp_path / "corpus", 20, 10)
    make_checkpoint(tmp_path / "a", tag_hash="a1b2c3d4e5f6")
    make_checkpoint(tmp_path / "b", tag_hash="c3d4e5f6a7b8", seed=1)
    run(tmp_path / "a", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(max_shards=1), local=True, **QUIET)
    with pytest.raises(EncodeError, match="already holds codes of another job .*tags a1b2c3d4e5f6 vs c3d4e5f6a7b8"):
        run(tmp_path / "b", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, **QUIET)


def test_encode_cli_names_a_missing_checkpoint(tmp_path, capsys):
    from eval.encode import main

    write_corpus(tmp_path / "corpus", 4, 4)
    assert main(["--local", "--checkpoint", str(tmp_path / "none"), "--shards", str(tmp_path / "corpus"),
                 "--out", str(tmp_path / "codes")]) == 2
    assert f"checkpoint {tmp_path / 'none'}: no meta.json" in capsys.readouterr().err


@pytest.mark.s3
def test_encode_to_s3_is_resumable_and_evaluable(tmp_path, s3_bucket):
    write_corpus(tmp_path / "corpus", 30, 10)
    make_checkpoint(tmp_path / "ckpt", name="dpq", m=3, k=8)
    out = f"s3://{s3_bucket}/codes/db"
    assert run(tmp_path / "ckpt", tmp_path / "corpus", out, EncodeConfig(max_shards=1), local=True, **QUIET) is None
    lines = []
    m = run(tmp_path / "ckpt", tmp_path / "corpus", out, EncodeConfig(), local=True, log=lines.append)
    assert any("1 already encoded, 2 to do" in s for s in lines)
    assert m["quantizer_kind"] == "progressive" and m["bits"] == 9
    names = sorted(u.rsplit("/", 1)[1] for u in storage.list_files(out))
    assert names == ["codes-shard-000000.npz", "codes-shard-000001.npz", "codes-shard-000002.npz",
                     "codes_manifest.json", "encode_job.json", "meta.json", "quantizer.npz"]
    cs = load_code_set(out)
    assert len(cs) == 30 and cs.codes.shape == (30, 3)


@pytest.mark.ray
def test_encode_with_a_ray_actor_pool_equals_the_local_encode(tmp_path, ray_local):
    write_corpus(tmp_path / "corpus", 40, 10)
    make_checkpoint(tmp_path / "ckpt")
    lines = []
    cfg = EncodeConfig(actors=1, progress_every_s=0, workers=2)  # 2 shards per call
    m = run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "ray", cfg, log=lines.append)
    assert m["total"] == 40 and m["config"]["workers"] == 2
    assert any(s.startswith("encoded 4/4 shards, 40 samples,") and s.endswith("samples/s") for s in lines)
    run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "local", EncodeConfig(), local=True, **QUIET)
    a, b = load_code_set(tmp_path / "ray"), load_code_set(tmp_path / "local")
    assert a.keys.tolist() == b.keys.tolist() and np.array_equal(a.codes, b.codes)


def test_an_unreadable_code_file_is_encoded_again_on_rerun(tmp_path):
    write_corpus(tmp_path / "corpus", 30, 10)
    make_checkpoint(tmp_path / "ckpt")
    run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, **QUIET)
    good = load_code_set(tmp_path / "codes").codes
    (tmp_path / "codes/codes-shard-000001.npz").write_bytes(b"not an npz")
    lines = []
    run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, log=lines.append)
    assert "2 already encoded, 1 to do" in lines[0]
    assert np.array_equal(load_code_set(tmp_path / "codes").codes, good)


def _image_checkpoint(url, image_size):
    from trainer.inference import save_inference
    from trainer.encoders import EncoderConfig
    from trainer.methods import method_config, build_method, label_embeddings

    torch.manual_seed(0)
    method = build_method(method_config(name="wsdhq", embed_dim=8, M=2, K=16, seed=0),
                          EncoderConfig(kind="small_cnn", width=4), label_embeddings(4, 8))
    method.codebook_update(method.embed(torch.randn(64, 3, 12, 12)))
    method.encoder.eval()
    save_inference(str(url), method, {"tag_semantics_hash": "tags-a"}, image_size=image_size)


def test_image_encoder_is_fed_the_size_it_was_trained_at(tmp_path):
    """Regression: the job once decoded at a fixed 224 px whatever the training size."""
    from shards.images import decode_rgb
    from shards.manifest import Manifest
    from shards.reader import iter_samples
    from shards.transforms import eval_transform

    corpus = tmp_path / "corpus"
    write_corpus(corpus, 20, 10)
    _image_checkpoint(tmp_path / "ckpt", image_size=12)
    run(tmp_path / "ckpt", corpus, tmp_path / "codes", EncodeConfig(batch_size=8), local=True, **QUIET)
    model = load_inference(str(tmp_path / "ckpt"))
    assert model.image_size == 12
    imgs = [eval_transform(decode_rgb(s["image"], s["__key__"]), 12)
            for url in Manifest.load(str(corpus)).shard_urls() for s in iter_samples(url)]
    x = torch.stack(imgs)
    assert x.shape == (20, 3, 12, 12)
    cs = load_code_set(tmp_path / "codes")
    assert np.array_equal(cs.codes, model.encode(x).numpy())
    np.testing.assert_allclose(cs.feat, model.embed(x).numpy(), rtol=1e-5, atol=1e-6)


def test_image_checkpoint_without_a_recorded_size_is_refused_by_name(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 4, 4)
    _image_checkpoint(tmp_path / "ckpt", image_size=None)
    with pytest.raises(EncodeError, match=r"records no image_size: pass image_size=<pixels>"):
        run(tmp_path / "ckpt", corpus, tmp_path / "codes", EncodeConfig(), local=True, **QUIET)
    # an explicit size is accepted
    m = run(tmp_path / "ckpt", corpus, tmp_path / "codes", EncodeConfig(image_size=12), local=True, **QUIET)
    assert m["total"] == 4


def _jpeg(rng, w: int, h: int) -> bytes:
    """A photo-like JPEG: smooth colour field plus fine noise (so resizing has detail to filter)."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(xx / 13.0 + c) * np.cos(yy / 9.0 - c) for c in range(3)], -1)
    rgb = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _grey_levels_off(img, size) -> np.ndarray:
    """|eval_pixels - the float resize (torch antialias) + crop the eval path used before|, in grey
    levels. Pillow's two passes (horizontal, vertical) each round to uint8: at most ~1 level."""
    from shards.transforms import center_crop_resize, eval_pixels, to_tensor

    ref = center_crop_resize(to_tensor(img), size).permute(1, 2, 0).numpy() * 255
    return np.abs(eval_pixels(img, size).astype(np.float32) - ref)


ONE_GREY_LEVEL = 1.01  # float32 slack on the reference (measured up to 1.001 on real photos)


def test_eval_transform_is_within_one_grey_level_of_the_float_resize_and_batches_equal_it_exactly():
    from shards.images import decode_rgb
    from PIL import Image

    from shards.transforms import eval_pixels, eval_transform, normalise, normalise_batch, to_tensor

    rng = np.random.default_rng(0)
    # shrink (landscape, portrait, 1/2 DCT draft), no resize (short side = size), enlarge
    cases = [(340, 256, 64, 64), (150, 230, 48, None), (96, 64, 64, None), (40, 30, 56, None)]
    singles, pixels = [], []
    for w, h, size, draft in cases:
        img = decode_rgb(_jpeg(rng, w, h), "x", min_side=draft)
        x = eval_transform(img, size)
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        off = _grey_levels_off(img, size)
        assert off.max() <= ONE_GREY_LEVEL and off.mean() < 0.4, (w, h, size, off.max(), off.mean())
        # normalised exactly as the train path normalises its pixels
        assert torch.equal(x, normalise(to_tensor(Image.fromarray(eval_pixels(img, size)))))
        if size == 64:
            singles.append(x)
            pixels.append(eval_pixels(img, size))
    # the job's per-batch normalisation gives exactly the reader's per-image tensors
    assert torch.equal(normalise_batch(torch.from_numpy(np.stack(pixels))), torch.stack(singles))
    # no resize needed: the pixels are the image's own (centre crop of the longer side only)
    img = decode_rgb(_jpeg(rng, 96, 64), "x")
    assert np.array_equal(eval_pixels(img, 64), np.asarray(img)[:, 16:80])


@pytest.mark.real_data
def test_eval_transform_on_real_photos_is_within_one_grey_level_of_the_float_resize(mirflickr_real):
    from shards.images import decode_rgb

    for k in range(1, 31):
        img = decode_rgb((mirflickr_real / f"images_256/im{k}.jpg").read_bytes(), f"im{k}", min_side=112)
        off = _grey_levels_off(img, 112)
        assert off.max() <= ONE_GREY_LEVEL and off.mean() < 0.4, (k, off.max(), off.mean())


def _encoder(tmp_path, cfg):
    """A ``ShardEncoder`` over ``tmp_path/corpus`` and its task list for every shard."""
    from eval.encode import ShardEncoder
    from shards.manifest import Manifest

    source = Manifest.load(str(tmp_path / "corpus"))
    return (ShardEncoder(str(tmp_path / "ckpt"), cfg, source),
            [(i, str(tmp_path / f"codes-{i}.npz")) for i in range(len(source.shards))])


def _image_corpus_with_a_corrupt_shard(tmp_path):
    """18 JPEGs of three sizes in shards of 5; the second shard's 5 images are not JPEGs."""
    from shards.schema import encode_sample
    from shards.writer import ShardSetWriter

    rng = np.random.default_rng(1)
    w = ShardSetWriter(str(tmp_path / "corpus"), "eval-test", "database", label_names=["a", "b"], max_count=5)
    for i in range(18):
        data = b"not a jpeg" if 5 <= i < 10 else _jpeg(rng, *[(120, 90), (90, 140), (64, 64)][i % 3])
        w.write(encode_sample(f"k{i:03d}", data, "jpg", ["t"], ["a" if i % 2 else "b"]))
    w.close()
    _image_checkpoint(tmp_path / "ckpt", image_size=32)


@pytest.mark.parametrize("workers, batch_sizes", [(0, [1, 4, 4, 4]), (1, [1, 4, 4, 4]), (2, [2, 3, 4, 4])])
def test_image_job_reads_across_shards_into_full_batches_and_equals_the_readers_eval_path(
        tmp_path, workers, batch_sizes):
    """The job's batches span shard boundaries (the model only sees full batches, but the last of
    each worker's stream) and its codes equal the model on the reader's eval-mode tensors, whether
    the job's own process (0) or DataLoader workers read; a shard with no usable sample still gets
    its (empty) code file and its skips counted. Two workers read shards 0, 2 (10 rows) and 1, 3 (3 rows)."""
    from eval.codes import read_code_file
    from shards.reader import ReaderConfig, make_loader

    _image_corpus_with_a_corrupt_shard(tmp_path)
    enc, todo = _encoder(tmp_path, EncodeConfig(batch_size=4, workers=workers))
    sizes, embed = [], enc.model.embed
    enc.model.embed = lambda x: sizes.append(len(x)) or embed(x)
    entries = sorted(enc.encode_shards(todo), key=lambda e: e["shard"])
    assert sorted(sizes) == batch_sizes  # 13 usable samples in shards of 5, 0, 5, 3
    assert [e["rows"] for e in entries] == [5, 0, 5, 3]
    assert [e["skipped"] for e in entries] == [{}, {"corrupt_image": 5}, {}, {}]
    got = [read_code_file(t[1], Path(t[1]).read_bytes()) for t in todo]
    batch = next(iter(make_loader(str(tmp_path / "corpus"), ReaderConfig(batch_size=20, image_size=32,
                                                                         num_workers=0), train=False)))
    assert [k for d in got for k in d["key"].tolist()] == batch["key"]
    assert [i for d in got for i in d["index"].tolist()] == batch["index"].tolist() == [0, 1, 2, 3, 4, *range(10, 18)]
    model = load_inference(str(tmp_path / "ckpt"))
    assert np.array_equal(np.concatenate([d["codes"] for d in got]), model.encode(batch["image"]).numpy())
    np.testing.assert_allclose(np.concatenate([d["feat"] for d in got]), model.embed(batch["image"]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_killed_reading_worker_fails_the_call_leaves_no_process_behind_and_the_next_call_reads(tmp_path):
    import multiprocessing

    write_corpus(tmp_path / "corpus", 600, 20)  # 200 batches: the pass is far from its end at the kill
    make_checkpoint(tmp_path / "ckpt")
    enc, todo = _encoder(tmp_path, EncodeConfig(batch_size=3, workers=2))
    calls = enc.encode_shards(todo)
    next(calls)
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    # torch's error, in one of its forms: "DataLoader worker (pid N) is killed by signal: Killed." (its
    # SIGCHLD handler, which raises in whatever runs when the signal comes: hence the kill inside the
    # block), "... exited unexpectedly", or a reset connection while fetching that worker's batch
    with pytest.raises((RuntimeError, ConnectionError)):
        os.kill(workers[0].pid, signal.SIGKILL)
        list(calls)
    assert multiprocessing.active_children() == []
    assert [e["rows"] for e in enc.encode_shards(todo[:4])] == [20] * 4  # the next call reads, fresh workers
    assert multiprocessing.active_children() == []


def test_local_run_leaves_no_reading_worker_behind_even_when_the_input_is_refused(tmp_path):
    import multiprocessing

    write_corpus(tmp_path / "corpus", 6, 3, feat_dim=12)
    make_checkpoint(tmp_path / "ckpt", feat_dim=16)
    for workers in (0, 2):
        # the model takes the first worker's first batch first: shard 0 is named either way
        with pytest.raises(EncodeError, match=r"shard-000000.tar:item00000: feat.npy holds 12 values, the "
                                              r"checkpoint's encoder takes 16$"):
            run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / f"codes{workers}",
                EncodeConfig(workers=workers), local=True, **QUIET)
        assert multiprocessing.active_children() == []
    with pytest.raises(ConfigError, match=r"^workers: must be >= 0, got -1$"):  # refused before any work
        EncodeConfig(workers=-1)


def test_features_of_another_width_than_the_encoder_takes_are_refused_naming_the_sample(tmp_path):
    write_corpus(tmp_path / "corpus", 6, 3, feat_dim=12)
    make_checkpoint(tmp_path / "ckpt", feat_dim=16)
    with pytest.raises(EncodeError, match=r"shard-000000.tar:item00000: feat.npy holds 12 values, "
                                          r"the checkpoint's encoder takes 16"):
        run(tmp_path / "ckpt", tmp_path / "corpus", tmp_path / "codes", EncodeConfig(), local=True, **QUIET)
