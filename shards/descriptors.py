"""A fixed, hand-made image descriptor for features mode where no pretrained backbone can be had.

The paper's encoder starts from ImageNet-pretrained AlexNet; nothing pretrained can be fetched on an
offline machine, and a CNN trained from scratch on a few hundred images learns little. This is the
classic stand-in of early hashing work on MIRFLICKR (colour + gradient statistics, like GIST/HOG
baselines): deterministic, per image, no training. Three blocks, each L2-normalised so none
dominates: a joint 4x4x4 RGB histogram (Hellinger, i.e. square-rooted), an 8x8 colour layout
(centred pixels), and 8 gradient orientations in 4x4 cells (square-rooted magnitudes). 384-d:
fewer dimensions than training images, which faiss's OPQ and residual baselines need.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

NAME = "colour-texture-v2"
DIM = 64 + 192 + 128


def _unit(x: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(x))
    return x / n if n > 0 else x


def colour_texture(image: Image.Image) -> np.ndarray:
    """(384,) float32 descriptor of one RGB image (any size; resampled to 64x64 first)."""
    rgb = np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32)
    q = (rgb // 64).astype(np.int64).reshape(-1, 3)
    hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float32)
    layout = rgb.reshape(8, 8, 8, 8, 3).mean(axis=(1, 3)).ravel() / 255.0 - 0.5
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, 1:-1] = gray[:, 2:] - gray[:, :-2]
    gy[1:-1, :] = gray[2:, :] - gray[:-2, :]
    mag = np.hypot(gx, gy)
    orient = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * 8).astype(np.int64), 7)
    cell = (np.arange(64)[:, None] // 16) * 4 + np.arange(64)[None, :] // 16
    hog = np.bincount((cell * 8 + orient).ravel(), weights=mag.ravel(), minlength=128).astype(np.float32)
    return np.concatenate([_unit(np.sqrt(hist)), _unit(layout), _unit(np.sqrt(hog))]).astype(np.float32)


def colour_texture_of(data: bytes) -> np.ndarray:
    return colour_texture(Image.open(io.BytesIO(data)))
