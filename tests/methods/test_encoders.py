"""Encoders: shapes, the transform layer, and torchvision-compatible ResNet weights."""
from __future__ import annotations

import pytest
import torch

from shards.config import ConfigError, from_dict
from trainer.encoders import EncoderConfig, build_encoder, resnet18, resnet50


def _conv(c_in, c_out, k):
    return c_in * c_out * k * k


def _bn(c):
    return 2 * c


def test_resnet18_parameter_count_equals_torchvisions_counted_by_hand():
    stem = _conv(3, 64, 7) + _bn(64)
    layer1 = 2 * (2 * (_conv(64, 64, 3) + _bn(64)))
    total = stem + layer1
    for c_in, c in ((64, 128), (128, 256), (256, 512)):
        first = _conv(c_in, c, 3) + _bn(c) + _conv(c, c, 3) + _bn(c) + _conv(c_in, c, 1) + _bn(c)
        second = 2 * (_conv(c, c, 3) + _bn(c))
        total += first + second
    total += 512 * 1000 + 1000  # fc
    assert total == 11_689_512  # torchvision.models.resnet18().parameters() sum, as published
    assert sum(p.numel() for p in resnet18(num_classes=1000).parameters()) == total
    assert sum(p.numel() for p in resnet50(num_classes=1000).parameters()) == 25_557_032


def test_resnet18_torchvision_state_dict_round_trips_through_a_file(tmp_path):
    src = resnet18(num_classes=1000)
    keys = list(src.state_dict())
    # torchvision's names, spot-checked (including BN running stats and the downsample path)
    for k in ("conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight",
              "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight"):
        assert k in keys
    assert len(keys) == 122
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    enc = build_encoder(EncoderConfig(kind="resnet18", weights=str(path)), embed_dim=8)
    got = enc.backbone.state_dict()
    assert set(got) == {k for k in keys if not k.startswith("fc.")}
    for k, v in got.items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_resnet_weights_with_wrong_keys_fail_naming_the_keys(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="features.0.weight"):
        build_encoder(EncoderConfig(kind="resnet18", weights=str(path)), embed_dim=8)


def test_weights_that_need_unpickling_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": object()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        build_encoder(EncoderConfig(kind="resnet18", weights=str(path)), embed_dim=8)


def test_small_cnn_encoder_outputs_tanh_embeddings_of_the_tag_dimension():
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(kind="small_cnn", width=8, num_classes=5), embed_dim=12)
    f, logits = enc(torch.randn(4, 3, 32, 32), with_logits=True)
    assert f.shape == (4, 12) and logits.shape == (4, 5)
    assert float(f.detach().abs().max()) < 1.0
    assert torch.equal(enc.head.fc.bias.detach(), torch.zeros(12))
    assert abs(float(enc.head.fc.weight.detach().std()) - 0.01) < 0.003


def test_mlp_encoder_over_features_and_missing_input_size_is_named():
    enc = build_encoder(EncoderConfig(kind="mlp", in_features=20, hidden=16), embed_dim=6)
    assert enc(torch.randn(3, 20)).shape == (3, 6)
    with pytest.raises(ConfigError, match=r"^encoder\.in_features: must be set \(the length of feat\.npy\)"):
        from_dict(EncoderConfig, {"kind": "mlp"}, "encoder")  # refused as the config loads, not at build


@pytest.mark.s3
def test_resnet18_weights_load_from_s3(s3_bucket, tmp_path):
    from shards import storage

    src = resnet18()
    url = f"s3://{s3_bucket}/weights/resnet18.pth"
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    storage.upload_file(path, url)
    enc = build_encoder(EncoderConfig(kind="resnet18", weights=url), embed_dim=4)
    assert torch.equal(enc.backbone.layer3[1].conv2.weight, src.layer3[1].conv2.weight)


def test_small_cnn_wsdhq_learns_digit_tags_from_images(one_thread):
    """Image mode end to end on 32x32 RGB digits (sklearn's 8x8 upscaled): the margin loss falls."""
    from sklearn.datasets import load_digits

    from benchmarks.plain_loop import batches_of, fit_plain
    from trainer.methods import method_config, OptimConfig, build_method, label_embeddings

    d = load_digits()
    img = torch.tensor(d.images[:400] / 16.0, dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(img, size=32, mode="bilinear").repeat(1, 3, 1, 1)
    tags = torch.nn.functional.one_hot(torch.tensor(d.target[:400]), 10)
    torch.manual_seed(0)
    m = build_method(method_config(embed_dim=16, M=1, K=16), EncoderConfig(kind="small_cnn", width=8),
                     label_embeddings(10, 16))
    hist = fit_plain(m, batches_of(x, tags, 25), 3, OptimConfig(lr=3e-3, decay_every_steps=0))
    # measured: margin loss 1.013 -> 0.944 -> 0.694 over 3 epochs
    assert hist[-1]["emb"] < 0.75 * hist[0]["emb"]
    assert hist[1]["codebook_updates"] == 1
