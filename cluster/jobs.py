"""Submitting a job to a Ray cluster and following it, through Ray's job SDK.

The same calls serve a laptop (a local head from ``wsdhq ray start``) and a cloud cluster (the
dashboard port-forwarded by ``ray dashboard ray_cluster.yaml``). Token authentication stays on: the
client reads the token Ray keeps in ``~/.ray/auth_token`` (or ``RAY_AUTH_TOKEN``) when
``RAY_AUTH_MODE=token``, which is set here before the first request.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

# Never shipped to the cluster: data, environments, run outputs, caches. (.gitignore is honoured too.)
EXCLUDES = [".venv", "venv", ".git", "data", "runs", "checkpoints", "*.egg-info", "__pycache__",
            ".pytest_cache", "*.tar", "*.npz"]
# Passed to the job when set here; credentials are not: the cluster finds its own through the
# standard boto3 chain (an instance profile on AWS).
FORWARDED_ENV = ["DS_ACCELERATOR", "RAY_TRAIN_COLLECTIVE_TIMEOUT_S", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 120.0  # how long submit waits for a fresh head's job agent
T = TypeVar("T")


def client(address: str):
    """A JobSubmissionClient for ``address`` (http://HOST:8265) with token auth enabled."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def runtime_env(working_dir: str | Path, env_vars: dict[str, str] | None = None,
                excludes: list[str] | None = None) -> dict:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.update(env_vars or {})
    return {"working_dir": str(working_dir), "excludes": EXCLUDES + list(excludes or []), "env_vars": env}


def submit(address: str, entrypoint: list[str], working_dir: str | Path = ".",
           env_vars: dict[str, str] | None = None, submission_id: str | None = None,
           entrypoint_num_gpus: float | None = None, agent_wait_s: float = AGENT_WAIT_S) -> str:
    """Submit ``entrypoint`` (argv list, not a shell string) and return the job's submission id;
    a head whose job agent is not up yet is asked again for up to ``agent_wait_s`` seconds."""
    kwargs = {}
    if entrypoint_num_gpus:
        kwargs["entrypoint_num_gpus"] = entrypoint_num_gpus
    c = client(address)
    return while_agent_starts(
        lambda: c.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env(working_dir, env_vars),
                             submission_id=submission_id, **kwargs), agent_wait_s)


def while_agent_starts(call: Callable[[], T], wait_s: float, poll_s: float = 2.0) -> T:
    """``call()``, asked again every ``poll_s`` while it fails with Ray's "No available agent" (a
    head that has just started answers before its job agent is up), for at most ``wait_s`` seconds;
    any other error, or that one past the deadline, is raised."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return call()
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() + poll_s > deadline:
                raise
            time.sleep(poll_s)


def follow(address: str, job_id: str, write: Callable[[str], object] | None = None) -> str:
    """Stream the job's logs to ``write`` (stdout) until it ends; returns its final status name."""
    c = client(address)
    write = write or sys.stdout.write

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
    return status(address, job_id)


def status(address: str, job_id: str) -> str:
    return str(client(address).get_job_status(job_id).value)


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)
