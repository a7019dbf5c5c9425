"""MeCoQ and MoPQ through the real training loop in Ray Train local mode (num_workers=0), the
inference export and the encode path; MeCoQ's code memory across a resume."""
from __future__ import annotations

import pytest
import torch

from tests.train.conftest import run_config
from trainer import resume
from trainer.train import build_trainer

MECOQ = ("method.name=mecoq", "method.quantizer={M: 2, K: 16, kmeans_epoch: 1}",
         "method.loss={memory_size: 100, memory_epoch: 1}")


def _final_state(tmp_path, name):
    return resume.load_persisted(resume.latest_persisted(str(tmp_path / name)))


def test_mecoq_resumed_run_repeats_an_uninterrupted_one_memory_queue_included(digits_features, tmp_path):
    assert build_trainer(run_config(digits_features, tmp_path, "whole", *MECOQ, "training.epochs=3")).fit().error is None
    # the same run stopped after epoch 1, then started again by name with 3 epochs: it resumes
    assert build_trainer(run_config(digits_features, tmp_path, "split", *MECOQ, "training.epochs=1")).fit().error is None
    first = _final_state(tmp_path, "split")
    # 12 steps of 40 rows x 2 views: 960 soft codes went in, the newest 100 are kept
    assert first.method_state["objective"]["memory"].shape == (100, 2, 16)
    assert build_trainer(run_config(digits_features, tmp_path, "split", *MECOQ, "training.epochs=3")).fit().error is None
    whole, split = _final_state(tmp_path, "whole"), _final_state(tmp_path, "split")
    assert split.state.epoch == whole.state.epoch == 3 and split.state.step == whole.state.step == 36
    assert torch.equal(split.method_state["objective"]["memory"], whole.method_state["objective"]["memory"])
    for k, v in whole.method_state["net"].items():
        assert torch.equal(split.method_state["net"][k], v), k
    assert [m["loss"] for m in split.state.metrics] == [m["loss"] for m in whole.state.metrics]
    history = whole.state.metrics
    # the k-means start after epoch 1, the memory among the negatives from epoch 1 (100 rows)
    assert whole.method_state["coding"]["updates"] == 1 and history[0]["codebook_samples"] == 480
    assert history[0]["loss/memory"] == 0.0 and history[1]["loss/memory"] == 100.0
    assert all(m["loss/entropy"] >= 0 and m["loss/contrastive"] > 0 for m in history)


def test_mopq_trains_through_the_loop_and_exports_codes_the_quantizer_reproduces(digits_features, tmp_path):
    from trainer.inference import load_inference
    from trainer.quantizers import ProductQuantizer

    cfg = run_config(digits_features, tmp_path, "mopq", "method.name=mopq",
                     "method.quantizer={M: 2, K: 16}", "training.epochs=2")
    assert build_trainer(cfg).fit().error is None
    state = _final_state(tmp_path, "mopq")
    history = state.state.metrics
    assert history[-1]["loss/mcl"] < history[0]["loss/mcl"]
    # one worker: each tagged row's negatives are the batch's other tagged rows (40 a batch)
    assert history[0]["loss/negatives"] + history[0]["loss/untagged"] == 39.0
    assert history[0]["loss/untagged"] > 0  # the demo's simulated tags leave some images untagged
    model = load_inference(str(tmp_path / "mopq" / "final"))
    assert isinstance(model.quantizer, ProductQuantizer) and model.quantizer.spec.bits == 8
    x = torch.rand(5, 64)
    codes = model.encode(x)
    assert codes.dtype == torch.uint8 and codes.shape == (5, 2)
    # the saved codebooks are the trained ones, bit for bit
    pq_weight = state.method_state["net"]["pq.weight"]
    assert torch.equal(model.quantizer.weight.detach(), pq_weight)


def test_mecoq_refit_through_the_loop_leaves_the_kmeans_centroids_of_the_final_embeddings(digits_features,
                                                                                       tmp_path):
    """``quantizer.refit``: the k-means start after epoch 1 and the refit after the last epoch (2
    updates, both on the 480 training rows); the exported codebooks are the spherical k-means of the
    final encoder's embeddings of the training set, in index order (what the loop gathers)."""
    from shards.manifest import Manifest
    from shards.reader import iter_set
    from trainer.inference import load_inference
    from trainer.quantizers import ProductQuantizer

    cfg = run_config(digits_features, tmp_path, "refit", "method.name=mecoq",
                     "method.quantizer={M: 2, K: 16, kmeans_epoch: 1, refit: true}",
                     "method.loss={memory_size: 100, memory_epoch: 1}", "training.epochs=2")
    assert build_trainer(cfg).fit().error is None
    state = _final_state(tmp_path, "refit")
    assert state.method_state["coding"]["updates"] == 2
    assert [m["codebook_samples"] for m in state.state.metrics] == [480, 480]
    model = load_inference(str(tmp_path / "refit" / "final"))
    x = torch.stack([torch.as_tensor(s["feat"]) for s in iter_set(Manifest.load(digits_features["train"]),
                                                                  fields=["feat.npy"])]).float()
    assert len(x) == 480
    expected = ProductQuantizer(model.quantizer.D, 2, 16).fit(model.embed(x), cfg.method.seed)
    assert torch.allclose(model.quantizer.codebooks, expected.codebooks, atol=1e-5)


@pytest.mark.ray
@pytest.mark.slow
def test_mopq_on_two_ray_workers_sees_twice_the_negatives_of_one(ray_local, digits_features, tmp_path):
    """Ray Train, 2 workers with DDP: each row's negatives are both workers' rows (80 a step)."""
    cfg = run_config(digits_features, tmp_path, "mopq2", "method.name=mopq", "method.quantizer={M: 2, K: 16}",
                     "training.epochs=1", "scaling.num_workers=2")
    result = build_trainer(cfg).fit()
    assert result.error is None
    with result.checkpoint.as_directory() as d:
        history = resume.load(d).state.metrics
    first = history[0]
    assert first["world_size"] == 2 and first["samples"] == 480
    # negatives + untagged rows + the row itself = the 2 x 40 rows gathered each step (1 worker:
    # 40); "untagged" is each rank's own count, averaged over the 2 ranks like every loss term
    assert first["loss/negatives"] + 2 * first["loss/untagged"] == pytest.approx(79.0)


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.slow
def test_mecoq_under_deepspeed_zero1_on_two_workers_checkpoints_the_gathered_memory(ray_local, digits_features,
                                                                                  tmp_path):
    cfg = run_config(digits_features, tmp_path, "mecoq-ds", *MECOQ, "training.epochs=2", "scaling.num_workers=2",
                     "training.engine=deepspeed", "training.deepspeed.zero_stage=1")
    result = build_trainer(cfg).fit()
    assert result.error is None
    with result.checkpoint.as_directory() as d:
        loaded = resume.load(d)
    history = loaded.state.metrics
    assert [m["world_size"] for m in history] == [2, 2] and history[1]["loss/memory"] == 100.0
    # 6 steps of 2 x 40 rows x 2 views went through the memory; it holds the newest 100 rows
    assert loaded.method_state["objective"]["memory"].shape == (100, 2, 16)
