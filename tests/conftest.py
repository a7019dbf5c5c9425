"""Fixtures every area shares: the real MIRFLICKR subset, a real S3 server on loopback, a local Ray.

Area-specific fixtures live in tests/<area>/conftest.py.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "mirflickr25k_real"

# A forgotten ray.train.report on one rank must fail the test, not hang CI (Ray's default is never).
os.environ.setdefault("RAY_TRAIN_COLLECTIVE_TIMEOUT_S", "180")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def mirflickr_real() -> Path:
    """The real MIRFLICKR-25K subset in ../shared/data; skips with a clear message when absent."""
    if not (SHARED_DATA / "subset1000_with_images.npz").is_file():
        pytest.skip(f"real MIRFLICKR data not found at {SHARED_DATA} (CI has ../shared beside the checkout)")
    return SHARED_DATA


def start_moto():
    """(server, endpoint): a moto server on a free loopback port, started; the caller stops it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto server mode) on 127.0.0.1, reached through boto3 over HTTP.

    Sets dummy credentials and AWS_ENDPOINT_URL for the session so every boto3 client (and pyarrow's
    from_uri) talks to it; yields the endpoint URL.
    """
    server, endpoint = start_moto()
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the loopback S3 server; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (Ray tests are few and marked `ray`).

    CPUs are over-declared so Train workers, data tasks and actors never starve each other on 2 cores.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu",
                                           "RAY_TRAIN_COLLECTIVE_TIMEOUT_S": "180"}})
    yield ray
    ray.shutdown()
