"""`python -m trainer.train` refuses bad input with one clear error before any worker starts."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from shards import config as config_lib
from trainer.config import RunConfig
from trainer.train import main

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict) -> str:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def _good(digits_features, tmp_path) -> dict:
    return {"data": {"train": digits_features["train"], "tags": digits_features["tags"]},
            "reader": {"features_only": True, "num_workers": 0},
            "encoder": {"kind": "mlp", "in_features": 64},
            "method": {"embed_dim": digits_features["dim"]},
            "scaling": {"num_workers": 2}, "storage": {"path": str(tmp_path / "runs")}}


RUN_CONFIGS = ["digits_demo.yaml", "digits_demo_deepspeed.yaml", "digits_features.yaml"]


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_shipped_training_config_loads_into_the_typed_tree(name):
    cfg = config_lib.load(RunConfig, REPO / "configs" / name)
    assert cfg.training.epochs >= 1 and cfg.data.train and cfg.data.tags


@pytest.mark.parametrize("change, overrides, message", [
    ({"trainng": {"epochs": 2}}, [], "unknown config key 'trainng'"),
    ({}, ["training.epochs=two"], "training.epochs: expected an integer, got 'two'"),
    ({}, ["training.engine=horovod"], "training.engine: 'horovod' is not one of 'ddp', 'deepspeed'"),
    ({}, ["data.tags=/nonexistent/tags"], "data.tags: cannot load the tag semantics artifact at /nonexistent/tags"),
    ({}, ["data.train=/nonexistent/train"], "data.train: cannot read the training manifest at /nonexistent/train"),
    ({}, ["method.embed_dim=7"], "method.embed_dim=7 but the tag embeddings"),
    ({}, ["storage.checkpoint_every=0"], "storage.checkpoint_every: must be >= 1, got 0"),
    # range checks live in the config sections and fire while the config loads, on the driver
    ({}, ["reader.batch_size=0"], "reader.batch_size: must be >= 1, got 0"),
    ({}, ["method.quantizer.K=1024"], "method.quantizer.K: must be in [1, 256], got 1024"),
    ({}, ["method.embed_dim=8", "method.quantizer.M=9"],
     "method.quantizer.M: must be <= method.embed_dim (8) for the additive quantizer, got 9"),
    ({}, ["method.quantizer.update_every=0"], "method.quantizer.update_every: must be >= 1, got 0"),
    ({}, ["method.quantizer.iters=0"], "method.quantizer.iters: must be >= 1, got 0"),
    ({}, ["encoder.in_features=0"], "encoder.in_features: must be set (the length of feat.npy)"),
    # the reader's own rule for a training pass, applied before the workers start
    ({}, ["reader.batch_size=241"], "480 samples < world_size 2 x batch_size 241; no full batch per rank"),
])
def test_bad_config_or_input_is_one_clear_error_naming_the_culprit(digits_features, tmp_path, capsys,
                                                                    change, overrides, message):
    data = _good(digits_features, tmp_path)
    data.update(change)
    assert main(["--config", _write(tmp_path, data), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing started


def test_an_empty_training_set_is_refused(digits_features, tmp_path, capsys):
    from shards.writer import ShardSetWriter

    ShardSetWriter(str(tmp_path / "empty"), source="test", split="train").close()
    data = _good(digits_features, tmp_path)
    data["data"]["train"] = str(tmp_path / "empty")
    assert main(["--config", _write(tmp_path, data)]) == 2
    assert "is empty (0 samples)" in capsys.readouterr().err


@pytest.mark.s3
def test_an_s3_training_set_or_bucket_that_does_not_exist_is_refused(digits_features, tmp_path, capsys,
                                                                      s3_bucket):
    data = _good(digits_features, tmp_path)
    data["data"]["train"] = f"s3://{s3_bucket}/no/such/set"
    assert main(["--config", _write(tmp_path, data)]) == 2
    assert f"cannot read the training manifest at s3://{s3_bucket}/no/such/set" in capsys.readouterr().err
    data = _good(digits_features, tmp_path)
    data["storage"]["path"] = "s3://no-such-bucket-wsdhq/runs"
    assert main(["--config", _write(tmp_path, data)]) == 2
    assert "storage.path: S3 bucket 'no-such-bucket-wsdhq' is not reachable" in capsys.readouterr().err


def test_method_embed_dim_defaults_to_the_tag_artifacts_dimension(digits_features, tmp_path):
    from trainer.loop import Supervision
    from trainer.methods import LABEL_EMBED_DIM, build_method
    from trainer.train import preflight

    data = _good(digits_features, tmp_path)
    del data["method"]["embed_dim"]
    cfg = config_lib.load(RunConfig, _write(tmp_path, data))
    assert cfg.method.embed_dim == 0
    preflight(cfg)  # was: "method.embed_dim=300 but the tag embeddings ... set method.embed_dim=..."
    method = build_method(cfg.method, cfg.encoder, Supervision.load(cfg).embeddings)
    assert method.cfg.embed_dim == digits_features["dim"] != LABEL_EMBED_DIM
    assert method.encoder(torch.zeros(2, 64)).shape == (2, digits_features["dim"])
    cfg = config_lib.load(RunConfig, _write(tmp_path, data), ["method.name=dpq"])
    assert Supervision.load(cfg).embeddings.shape[1] == LABEL_EMBED_DIM  # DPQ's generated label vectors


def test_the_tag_dimension_fixes_embed_dim_and_k_means_needs_k_samples(digits_features, tmp_path, capsys):
    from tests.train.conftest import write_digit_features

    small = write_digit_features(str(tmp_path / "small"), n=100, per_shard=50)
    data = _good(digits_features, tmp_path)
    data["data"]["train"] = small
    assert main(["--config", _write(tmp_path, data), "method.quantizer.K=128"]) == 2
    err = capsys.readouterr().err
    assert "method.quantizer.K=128 but data.train has only 100 samples" in err and err.count("\n") == 1


def test_fewer_shards_than_workers_is_accepted_with_the_readers_plan_stated(digits_features, tmp_path):
    from trainer.train import preflight

    data = _good(digits_features, tmp_path)
    cfg = config_lib.load(RunConfig, _write(tmp_path, data), ["scaling.num_workers=9", "reader.batch_size=40"])
    facts = preflight(cfg)
    # 8 shards < 9 ranks x 1 slot: every slot reads every shard and keeps its share by index, as
    # shards.reader does (tests/shards: every sample once in eval, equal batches in train)
    assert facts["slot_plan"] == ("8 shard(s) < 9 slots (world_size 9 x workers 1): every slot reads every "
                                  "shard and keeps its share of samples by index")
    cfg = config_lib.load(RunConfig, _write(tmp_path, data), ["scaling.num_workers=8", "reader.batch_size=40"])
    assert preflight(cfg)["slot_plan"] is None


def test_without_faiss_a_method_that_starts_from_k_means_is_refused_before_any_worker(digits_features, tmp_path):
    import subprocess
    import sys

    cfg = _write(tmp_path, _good(digits_features, tmp_path))
    script = f"""
import sys
sys.modules["faiss"] = None  # Python's import system: faiss is not installed
from shards import config
from trainer.config import RunConfig
from trainer.train import main, preflight
rc = main(["--config", {cfg!r}])
# DPQ's codebooks start random (trained by gradient): it needs no faiss
facts = preflight(config.load(RunConfig, {cfg!r}, ["method.name=dpq"]))
print("rc", rc, "dpq", facts["train_samples"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "rc 2 dpq 480"
    assert out.stderr == ("wsdhq train: method.quantizer.kind=additive: k-means (the codebooks' start) needs faiss: "
                          "pip install 'wsdhq[faiss]' (faiss-cpu)\n")
    assert not (tmp_path / "runs").exists()
