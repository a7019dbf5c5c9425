"""The same loop with a DeepSpeed ZeRO-1 engine instead of DDP: 2 CPU workers (DS_ACCELERATOR=cpu, gloo)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.conftest import run_config
from trainer import resume
from trainer.train import build_trainer

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.slow]


def test_deepspeed_zero1_saves_a_shard_per_rank_and_a_rerun_resumes_from_them(ray_local, digits_features, tmp_path):
    def fit(epochs: int):
        cfg = run_config(digits_features, tmp_path, "zero1", f"training.epochs={epochs}",
                         "scaling.num_workers=2", "training.engine=deepspeed",
                         "training.deepspeed.zero_stage=1")
        return build_trainer(cfg).fit()

    first = fit(1)
    with first.checkpoint.as_directory() as d:
        ds = Path(d) / resume.DEEPSPEED_DIR
        assert (ds / "latest").read_text().strip() == "epoch1"
        shards = sorted(p.name for p in (ds / "epoch1").glob("*optim_states.pt"))
        # ZeRO-1 partitions the optimizer state: one shard written by each of the 2 ranks
        assert len(shards) == 2 and any("rank_0" in s for s in shards) and any("rank_1" in s for s in shards)
        assert resume.load(d).state.epoch == 1

    second = fit(2)  # same name: resumes from the merged ZeRO checkpoint, trains epoch 1 only
    with second.checkpoint.as_directory() as d:
        loaded = resume.load(d)
        history = json.loads((Path(d) / resume.METRICS).read_text())
        assert (Path(d) / resume.DEEPSPEED_DIR / "latest").read_text().strip() == "epoch2"
    assert loaded.state.epoch == 2 and [m["epoch"] for m in history] == [0, 1]
    assert loaded.state.step == 2 * (480 // (2 * 40))  # 6 steps an epoch per rank, no epoch repeated
    assert loaded.method_state["coding"]["updates"] == 2 and history[1]["loss/q"] > 0
