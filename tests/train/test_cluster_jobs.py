"""`wsdhq ray` against a real local head started by the test (token auth on), and the cluster YAML."""
from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster import jobs, local
from cluster.local import LocalHead

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.ray
@pytest.mark.slow
def test_job_submitted_with_working_dir_runs_on_a_token_auth_head_and_its_logs_are_followed(capsys):
    # A tiny job that imports this project from the shipped working_dir and prints a computed value.
    with LocalHead(num_cpus=2) as head:
        # Token auth is on: the job API refuses a client that does not present the token.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=10)
        assert refused.value.code in (401, 403)
        code = ("import os, trainer.distributed as d; "
                "print('world', d.world_size(), 'ds', os.environ['DS_ACCELERATOR'], 'sum', sum(range(10)))")
        rc = local.main(["submit", "--address", head.address, "--working-dir", str(REPO),
                         "--env", "DS_ACCELERATOR=cpu", "--follow", "--", sys.executable, "-c", code])
        out = capsys.readouterr().out
        assert rc == 0, out
        job_id = out.split("submitted ", 1)[1].split()[0]
        assert "world 1 ds cpu sum 45" in out
        assert f"job {job_id}: SUCCEEDED" in out
        assert jobs.status(head.address, job_id) == "SUCCEEDED"
        # The runtime_env kept data, venv and run outputs out of the shipped package.
        info = jobs.client(head.address).get_job_info(job_id)
        assert ".venv" in info.runtime_env["excludes"] and "runs" in info.runtime_env["excludes"]


def _cluster_config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_with_a_cpu_head_and_spot_gpu_workers_on_the_pinned_image():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _cluster_config()
    full = prepare_config(cfg)
    validate_config(full)  # raises on any schema violation
    version = ray.__version__
    assert full["docker"]["image"] == f"rayproject/ray:{version}-py{sys.version_info.major}{sys.version_info.minor}-gpu"
    types = full["available_node_types"]
    assert types[full["head_node_type"]]["resources"] == {"CPU": 0}
    worker = types["gpu_worker"]["node_config"]
    assert worker["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert worker["IamInstanceProfile"] == {"Name": "wsdhq-ray-s3"}
    assert any("pip install" in c and "/home/ray/wsdhq" in c for c in full["setup_commands"])
    assert {".venv", "data", "runs"} <= set(full["rsync_exclude"])


def test_cluster_yaml_with_a_misspelt_key_is_rejected_offline():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _cluster_config()
    cfg["max_wrokers"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        validate_config(prepare_config(cfg))
