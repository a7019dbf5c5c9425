"""PHPQ's pyramid hybrid pooling head: exact pooled values, shapes and out_dim per backbone, where
gradients go, and one clear error per bad setting."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from shards.config import ConfigError, from_dict
from trainer.encoders import EncoderConfig, build_backbone, build_encoder
from trainer.encoders.pyramid import PyramidHybridPool, pyramid_hybrid_pool

HAS_LITE = importlib.util.find_spec("efficientnet_lite_pytorch") is not None


def test_pooled_segments_are_avg_then_max_per_scale_each_l2_normalised():
    x = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4)  # channel 0: 0..15, channel 1: 16..31
    out = pyramid_hybrid_pool([x], [1, 2])
    assert out.shape == (1, 2 * 2 + 2 * 8)

    def unit(v):
        v = torch.tensor(v, dtype=torch.float32)
        return v / v.norm()

    avg1, max1 = unit([7.5, 23.5]), unit([15.0, 31.0])
    # 2x2 grid of 2x2 cells, channel-major: channel 0 cells (0,1,4,5), (2,3,6,7), (8,9,12,13), (10,11,14,15)
    avg2 = unit([2.5, 4.5, 10.5, 12.5, 18.5, 20.5, 26.5, 28.5])
    max2 = unit([5.0, 7.0, 13.0, 15.0, 21.0, 23.0, 29.0, 31.0])
    torch.testing.assert_close(out[0], torch.cat([avg1, max1, avg2, max2]), rtol=0, atol=1e-6)


def test_two_maps_concatenate_in_the_order_given_and_every_segment_has_unit_norm():
    a, b = torch.randn(3, 4, 8, 8) * 50, torch.rand(3, 6, 2, 2) * 0.01  # very different magnitudes
    out = pyramid_hybrid_pool([a, b], [1, 2])
    sizes = [4, 4, 16, 16, 6, 6, 24, 24]
    assert out.shape == (3, sum(sizes))
    norms = torch.stack([s.norm(dim=1) for s in out.split(sizes, dim=1)], 1)
    torch.testing.assert_close(norms, torch.ones(3, 8))


@pytest.mark.parametrize("kind, size, stages, scales, dim", [
    ("small_cnn", 32, [], [1, 2], (64 + 128) * 5 * 2),  # default [1, 2], width 32
    ("small_cnn", 32, [0], [1], 32 * 2),
    ("resnet18", 64, [], [1, 2], (128 + 256 + 512) * 5 * 2),  # default layer2..layer4
    ("resnet18", 64, [0, 4], [1, 3], (64 + 512) * 10 * 2),
    ("resnet50", 64, [4], [1], 2048 * 2),
])
def test_out_dim_is_the_forward_length_for_each_backbone(kind, size, stages, scales, dim):
    enc = build_encoder(EncoderConfig(kind=kind, head="pyramid_hybrid", pyramid_stages=stages,
                                      pyramid_scales=scales), embed_dim=16).eval()
    assert enc.backbone.out_dim == dim
    with torch.no_grad():
        h = enc.backbone(torch.randn(2, 3, size, size))
        f = enc(torch.randn(2, 3, size, size))
    assert h.shape == (2, dim) and f.shape == (2, 16)


def test_stage_maps_of_the_last_stage_are_what_the_plain_head_pools():
    for net, last in ((build_backbone(EncoderConfig(kind="resnet18")), 4),
                      (build_backbone(EncoderConfig(kind="small_cnn", width=8)), 2)):
        net.eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            plain = net(x)
            pooled = net.stage_maps(x, [last])[0].mean((2, 3))
        torch.testing.assert_close(pooled, plain, rtol=0, atol=1e-6)


def test_gradients_reach_the_stages_up_to_the_deepest_pooled_one_and_no_further():
    enc = build_encoder(EncoderConfig(kind="small_cnn", width=8, head="pyramid_hybrid", pyramid_stages=[0, 1],
                                      pyramid_scales=[1, 2]), embed_dim=8)
    enc(torch.randn(4, 3, 32, 32)).square().sum().backward()
    convs = [m for m in enc.backbone.backbone.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.grad is not None and c.weight.grad.abs().sum().item() > 0 for c in convs] == [True, True, False]
    assert enc.head.fc.weight.grad.shape == (8, 8 * 5 * 2 + 16 * 5 * 2)


@pytest.mark.parametrize("keys, key, fragment", [
    ({"kind": "mlp", "in_features": 10, "head": "pyramid_hybrid"}, "encoder.head", "eval.extract"),
    ({"kind": "timm", "name": "x", "head": "pyramid_hybrid"}, "encoder.head", "not encoder.kind 'timm'"),
    ({"kind": "resnet18", "head": "pyramid_hybrid", "pyramid_stages": [2, 2]}, "encoder.pyramid_stages", "[2, 2]"),
    ({"kind": "resnet18", "head": "pyramid_hybrid", "pyramid_stages": [-1]}, "encoder.pyramid_stages", ">= 0"),
    ({"kind": "resnet18", "head": "pyramid_hybrid", "pyramid_scales": [0, 1]}, "encoder.pyramid_scales", "[0, 1]"),
    ({"kind": "resnet18", "head": "pyramid_hybrid", "pyramid_scales": []}, "encoder.pyramid_scales", "[]"),
    ({"kind": "resnet18", "head": "pyramid"}, "encoder.head", "pyramid"),
])
def test_a_bad_pyramid_setting_is_one_error_naming_the_key(keys, key, fragment):
    with pytest.raises(ConfigError) as e:
        from_dict(EncoderConfig, keys, "encoder")
    assert key in str(e.value) and fragment in str(e.value)


def test_the_stage_counts_the_config_checks_are_the_backbones_own():
    from trainer.encoders import PYRAMID_STAGE_COUNTS

    for kind, n in PYRAMID_STAGE_COUNTS.items():
        if kind.startswith("efficientnet") and not HAS_LITE:
            continue
        if kind.startswith("efficientnet"):
            from trainer.encoders.efficientnet import EfficientNetLite

            net = EfficientNetLite(kind, None)  # architecture only: no weights needed to count stages
        else:
            net = build_backbone(EncoderConfig(kind=kind))
        assert len(net.stage_channels()) == n, kind
    with pytest.raises(ConfigError, match=r"encoder\.pyramid_stages: \[5, 18\] out of range: encoder\.kind "
                                          r"'efficientnet_lite0' has stages 0\.\.17"):
        from_dict(EncoderConfig, {"kind": "efficientnet_lite0", "head": "pyramid_hybrid", "pyramid_stages": [5, 18]},
                  "encoder")


def test_a_stage_out_of_range_names_the_valid_range_and_the_channels():
    """The backbone's own check (kinds the config cannot count, e.g. a resnet built by hand)."""
    from trainer.encoders import resnet18

    with pytest.raises(ValueError, match=r"\[5\] out of range for ResNet, which has stages 0\.\.4 "
                                         r"\(channels \[64, 64, 128, 256, 512\]\)"):
        PyramidHybridPool(resnet18(), [3, 5])


