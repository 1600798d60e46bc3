"""The ResNet feature extractor of the refinement module (6-channel stem, output stride 8).

Block names and the dilation pattern follow the original CascadePSP extractor so its checkpoint
loads with strict key matching. Quirk kept on purpose: the first block of layer3 and layer4 is not
dilated (only blocks 1.. get the dilation), unlike torchvision's ``replace_stride_with_dilation``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from .config import RMConfig


class DilatedBasicBlock(nn.Module):
    """ResNet basic block that also accepts a dilation (torchvision's refuses dilation > 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_block(kind: str, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                dilation: int) -> nn.Module:
    if kind == "bottleneck":
        return Bottleneck(inplanes, planes, stride=stride, downsample=downsample, dilation=dilation)
    return DilatedBasicBlock(inplanes, planes, stride=stride, downsample=downsample, dilation=dilation)


class ResNetExtractor(nn.Module):
    """ResNet trunk returning ``(layer4 @ OS8, conv1 output before BN @ OS2, layer1 @ OS4)``."""

    def __init__(self, config: RMConfig) -> None:
        super().__init__()
        w = config.base_width
        self.inplanes = w
        self._kind = config.block_type
        self._expansion = config.expansion
        self.conv1 = nn.Conv2d(config.in_channels, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        n1, n2, n3, n4 = config.layers
        self.layer1 = self._make_layer(w, n1)
        self.layer2 = self._make_layer(2 * w, n2, stride=2)
        self.layer3 = self._make_layer(4 * w, n3, stride=1, dilation=2)
        self.layer4 = self._make_layer(8 * w, n4, stride=1, dilation=4)
        self.reset_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out = planes * self._expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        # Original quirk: block 0 runs undilated; only the following blocks get `dilation`.
        layers = [_make_block(self._kind, self.inplanes, planes, stride, downsample, 1)]
        self.inplanes = out
        layers += [_make_block(self._kind, self.inplanes, planes, 1, None, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """He-normal (fan-out) convs and unit BN, as the original extractor initialises itself."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        stem = self.conv1(x)
        x = self.maxpool(self.relu(self.bn1(stem)))
        skip4 = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(skip4)))
        return x, stem, skip4
