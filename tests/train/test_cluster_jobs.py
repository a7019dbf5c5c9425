"""`wsdhq ray` against a real local head started by the test (token auth on), and the cluster YAML."""
from __future__ import annotations

import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

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
    # the image runs the package's Ray under a Python the package supports; jobs arrive over HTTP,
    # so the Python running this test (any the README allows) need not be the image's
    image = re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-py3(\d+)-gpu", full["docker"]["image"])
    assert image, full["docker"]["image"]
    requires = re.search(r'requires-python = "([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert SpecifierSet(requires).contains(f"3.{image.group(1)}"), (requires, full["docker"]["image"])
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


def test_every_training_config_the_cluster_yaml_and_readme_name_exists_and_loads():
    from shards import config as config_lib
    from trainer.config import RunConfig

    named = set()
    for doc in ("ray_cluster.yaml", "README.md"):
        named |= set(re.findall(r"configs/[\w.-]+\.yaml", (REPO / doc).read_text()))
    assert "configs/mirflickr_real.yaml" in named
    for path in sorted(named - {"configs/tags_demo.yaml"}):  # the tags config is TagConfig's, not a run's
        assert (REPO / path).is_file(), path
        config_lib.load(RunConfig, REPO / path)
    assert (REPO / "configs/tags_demo.yaml").is_file()


def test_submit_asks_a_starting_head_again_for_agent_wait_s_seconds_and_no_longer():
    import time

    def head(answers_after: int):
        calls = []

        def submit_job():
            calls.append(time.monotonic())
            if len(calls) <= answers_after:
                raise RuntimeError("Failed to submit job: No available agent to submit job, please try again later.")
            return "raysubmit_1"
        return submit_job, calls

    call, calls = head(answers_after=2)
    assert jobs.while_agent_starts(call, wait_s=1.0, poll_s=0.05) == "raysubmit_1" and len(calls) == 3
    call, calls = head(answers_after=100)
    with pytest.raises(RuntimeError, match="No available agent"):
        jobs.while_agent_starts(call, wait_s=0.3, poll_s=0.05)
    assert len(calls) >= 2 and calls[-1] - calls[0] <= 0.3  # asked again until the deadline, not past it
    call, calls = head(answers_after=100)
    with pytest.raises(RuntimeError, match="No available agent"):
        jobs.while_agent_starts(call, wait_s=0, poll_s=0.05)  # agent_wait_s=0: one try
    assert len(calls) == 1

    def refused():
        calls.append(1)
        raise RuntimeError("Request failed with status code 401: unauthorized")

    calls = []
    with pytest.raises(RuntimeError, match="401"):
        jobs.while_agent_starts(refused, wait_s=10, poll_s=0.05)  # other errors are not retried
    assert calls == [1]
