"""The training loop in Ray Train local mode (num_workers=0: in this process), fast."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.train.conftest import run_config
from trainer import resume
from trainer.train import build_trainer


def test_local_mode_trains_updates_codebooks_and_writes_checkpoint_metrics_and_final(digits_features, tmp_path,
                                                                                      capsys):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("wsdhq-ckpt-*"))
    cfg = run_config(digits_features, tmp_path, "local", "training.epochs=2")
    result = build_trainer(cfg).fit()
    assert result.error is None
    # local mode persists its checkpoints under storage.path/storage.name itself, leaving no temp dirs
    assert set(Path(tempfile.gettempdir()).glob("wsdhq-ckpt-*")) == before
    persisted = sorted(p.name for p in (tmp_path / "local").glob("checkpoint_local_e*"))
    assert persisted == ["checkpoint_local_e000001", "checkpoint_local_e000002"]  # keep_checkpoints=2
    latest = resume.latest_persisted(str(tmp_path / "local"))
    loaded = resume.load_persisted(latest)
    history = loaded.state.metrics
    assert loaded.state.epoch == 2
    assert [m["epoch"] for m in history] == [0, 1]
    # 480 samples, batch 40, one rank: 12 steps an epoch
    assert loaded.state.step == 24 and history[-1]["step"] == 24
    assert all(m["samples"] == 480 for m in history)
    # code_update_every=1: the codebooks were initialised after epoch 0 and solved again after epoch 1
    assert loaded.method_state["coding"]["trained"] is True
    assert loaded.method_state["coding"]["updates"] == 2
    assert tuple(loaded.method_state["coding"]["codebooks"].shape) == (2, 16, digits_features["dim"])
    for m in history:
        assert len(m["live_codewords"]) == 2 and all(1 <= v <= 16 for v in m["live_codewords"])
        assert 0.0 < m["quantization_error"] < 1.0  # unit vectors: error below their squared norm
        assert 0.0 <= m["data_wait_fraction"] <= 1.0 and m["samples_per_s"] > 0
        assert m["codebook_update_seconds"] > 0
        assert m["skipped"] == 0 and m["skips"] == {}  # a clean set: nothing skipped, nothing said
    # the quantization term joins the loss only once codebooks exist (λ = 0 before)
    assert "loss/q" not in history[0] and history[1]["loss/q"] > 0
    # a person can follow it: one line per epoch with the loss terms, codebook usage and throughput
    out = capsys.readouterr().out
    last = history[-1]
    assert f"epoch 2/2 step 24 loss {last['loss']:.4g}" in out
    assert f"live {last['live_codewords'][0]},{last['live_codewords'][1]}" in out and "samples/s" in out
    assert "skipped" not in out
    final = tmp_path / "local" / "final"
    assert (final / "model.pt").is_file() and (final / "quantizer.npz").is_file()
    assert (final / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((final / "meta.json").read_text())
    assert meta["epoch"] == 2 and meta["tag_semantics_hash"] == loaded.tag_semantics_hash
    from trainer.inference import load_inference

    model = load_inference(str(final))
    assert torch.equal(model.quantizer.codebooks, loaded.method_state["coding"]["codebooks"].float())


def test_epoch_clock_stops_at_the_end_of_the_pass_so_the_codebook_update_is_not_counted_twice():
    """Regression: the epoch record was taken after the codebook update, so ``epoch_seconds`` (and
    samples/s) included the update that ``codebook_update_seconds`` reports beside it."""
    import time

    from trainer.metrics_log import EpochClock

    clock = EpochClock()
    clock.before_fetch()
    time.sleep(0.05)
    clock.after_fetch(8)
    clock.stop()
    time.sleep(0.3)  # the update
    t = clock.summary()
    assert 0.05 <= t["epoch_seconds"] < 0.25
    assert t["samples_per_s"] == 8 / t["epoch_seconds"] and 0.2 < t["data_wait_fraction"] <= 1.0


def test_bad_samples_met_by_the_training_pass_land_in_the_epoch_record_and_the_log_line(digits_features,
                                                                                     tmp_path, capsys):
    from tests.train.conftest import run_config, write_digit_features

    # 485 samples, 5 of them without feat.npy: features mode skips them (missing_feat). The pass
    # yields 485 // 40 = 12 batches = 480 samples, every usable one, so it meets all 5 exactly once.
    bad = (3, 100, 250, 251, 484)
    data = dict(digits_features, train=write_digit_features(str(tmp_path / "bad"), n=485, without_feat=bad))
    cfg = run_config(data, tmp_path, "skips", "training.epochs=1", "reader.num_workers=2")
    result = build_trainer(cfg).fit()
    assert result.error is None
    history = resume.load_persisted(resume.latest_persisted(str(tmp_path / "skips"))).state.metrics
    assert history[0]["skipped"] == 5 and history[0]["skips"] == {"missing_feat": 5}
    assert history[0]["samples"] == 480
    assert "samples/s skipped 5 (missing_feat 5)" in capsys.readouterr().out
    assert result.metrics["skipped"] == 5  # reported to Ray Train with the other scalars
