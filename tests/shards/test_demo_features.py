"""`python -m shards demo --features`: the digits' 64 pixel values as feat.npy, for features mode."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shards.__main__ import main as shards_main
from shards.manifest import Manifest
from shards.reader import iter_samples


def test_demo_features_store_the_pixels_the_png_holds(tmp_path):
    assert shards_main(["demo", "--out", str(tmp_path / "d"), "--features"]) == 0
    n = 0
    for split in ("train", "query", "database"):
        m = Manifest.load(str(tmp_path / "d" / split))
        for url in m.shard_urls():
            for s in iter_samples(url):
                feat = s["feat"]
                assert feat.dtype == np.float32 and feat.shape == (64,)
                assert 0.0 <= feat.min() and feat.max() <= 1.0
                png = np.asarray(Image.open(io.BytesIO(s["image"])), dtype=np.float64).reshape(-1)
                # the PNG holds round(v * 255/16); feat holds v / 16 for the same pixel value v
                np.testing.assert_allclose(png, np.rint(feat * 255.0), atol=0)
                n += 1
    assert n == 1233 + 93 + 1704  # every sample of every split carries its features
