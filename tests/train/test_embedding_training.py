"""Features-mode training from an embedding set (shards.embeddings), in this process (num_workers=0)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from shards.embeddings import EmbeddingSetWriter
from shards.manifest import Manifest
from shards.reader import iter_samples
from tests.train.conftest import run_config
from trainer import resume
from trainer.train import build_trainer, main


@pytest.fixture(scope="module")
def digits_embeddings(digits_features, tmp_path_factory) -> dict:
    """The digits features shard set re-written as an embedding set, one part per shard, float16."""
    url = str(tmp_path_factory.mktemp("digits-emb") / "train")
    w = EmbeddingSetWriter(url, dim=64, dtype="float16", source={"from": digits_features["train"]})
    for i, shard in enumerate(Manifest.load(digits_features["train"]).shard_urls()):
        s = list(iter_samples(shard))
        w.write_part(f"{i:05d}", [x["__key__"] for x in s], np.stack([x["feat"] for x in s]),
                     [x["tags"] for x in s], [x["labels"] for x in s])
    w.close()
    return {**digits_features, "train": url}


def test_features_mode_trains_from_an_embedding_set_with_the_same_steps_as_from_shards(digits_embeddings, tmp_path):
    cfg = run_config(digits_embeddings, tmp_path, "emb", "training.epochs=2")
    result = build_trainer(cfg).fit()
    assert result.error is None
    # local mode persists its checkpoints under storage.path/storage.name (no checkpoint reported to Ray)
    loaded = resume.load_persisted(resume.latest_persisted(str(tmp_path / "emb")))
    history = loaded.state.metrics
    # 480 rows, batch 40, one rank: 12 steps an epoch, every row once per epoch
    assert loaded.state.step == 24 and [m["samples"] for m in history] == [480, 480]
    assert loaded.method_state["coding"]["updates"] == 2 and loaded.method_state["coding"]["trained"] is True
    assert history[1]["loss"] < history[0]["loss"] and history[1]["loss/q"] > 0
    assert all(0.0 < m["quantization_error"] < 1.0 for m in history)
    assert (tmp_path / "emb" / "final" / "model.pt").is_file()


def test_dpq_takes_its_label_names_from_the_embedding_set(digits_embeddings, tmp_path):
    cfg = run_config(digits_embeddings, tmp_path, "dpq", "training.epochs=1", "method.name=dpq",
                     "method.quantizer={M: 2, K: 16}")
    result = build_trainer(cfg).fit()
    assert result.error is None
    assert resume.load_persisted(resume.latest_persisted(str(tmp_path / "dpq"))).state.step == 12


def _cli(digits_embeddings, tmp_path, *overrides) -> int:
    data = {"data": {"train": digits_embeddings["train"], "tags": digits_embeddings["tags"]},
            "reader": {"num_workers": 0}, "encoder": {"kind": "mlp", "in_features": 64},
            "method": {"embed_dim": digits_embeddings["dim"]}, "scaling": {"num_workers": 2},
            "storage": {"path": str(tmp_path / "runs")}}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return main(["--config", str(p), *overrides])


def test_preflight_refuses_a_bad_embedding_set_or_encoder_with_one_line(digits_embeddings, tmp_path, capsys):
    assert _cli(digits_embeddings, tmp_path, "encoder.in_features=32") == 2
    err = capsys.readouterr().err
    assert "data.train is an embedding set of dim 64: it trains encoder.kind=mlp with encoder.in_features=64" in err
    bad = tmp_path / "bad"
    shutil.copytree(digits_embeddings["train"], bad)
    npy = bad / "img_emb" / "img_emb_00003.npy"
    npy.write_bytes(npy.read_bytes()[:-64])
    assert _cli(digits_embeddings, tmp_path, f"data.train={bad}") == 2
    err = capsys.readouterr().err
    assert f"data.train: {npy}: " in err and "the file is truncated" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing started
