"""Ray Train runs on a local Ray (few, small, marked): the distributed guarantees of the loop.

Features-mode digits (480 samples in 8 shards, MLP encoder, M=2 K=16): every fit is a few seconds
of training; the rest is Ray starting worker groups.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

import pytest
import torch

from tests.train.conftest import run_config
from trainer import resume
from shards import config as config_lib
from trainer.train import build_trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _fit(cfg):
    result = build_trainer(cfg).fit()
    assert result.error is None, result.error
    with result.checkpoint.as_directory() as d:
        loaded = resume.load(d)
    return result, loaded


def test_two_workers_solve_the_same_codebooks_as_one(ray_local, digits_features, tmp_path):
    # lr=0 keeps the encoder at its seeded initial weights, so both runs encode the same embeddings;
    # the update after epoch 0 is the k-means initialisation (from the sample gathered across ranks)
    # followed by ICM + all-reduced statistics + the solve.
    common = ("training.epochs=1", "training.optim.lr=0.0")
    _, one = _fit(run_config(digits_features, tmp_path, "one", *common, "scaling.num_workers=1"))
    result, two = _fit(run_config(digits_features, tmp_path, "two", *common, "scaling.num_workers=2"))
    c1, c2 = one.method_state["coding"]["codebooks"], two.method_state["coding"]["codebooks"]
    assert c1.abs().max() > 0.05  # real codebooks, not zeros
    torch.testing.assert_close(c2, c1, rtol=0, atol=1e-6)
    m1, m2 = one.state.metrics[0], two.state.metrics[0]
    # every sample was coded exactly once across ranks: same counts, same quantization error
    assert m1["codebook_samples"] == m2["codebook_samples"] == 480
    assert m2["live_codewords"] == m1["live_codewords"]
    assert m2["quantization_error"] == pytest.approx(m1["quantization_error"], rel=1e-9)
    # the 2-worker epoch: each rank streamed its own half, 480 // (2 * 40) = 6 steps, 480 samples
    assert m2["world_size"] == 2 and m2["samples"] == 480 and two.state.step == 6
    assert one.state.step == 12
    assert sorted(p.name for p in Path(result.path).glob("checkpoint_*"))  # Ray kept the checkpoint


@pytest.fixture(scope="module")
def reference_fit(ray_local, digits_features, tmp_path_factory):
    """An uninterrupted 2-worker, 3-epoch run (lr 3e-4, an update after every epoch): (result, loaded)."""
    storage = tmp_path_factory.mktemp("reference")
    return _fit(run_config(digits_features, storage, "reference", "training.epochs=3",
                           "scaling.num_workers=2"))


@pytest.fixture(scope="module")
def reference_run(reference_fit):
    """What the recovered and resumed runs must repeat."""
    return reference_fit[1]


def test_a_trained_two_worker_runs_codebook_update_is_the_one_process_update_on_its_encoder(
        reference_fit, digits_features):
    """Beyond lr=0: after two epochs of 2-worker DDP training (lr > 0), the update after epoch 3,
    redone in ONE process from the same encoder weights and the codebooks before it, gives the
    codebooks the two ranks solved. (The training steps are DDP's data-parallel SGD, global batch
    2 x 40, so a 2-worker run's encoder is not a 1-worker run's; the update is exact either way.)"""
    from trainer.loop import Supervision, WorkerRun, update_codebooks
    from trainer.methods import build_method

    result, final = reference_fit
    by_epoch = {resume.load(d).state.epoch: d for d in Path(result.path).glob("checkpoint_20*")}
    before, after = resume.load(by_epoch[2]).method_state, resume.load(by_epoch[3]).method_state
    assert before["coding"]["updates"] == 2 and after["coding"]["updates"] == 3
    cfg = run_config(digits_features, Path(result.path).parent, "reference", "training.epochs=3",
                     "scaling.num_workers=2")
    supervision = Supervision.load(cfg)
    method = build_method(cfg.method, cfg.encoder, supervision.embeddings)
    method.load_state_dict(after)  # the encoder the last update embedded with (trained 3 epochs)
    trained = {k: v.clone() for k, v in method.encoder.state_dict().items()}
    assert any(not torch.equal(v, before["net"][k]) for k, v in after["net"].items())  # it did train
    method.quantizer.codebooks = before["coding"]["codebooks"].float().clone()  # the codebooks before it
    method.coding.updates = before["coding"]["updates"]
    run = WorkerRun(cfg, 0, 1, torch.device("cpu"), method, None, None, supervision, supervision.hash)
    info = update_codebooks(run, epoch=2)  # world size 1: no process group, the collectives are identity
    torch.testing.assert_close(method.quantizer.codebooks, after["coding"]["codebooks"].float(), rtol=0,
                               atol=1e-5)
    assert not torch.equal(after["coding"]["codebooks"], before["coding"]["codebooks"])  # the update moved them
    assert info["codebook_samples"] == 480
    assert info["quantization_error"] == pytest.approx(final.state.metrics[2]["quantization_error"], rel=1e-5)
    assert info["live_codewords"] == final.state.metrics[2]["live_codewords"]
    assert all(torch.equal(v, trained[k]) for k, v in method.encoder.state_dict().items())


def _assert_same_run(loaded, reference):
    torch.testing.assert_close(loaded.method_state["coding"]["codebooks"],
                               reference.method_state["coding"]["codebooks"], rtol=0, atol=1e-5)
    for k, v in reference.method_state["net"].items():
        torch.testing.assert_close(loaded.method_state["net"][k], v, rtol=0, atol=1e-5)
    assert [m["epoch"] for m in loaded.state.metrics] == [0, 1, 2]  # no epoch counted twice
    for got, want in zip(loaded.state.metrics, reference.state.metrics):
        assert got["step"] == want["step"] and got["samples"] == want["samples"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["quantization_error"] == pytest.approx(want["quantization_error"], rel=1e-5)


@pytest.mark.parametrize("every, kept", [(1, [1, 2, 3]), (2, [2, 3])])
def test_a_worker_killed_mid_epoch_restarts_from_the_last_checkpoint_and_repeats_the_uninterrupted_run(
        reference_run, digits_features, tmp_path, every, kept):
    # checkpoint_every=2: no checkpoint exists when epoch 1 fails, so the group restarts from scratch
    cfg = run_config(digits_features, tmp_path, "killed", "training.epochs=3", "scaling.num_workers=2",
                     "debug.fail_at_epoch=1", "debug.fail_rank=1", "failure.max_failures=1",
                     f"storage.checkpoint_every={every}", "storage.keep_checkpoints=5")
    result, loaded = _fit(cfg)
    # the failure really happened (once), on rank 1 in epoch 1
    assert (tmp_path / "killed" / "debug-failed-at-epoch-1").is_file()
    assert loaded.state.epoch == 3
    _assert_same_run(loaded, reference_run)
    epochs = []
    for d in Path(result.path).glob("checkpoint_20*"):
        epochs.append(resume.load(d).state.epoch)
    assert sorted(epochs) == kept


def test_rerunning_a_run_name_resumes_it_from_s3_and_a_new_name_starts_fresh(
        reference_run, digits_features, s3_server, s3_bucket, tmp_path):
    # Through the real CLI in a subprocess: its own local Ray starts with this environment (the
    # moto endpoint and dummy credentials), as Ray on a cluster would have its instance profile.
    storage = f"s3://{s3_bucket}/runs"
    base = run_config(digits_features, storage, "resumable", "scaling.num_workers=2")
    data = config_lib.to_dict(base)
    data["training"]["epochs"] = 2
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}

    def cli(*overrides: str) -> str:
        out = subprocess.run([sys.executable, "-m", "trainer.train", "--config", str(path), *overrides],
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout + out.stderr

    first = cli()
    assert "resumed" not in first and "epoch 2/2" in first  # a new name starts at epoch 0
    second = cli("training.epochs=3")
    assert "resumed resumable at epoch 2 step 12" in second
    assert "epoch 1/3" not in second and "epoch 3/3" in second  # only the missing epoch ran
    from shards import storage as st
    from trainer.quantizers import load_quantizer

    final = f"{storage}/resumable/final"
    history = json.loads(st.read_bytes(f"{final}/metrics.json"))
    assert [m["epoch"] for m in history] == [0, 1, 2]
    for got, want in zip(history, reference_run.state.metrics):
        assert got["step"] == want["step"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    codebooks = load_quantizer(io.BytesIO(st.read_bytes(f"{final}/quantizer.npz"))).codebooks
    torch.testing.assert_close(codebooks, reference_run.method_state["coding"]["codebooks"].float(), rtol=0, atol=1e-5)
    assert any(k.endswith("train_state.pt") for k in st.list_files(f"{storage}/resumable/"))
