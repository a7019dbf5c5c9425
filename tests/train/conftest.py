"""Train-area fixtures: the digits demo as a features-mode shard set, its tag semantics, run configs.

The demo's real 8x8 digit images and seeded simulated tags (``shards.converters.demo``), written with
the project's shard writer, each sample also carrying its 64 pixel values as ``feat.npy`` so the loop
runs in features mode (an MLP encoder): Ray tests stay small and fast on 2 cores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shards import config as config_lib
from trainer.config import RunConfig


def write_digit_features(root: str, n: int = 480, per_shard: int = 60, without_feat: tuple[int, ...] = ()) -> str:
    """``root/train``: the first ``n`` digits, ``per_shard`` per shard, with feat.npy (except the
    samples numbered in ``without_feat``: bad input for features mode); returns it."""
    from sklearn.datasets import load_digits

    from shards.converters.demo import DemoConfig, png_bytes, simulate_tags
    from shards.writer import ShardSetWriter
    from shards.schema import encode_sample

    digits = load_digits()
    rng = np.random.default_rng(0)
    url = str(Path(root) / "train")
    w = ShardSetWriter(url, source="sklearn digits with pixel features (test)", split="train",
                       label_names=[f"digit_{d}" for d in range(10)], max_count=per_shard)
    for i in range(n):
        label = int(digits.target[i])
        feat = (digits.images[i].reshape(-1) / 16.0).astype(np.float32)
        w.write(encode_sample(f"digits/{i:04d}", png_bytes(digits.images[i]), "png",
                              simulate_tags(label, rng, DemoConfig()), [f"digit_{label}"], None,
                              None if i in without_feat else feat))
    w.close()
    return url


@pytest.fixture(scope="session")
def digits_features(tmp_path_factory) -> dict:
    """{"train": shard set, "tags": tag semantics dir, "dim": embedding dim} built once per session."""
    from shards.manifest import Manifest
    from trainer.tags import TagConfig, build_from_shards

    root = tmp_path_factory.mktemp("digits")
    train = write_digit_features(str(root))
    cfg = config_lib.from_dict(TagConfig, {"num_tasks": 0, "vocab": {"min_count": 2}})
    sem = build_from_shards(Manifest.load(train).shard_urls(), cfg)
    sem.save(str(root / "tags"))
    return {"train": train, "tags": str(root / "tags"), "dim": sem.dim}


def run_config(data: dict, storage: Path, name: str, *overrides: str) -> RunConfig:
    """A small features-mode WSDHQ run (M=2, K=16) over the fixture data."""
    base = {
        "data": {"train": data["train"], "tags": data["tags"]},
        "reader": {"batch_size": 40, "num_workers": 0, "features_only": True, "shuffle_buffer": 100},
        "encoder": {"kind": "mlp", "in_features": 64, "hidden": 64},
        "method": {"name": "wsdhq", "embed_dim": data["dim"],
                   "quantizer": {"M": 2, "K": 16, "update_every": 1, "kmeans_sample": 10000}},
        "training": {"epochs": 2, "seed": 0},
        "scaling": {"num_workers": 0, "collective_timeout_s": 120},
        "storage": {"path": str(storage), "name": name},
    }
    for item in overrides:
        config_lib.apply_override(base, item)
    return config_lib.from_dict(RunConfig, base)
