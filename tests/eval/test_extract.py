"""The feature-extraction job: frozen backbone over image shards -> features-mode shards or an
embedding set; per shard, resumable, idempotent, one clear error for a wrong request."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.extract import ExtractConfig, ExtractError, ShardExtractor, main, run
from shards.converters.demo import convert_demo
from shards.manifest import Manifest
from shards.reader import iter_samples
from shards.writer import ShardingConfig
from trainer.encoders import EncoderConfig

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(log=lambda *_: None)
RESNET = dict(encoder=EncoderConfig(kind="resnet18"), image_size=32, batch_size=16)  # random init: fast


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The demo's real digit images: query 93 / train 1233 / database 1704, 20 samples a shard."""
    root = tmp_path_factory.mktemp("digits")
    convert_demo(str(root), sharding=ShardingConfig(max_count=20, query_fraction=0.056, train_fraction=0.7))
    return root


def _samples(shard_set) -> list[dict]:
    return [s for url in Manifest.load(str(shard_set)).shard_urls()
            for s in iter_samples(url, fields=["feat.npy", "labels.json", "tags.json"])]


def test_features_shards_keep_every_key_tag_and_label_and_hold_the_backbones_features(digits, tmp_path):
    cfg = ExtractConfig(**RESNET)
    run(digits / "query", tmp_path / "q", cfg, local=True, **QUIET)
    src, out = _samples(digits / "query"), _samples(tmp_path / "q")
    assert [s["__key__"] for s in out] == [s["__key__"] for s in src] and len(out) == 93
    assert [s["tags"] for s in out] == [s["tags"] for s in src]
    assert [s["labels"] for s in out] == [s["labels"] for s in src]
    m_in, m_out = Manifest.load(str(digits / "query")), Manifest.load(str(tmp_path / "q"))
    assert [e.count for e in m_out.shards] == [e.count for e in m_in.shards]
    assert (m_out.split, m_out.label_names) == ("query", m_in.label_names)
    # the stored vector is the backbone's output on the eval transform of that image
    ex = ShardExtractor(cfg, [])
    from shards.images import decode_rgb
    from shards.transforms import eval_pixels

    first = next(iter_samples(Manifest.load(str(digits / "query")).shard_urls()[0]))
    pix = eval_pixels(decode_rgb(first["image"], "x", min_side=32), 32)[None].copy()
    np.testing.assert_allclose(out[0]["feat"], ex.features(torch.from_numpy(pix))[0], rtol=1e-4, atol=1e-5)
    assert out[0]["feat"].shape == (512,)


def test_a_dataset_root_is_extracted_split_by_split_in_one_job(digits, tmp_path):
    lines = []
    outs = run(digits, tmp_path / "f", ExtractConfig(**RESNET), local=True, log=lines.append)
    assert [Path(o).name for o in outs] == ["train", "query", "database"]
    assert [Manifest.load(o).total for o in outs] == [1233, 93, 1704]
    assert "153 shards in 3 set(s): 0 already extracted, 153 to do" in lines[0]


