"""Image/feature backbones: each maps an input batch to a flat feature vector of size ``out_dim``.

ResNet is written in plain torch (torchvision cannot be imported on the CPU machines this project
tests on) with torchvision's module names, so a torchvision ``resnet18``/``resnet50`` state dict loads
as is. When torchvision or timm is installed (GPU clusters), their models can be used by name.
"""
from __future__ import annotations

import io

import torch
from torch import nn


def run_stages(groups: list, x: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
    """Run the stage ``groups`` (each a sequence of modules) up to the last index in ``stages``; the
    map after each listed stage, in the order listed."""
    if not stages or min(stages) < 0 or max(stages) >= len(groups):
        raise ValueError(f"encoder.pyramid_stages: {list(stages)} out of range 0..{len(groups) - 1}")
    out = {}
    for i, group in enumerate(groups[:max(stages) + 1]):
        for m in group:
            x = m(x)
        out[i] = x
    return [out[s] for s in stages]


class SmallCNN(nn.Module):
    """Three conv blocks + global average pool; trains in minutes on 2 CPUs on 32x32 images."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def stage_channels(self) -> list[int]:
        """Channels after each conv block (the stages of ``stage_maps``)."""
        return [m.num_features for m in self.features if isinstance(m, nn.BatchNorm2d)]

    def default_pyramid_stages(self) -> list[int]:
        return [1, 2]

    def stage_maps(self, x: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
        """The maps after the listed conv blocks (each conv, BN, ReLU, max-pool), in that order."""
        return run_stages([self.features[i:i + 4] for i in range(0, 12, 4)], x, stages)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    """ResNet with torchvision's parameter names; ``num_classes=0`` drops the classifier (backbone use)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 512 * block.expansion
        self.fc = nn.Linear(self.out_dim, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_channels(self) -> list[int]:
        """Channels after the stem (conv1 .. maxpool) and after layer1 .. layer4."""
        e = self.layer1[0].expansion
        return [64, 64 * e, 128 * e, 256 * e, 512 * e]

    def default_pyramid_stages(self) -> list[int]:
        return [2, 3, 4]  # layer2 .. layer4 (stride 8, 16, 32)

    def stage_maps(self, x: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
        """The maps after the listed stages (0 the stem, 1..4 layer1..layer4), in that order."""
        stem = [self.conv1, self.bn1, self.relu, self.maxpool]
        return run_stages([stem, [self.layer1], [self.layer2], [self.layer3], [self.layer4]], x, stages)


def resnet18(num_classes: int = 0) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 0) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


def read_state_dict(url: str) -> dict[str, torch.Tensor]:
    """A state dict from a local path or s3:// URL: ``.safetensors`` (if installed) or torch's zip format,
    always with ``weights_only=True`` (never unpickle arbitrary objects)."""
    from shards import storage  # lazy: local paths and s3:// through one API

    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"encoder.weights: no such file {url}") from None
    if url.endswith(".safetensors"):
        try:
            from safetensors.torch import load as load_safetensors
        except ImportError:
            raise ImportError(f"encoder.weights {url} is .safetensors but safetensors is not installed") from None
        return load_safetensors(data)
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError for non-weights files
        raise ValueError(f"encoder.weights {url}: not a weights-only torch state dict ({e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"encoder.weights {url}: expected a state dict, got {type(sd).__name__}")
    return sd


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], url: str) -> None:
    """Load a torchvision-format state dict; the classifier (``fc.*``) is dropped when the backbone has
    none. Any other missing or unexpected key is an error naming the keys."""
    if isinstance(getattr(model, "fc", None), nn.Identity):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"encoder.weights {url} does not match the backbone: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")


def external_backbone(kind: str, name: str, pretrained: bool) -> nn.Module:
    """A torchvision or timm model by name with its classifier removed; ``out_dim`` set."""
    if kind == "torchvision":
        try:
            import torchvision
        except Exception as e:
            raise ImportError(f"encoder.kind 'torchvision' needs torchvision importable ({e})") from None
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
        head = "fc" if hasattr(model, "fc") else "classifier"
        last = getattr(model, head)
        out_dim = last.in_features if isinstance(last, nn.Linear) else last[-1].in_features
        setattr(model, head, nn.Identity())
        model.out_dim = out_dim
        return model
    try:
        import timm
    except Exception as e:
        raise ImportError(f"encoder.kind 'timm' needs timm importable ({e})") from None
    model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    model.out_dim = model.num_features
    return model
