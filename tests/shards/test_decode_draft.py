"""Eval-path JPEG decoding at a reduced DCT scale (Pillow's draft): same final size, near-same pixels."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from shards.images import decode_rgb
from shards.transforms import eval_transform


def _smooth_jpeg(w: int, h: int) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0),
                    128 + 60 * np.sin((xx + yy) / 31.0)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_jpeg_is_decoded_at_the_smallest_scale_that_keeps_both_sides_at_least_the_target():
    data = _smooth_jpeg(340, 256)
    assert decode_rgb(data, "x").size == (340, 256)
    assert decode_rgb(data, "x", min_side=112).size == (170, 128)   # 1/2 scale: both sides >= 112
    assert decode_rgb(data, "x", min_side=60).size == (85, 64)      # 1/4 scale
    assert decode_rgb(data, "x", min_side=200).size == (340, 256)   # 1/2 would give 128 < 200: full


def test_drafted_and_full_decodes_give_the_same_tensor_shape_and_nearly_the_same_pixels():
    data = _smooth_jpeg(340, 256)
    full = eval_transform(decode_rgb(data, "x"), 112)
    drafted = eval_transform(decode_rgb(data, "x", min_side=112), 112)
    assert full.shape == drafted.shape == (3, 112, 112)
    # normalised units (ImageNet std ~0.22 per 1.0 of intensity): mean difference well under 1/255 * 10
    assert float((full - drafted).abs().mean()) < 0.05, float((full - drafted).abs().mean())


def test_png_ignores_the_draft_request():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buf, format="PNG")
    assert decode_rgb(buf.getvalue(), "x", min_side=8).size == (50, 40)
    assert torch.equal(eval_transform(decode_rgb(buf.getvalue(), "x", min_side=8), 8),
                       eval_transform(decode_rgb(buf.getvalue(), "x"), 8))