def test_a_backbone_without_stage_maps_is_refused_by_name():
    with pytest.raises(ValueError, match="Linear does not expose its stage maps"):
        PyramidHybridPool(torch.nn.Linear(2, 2))


@pytest.mark.skipif(not HAS_LITE, reason="needs the pretrained extra (efficientnet-lite-pytorch)")
def test_lite0_pyramid_defaults_stage_maps_and_frozen_backbone():
    enc = build_encoder(EncoderConfig(kind="efficientnet_lite0", head="pyramid_hybrid"), embed_dim=8)
    lite = enc.backbone.backbone
    assert lite.stage_channels() == [32, 16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280]
    assert enc.backbone.stages == [5, 11, 17] and enc.backbone.out_dim == (40 + 112 + 1280) * 5 * 2 == 14320
    assert enc.backbone.image_size == 224
    enc.train()
    x = torch.randn(2, 3, 96, 96)
    maps = lite.stage_maps(x, [17, 5])
    assert [tuple(m.shape) for m in maps] == [(2, 1280, 3, 3), (2, 40, 12, 12)]
    assert not maps[0].requires_grad  # frozen (trainable=0): no graph through the backbone
    torch.testing.assert_close(maps[0], lite.features_map(x), rtol=0, atol=0)
    enc(x).sum().backward()
    assert enc.head.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in lite.parameters())
    with pytest.raises(ValueError, match=r"\[18\] out of range for EfficientNetLite, which has stages 0\.\.17"):
        PyramidHybridPool(lite, [18])


@pytest.mark.skipif(not HAS_LITE, reason="needs the pretrained extra (efficientnet-lite-pytorch)")
def test_lite0_pyramid_with_the_last_two_stages_trainable_trains_only_those():
    """trainable=2: block 16 and the head conv train; the pooled stages 5 and 11 stay frozen, so their
    maps enter the pyramid without a graph and only the 1280-channel map carries gradient back."""
    enc = build_encoder(EncoderConfig(kind="efficientnet_lite0", head="pyramid_hybrid", trainable=2), embed_dim=8)
    enc.train()
    enc(torch.randn(2, 3, 64, 64)).square().sum().backward()
    net = enc.backbone.backbone.net
    assert net._conv_head.weight.grad.abs().sum() > 0
    assert net._blocks[15]._project_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for b in net._blocks[:15] for p in b.parameters())
    assert net._conv_stem.weight.grad is None
