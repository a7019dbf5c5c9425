"""Submitting a job to a Ray cluster and following it, through Ray's job SDK.

The same calls serve a laptop (a local head from ``wsdhq ray start``) and a cloud cluster (the
dashboard port-forwarded by ``ray dashboard ray_cluster.yaml``). Token authentication stays on: the
client reads the token Ray keeps in ``~/.ray/auth_token`` (or ``RAY_AUTH_TOKEN``) when
``RAY_AUTH_MODE=token``, which is set here before the first request.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Callable

# Never shipped to the cluster: data, environments, run outputs, caches. (.gitignore is honoured too.)
EXCLUDES = [".venv", "venv", ".git", "data", "runs", "checkpoints", "*.egg-info", "__pycache__",
            ".pytest_cache", "*.tar", "*.npz"]
# Passed to the job when set here; credentials are not: the cluster finds its own through the
# standard boto3 chain (an instance profile on AWS).
FORWARDED_ENV = ["DS_ACCELERATOR", "RAY_TRAIN_COLLECTIVE_TIMEOUT_S", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 120  # how long submit waits for a fresh head's job agent


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
           entrypoint_num_gpus: float | None = None, agent_wait_s: float = 120.0) -> str:
    """Submit ``entrypoint`` (argv list, not a shell string) and return the job's submission id."""
    import shlex

    import time

    kwargs = {}
    if entrypoint_num_gpus:
        kwargs["entrypoint_num_gpus"] = entrypoint_num_gpus
    c = client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return c.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env(working_dir, env_vars),
                                submission_id=submission_id, **kwargs)
        except RuntimeError as e:
            # A head that has just started answers before its job agent is up; only that is retried.
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


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