def test_extraction_killed_half_way_then_rerun_has_exactly_one_row_per_key(digits, tmp_path):
    out = tmp_path / "db"
    cmd = [sys.executable, "-m", "eval.extract", "--local", "--shards", str(digits / "database"), "--out", str(out),
           "encoder.kind=resnet18", "image_size=32", "batch_size=8"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(list(out.glob("shard-*.tar"))) < 3 and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    written = len(list(out.glob("shard-*.tar")))
    assert 3 <= written < 86 and not (out / "manifest.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    lines = []
    run(digits / "database", out, ExtractConfig(**RESNET, **{}), local=True, log=lines.append)
    assert f"{written} already extracted, {86 - written} to do" in lines[0]
    assert all(before[n] == (out / n).stat().st_mtime_ns for n in before)  # finished parts are not redone
    keys = [s["__key__"] for s in _samples(out)]
    assert len(keys) == 1704 == len(set(keys))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow missing")
def test_embedding_set_format_is_readable_by_the_embedding_reader(digits, tmp_path):
    from shards.embeddings import open_embedding_set

    run(digits / "query", tmp_path / "e", ExtractConfig(**RESNET, format="embeddings", dtype="float16"),
        local=True, **QUIET)
    es = open_embedding_set(str(tmp_path / "e"))
    assert (len(es), es.dim, es.dtype) == (93, 512, "float16")
    assert [p.name for p in es.parts] == [f"shard-{i:06d}" for i in range(5)]


@pytest.mark.parametrize("args, message", [
    (["encoder.kind=mlp", "encoder.in_features=64"], "encoder.kind=mlp: extraction needs a pretrained image backbone"),
    (["encoder.kind=efficientnet_lite0", "encoder.trainable=2"], "encoder.trainable=2: features are extracted by a frozen"),
    (["batch_size=0"], "batch_size=0: must be >= 1"),
])
def test_a_wrong_request_is_one_line_and_exit_2(digits, tmp_path, capsys, args, message):
    assert main(["--local", "--shards", str(digits / "query"), "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_another_backbone_into_the_same_output_is_refused(digits, tmp_path):
    run(digits / "query", tmp_path / "q", ExtractConfig(**RESNET), local=True, **QUIET)
    with pytest.raises(ExtractError, match="already holds features of another job .*image_size"):
        run(digits / "query", tmp_path / "q", ExtractConfig(**{**RESNET, "image_size": 48}), local=True, **QUIET)


def test_pyramid_head_features_are_stored_as_the_features_and_name_the_job(digits, tmp_path):
    """encoder.head=pyramid_hybrid: the parameter-free pyramid vector is what features mode reads;
    the head is part of the job's identity, so plain features are never mixed into the same set."""
    pyr = EncoderConfig(kind="resnet18", head="pyramid_hybrid", pyramid_stages=[3, 4], pyramid_scales=[1, 2])
    cfg = ExtractConfig(**{**RESNET, "encoder": pyr})
    run(digits / "query", tmp_path / "q", cfg, local=True, **QUIET)
    out = _samples(tmp_path / "q")
    assert len(out) == 93 and out[0]["feat"].shape == ((256 + 512) * 5 * 2,)
    assert "resnet18 pyramid_hybrid features of" in Manifest.load(str(tmp_path / "q")).source
    ex = ShardExtractor(cfg, [])
    from shards.images import decode_rgb
    from shards.transforms import eval_pixels

    first = next(iter_samples(Manifest.load(str(digits / "query")).shard_urls()[0]))
    pix = eval_pixels(decode_rgb(first["image"], "x", min_side=32), 32)[None].copy()
    np.testing.assert_allclose(out[0]["feat"], ex.features(torch.from_numpy(pix))[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ExtractError, match="already holds features of another job .*encoder"):
        run(digits / "query", tmp_path / "q", ExtractConfig(**RESNET), local=True, **QUIET)


def test_a_plain_job_pinned_before_the_pyramid_keys_existed_still_matches():
    from eval.extract import backbone_identity

    plain = backbone_identity(ExtractConfig(**RESNET))["encoder"]
    assert not {"head", "pyramid_stages", "pyramid_scales"} & set(plain)
    enc = EncoderConfig(kind="resnet18", head="pyramid_hybrid")
    pyr = backbone_identity(ExtractConfig(**{**RESNET, "encoder": enc}))["encoder"]
    assert (pyr["head"], pyr["pyramid_stages"], pyr["pyramid_scales"]) == ("pyramid_hybrid", [], [1, 2])


@pytest.mark.slow
def test_lite0_features_of_the_digits_match_the_backbone_run_directly(digits, tmp_path):
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        pytest.skip("the 'pretrained' extra is not installed")
    cfg = ExtractConfig(image_size=64, batch_size=32)
    run(digits / "query", tmp_path / "q", cfg, local=True, **QUIET)
    out = _samples(tmp_path / "q")
    assert out[0]["feat"].shape == (1280,) and np.isfinite(np.stack([s["feat"] for s in out])).all()
    torch.manual_seed(0)
    assert float(np.linalg.norm(out[0]["feat"] - out[1]["feat"])) > 0
