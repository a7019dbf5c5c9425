"""Fixtures of the shards tests: a demo dataset built once, and small shard sets built per test."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shards.schema import encode_sample
from shards.writer import ShardSetWriter


def png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value % 256, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(value: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(value)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_set(url, n: int, max_count: int, feat_dim: int = 0, label_names=None):
    """A shard set of n valid samples ``s{i:04d}``: tags ``[t{i}, common]``, labels ``[l{i%3}]``."""
    w = ShardSetWriter(str(url), "test", "train", label_names or ["l0", "l1", "l2"], max_count=max_count,
                       overwrite=True)
    for i in range(n):
        feat = np.arange(feat_dim, dtype=np.float32) + i if feat_dim else None
        w.write(encode_sample(f"s{i:04d}", png(i), "png", [f"t{i}", "common"], [f"l{i % 3}"], feat=feat))
    return w.close()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from shards.converters.demo import convert_demo

    root = tmp_path_factory.mktemp("demo") / "data"
    convert_demo(str(root))
    return root
