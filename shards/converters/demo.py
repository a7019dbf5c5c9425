"""The built-in demo dataset: scikit-learn's 1797 real handwritten digits with SIMULATED weak tags.

The images and labels are real (``sklearn.datasets.load_digits``, shipped with scikit-learn, no
download). The tags are simulated, seeded, from the labels, to look like Flickr tags:

* each digit has English synonyms (``three``, ``3``, ``iii``, ``trio``, ``triple``); each is kept
  independently with probability ``keep_prob``;
* with probability ``untagged_prob`` all true tags are dropped (an image with only noise or none);
* ``Poisson(noise_mean)`` noise tags are drawn from a Zipf(``zipf_s``) law over a vocabulary of
  typical Flickr noise tags (camera brands, years, ``bw``, ``explore``...).

Each 8x8 image (values 0..16) is stored as an 8x8 grayscale PNG with values scaled by 255/16
(lossless, one-to-one); the reader converts to RGB and resizes. Labels are ``digit_0``..``digit_9``.
"""
from __future__ import annotations

from dataclasses import dataclass
import io

import numpy as np
from PIL import Image

from shards.writer import DatasetWriter, ShardingConfig

SOURCE = "sklearn-digits (real images; tags simulated from labels, seeded)"
SYNONYMS = {
    0: ["zero", "0", "nought", "nil", "oval"],
    1: ["one", "1", "single", "solo", "first"],
    2: ["two", "2", "ii", "pair", "duo"],
    3: ["three", "3", "iii", "trio", "triple"],
    4: ["four", "4", "iv", "quartet", "fourth"],
    5: ["five", "5", "quintet", "fifth", "pentagon"],
    6: ["six", "6", "vi", "sextet", "sixth"],
    7: ["seven", "7", "vii", "seventh", "septet"],
    8: ["eight", "8", "viii", "octet", "eighth"],
    9: ["nine", "9", "ix", "ninth", "nonet"],
}
NOISE_VOCAB = [
    "nikon", "canon", "photo", "2008", "explore", "bw", "art", "2007", "square", "macro", "digital",
    "white", "black", "light", "abstract", "film", "old", "vintage", "texture", "sony", "blur",
    "closeup", "pixel", "paper", "ink", "handwriting", "number", "scan", "sign", "pattern", "design",
    "geotagged", "flickr", "favorite", "olympus", "2009", "lomo", "minimal", "shadow", "grey",
]


@dataclass
class DemoConfig:
    seed: int = 0
    keep_prob: float = 0.35
    untagged_prob: float = 0.1
    noise_mean: float = 1.5
    zipf_s: float = 1.1
    features: bool = False  # also store feat.npy = the 64 pixel values / 16 (for features mode)


def demo_sharding() -> ShardingConfig:
    """About 100 query / 1260 train / 1690 database (database includes train), 256 per shard."""
    return ShardingConfig(max_count=256, query_fraction=0.056, train_fraction=0.7)


def simulate_tags(label: int, rng: np.random.Generator, cfg: DemoConfig) -> list[str]:
    syn = SYNONYMS[label]
    tags = [] if rng.random() < cfg.untagged_prob else [t for t in syn if rng.random() < cfg.keep_prob]
    ranks = np.arange(1, len(NOISE_VOCAB) + 1)
    p = ranks ** -cfg.zipf_s
    for i in rng.choice(len(NOISE_VOCAB), size=rng.poisson(cfg.noise_mean), p=p / p.sum()):
        if NOISE_VOCAB[i] not in tags:
            tags.append(NOISE_VOCAB[i])
    return tags


def png_bytes(image8x8: np.ndarray) -> bytes:
    pixels = np.rint(np.asarray(image8x8, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def convert_demo(out: str, cfg: DemoConfig | None = None, sharding: ShardingConfig | None = None,
                 overwrite: bool = False) -> DatasetWriter:
    from sklearn.datasets import load_digits

    cfg = cfg or DemoConfig()
    digits = load_digits()
    rng = np.random.default_rng(cfg.seed)
    labels = [f"digit_{d}" for d in range(10)]
    with DatasetWriter(out, SOURCE, labels, sharding or demo_sharding(), overwrite) as writer:
        for i, (img, label) in enumerate(zip(digits.images, digits.target)):
            feat = (img.reshape(-1) / 16.0).astype(np.float32) if cfg.features else None
            writer.add(f"digits/{i:04d}", png_bytes(img), simulate_tags(int(label), rng, cfg), [labels[label]],
                       feat=feat)
    return writer
