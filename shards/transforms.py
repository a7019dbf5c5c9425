"""Image tensors for the encoder, in pure torch (torchvision is not a dependency of wsdhq).

Train: random resized crop (area ``scale``, aspect 3/4..4/3, as torchvision's) + horizontal flip,
resized by ``F.interpolate(bilinear, antialias=True)`` in float; randomness from a seeded generator.
Eval: resize the shorter side to ``size`` then center crop, by Pillow (``eval_pixels``: bilinear,
antialiased when shrinking, the filter torch's ``antialias=True`` reproduces) into uint8, then
``normalise_batch``. Both end ImageNet-normalised float32 (B/C, H, W).

Why eval goes through uint8 pixels: the per-image work then stays in Pillow (one C call that
releases the GIL, no torch op that could start its own OpenMP team in a reading thread) and the
float conversion + normalisation runs once per batch, vectorised, where the model runs (on the
GPU when there is one, after a 4x smaller copy). Rounding the resized pixels to uint8 moves each
by at most 1/255 of intensity against the float resize (tested).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [0, 1]."""
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)  # numpy: no thread-pool sync
    return torch.from_numpy(np.ascontiguousarray(arr))


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False,
                         antialias=True).squeeze(0)


def random_resized_crop(x: torch.Tensor, size: int, gen: torch.Generator,
                        scale: tuple[float, float] = (0.35, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    _, h, w = x.shape
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1])
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
            return _resize(x[:, top:top + ch, left:left + cw], size, size)
    return center_crop_resize(x, size)


def center_crop_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = x.shape
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = _resize(x, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top:top + size, left:left + size]


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def train_transform(img: Image.Image, size: int, gen: torch.Generator,
                    scale: tuple[float, float] = (0.35, 1.0)) -> torch.Tensor:
    x = random_resized_crop(to_tensor(img), size, gen, scale)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-1)
    return normalise(x)


def eval_pixels(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 (size, size, 3): shorter side resized to ``size``, centre crop."""
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img)[top:top + size, left:left + size]


def normalise_batch(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> ImageNet-normalised float32 (B, 3, H, W), contiguous."""
    x = pixels.permute(0, 3, 1, 2).contiguous().float().mul_(1 / 255)
    return x.sub_(IMAGENET_MEAN.to(x.device)).div_(IMAGENET_STD.to(x.device))


def eval_transform(img: Image.Image, size: int) -> torch.Tensor:
    return normalise_batch(torch.from_numpy(np.array(eval_pixels(img, size)))[None])[0]
