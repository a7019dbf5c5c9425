"""Local mode (``scaling.num_workers=0``) killed with SIGKILL and started again through the CLI:
it resumes from the checkpoint it persisted under ``storage.path/storage.name``, like a Ray run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import run_config
from shards import config as config_lib

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 8


def _train(cfg_file: Path, env: dict, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.train", "--config", str(cfg_file), *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_sigkilled_local_run_resumes_by_name_from_storage_and_leaves_no_temp_dirs(digits_features, tmp_path):
    cfg = config_lib.to_dict(run_config(digits_features, tmp_path / "runs", "killed", f"training.epochs={EPOCHS}"))
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(json.dumps(cfg))  # YAML is a superset of JSON
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    run_dir = tmp_path / "runs" / "killed"

    first = _train(cfg_file, env)
    marker = run_dir / "checkpoint_local_e000002" / ".complete"
    deadline = time.monotonic() + 240
    while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), first.communicate()[0][-2000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done = sorted(p.name for p in run_dir.glob("checkpoint_local_e*") if (p / ".complete").exists())
    assert done and not (run_dir / "final").exists()
    at = int(done[-1][len("checkpoint_local_e"):])
    assert 2 <= at < EPOCHS

    second = _train(cfg_file, env)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out[-3000:]
    assert f"resumed killed at epoch {at} step {at * 12}" in out  # 480 samples / batch 40 = 12 steps
    assert f"epoch {at + 1}/{EPOCHS} " in out and f"epoch {at}/{EPOCHS} " not in out  # nothing trained twice
    history = json.loads((run_dir / "final" / "metrics.json").read_text())
    assert [m["epoch"] for m in history] == list(range(EPOCHS)) and history[-1]["step"] == EPOCHS * 12
    # the two newest checkpoints kept (storage.keep_checkpoints=2), no temp checkpoint dir anywhere
    assert sorted(p.name for p in run_dir.glob("checkpoint_local_e*")) == [f"checkpoint_local_e{EPOCHS - 1:06d}",
                                                                          f"checkpoint_local_e{EPOCHS:06d}"]
    assert not list(tmp.glob("wsdhq-*"))


@pytest.mark.s3
def test_local_mode_checkpoints_persist_to_s3_keep_the_newest_and_load_back(s3_bucket, tmp_path):
    """The S3 side of local mode's checkpoints: written through a temp dir that is removed, the
    ``keep`` newest complete copies kept, an incomplete (killed) copy never taken."""
    import torch

    from shards import storage
    from trainer import resume
    from trainer.resume import TrainState

    run_url = f"s3://{s3_bucket}/runs/r"
    for epoch in (1, 2, 3):
        d = resume.local_checkpoint_dir(run_url, epoch)
        resume.save(d, state=TrainState(epoch=epoch, step=10 * epoch, metrics=[{"epoch": e} for e in
                                                                                          range(epoch)]),
                           method_state={"w": torch.full((2,), float(epoch))}, optimizer={}, scheduler=None,
                           config={}, tag_semantics_hash="h")
        resume.persist(d, run_url, epoch, keep=2)
        assert not d.exists()
    storage.write_bytes(f"{run_url}/checkpoint_local_e000004/train_state.pt", b"half-written")  # no marker
    assert resume.latest_persisted(run_url) == f"{run_url}/checkpoint_local_e000003"
    loaded = resume.load_persisted(resume.latest_persisted(run_url))
    assert loaded.state.epoch == 3 and loaded.state.step == 30 and loaded.method_state["w"].tolist() == [3.0, 3.0]
    names = {f.split("/")[-2] for f in storage.list_files(run_url)}
    assert names == {"checkpoint_local_e000002", "checkpoint_local_e000003", "checkpoint_local_e000004"}
