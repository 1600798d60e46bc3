"""PSPNet (Zhao et al., CVPR 2017) on a dilated output-stride-8 encoder from segmentation_models_pytorch.

How it differs from smp's own ``PSPNet``: smp reaches stride 8 by cutting the encoder after stage 3
(``encoder_depth=3``), uses a 1x1 conv + Dropout 0.2 after the pyramid and a 3x3 classifier, and its
optional "aux" output is an image-level classification head. Here, as in the paper and hszhao/semseg, the
whole encoder is kept and its last two stages are dilated (``output_stride=8``), the pyramid output is
followed by a 3x3 conv-BN-ReLU + Dropout2d 0.1 + 1x1 classifier, and a dense auxiliary segmentation head on
stage 3 adds 0.4 x its loss in training. Unlike semseg: torchvision's 7x7 stem (no "deep base"), no BN on the
1x1 pyramid bin (so batch size 1 trains), ``align_corners=False`` and any input size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import Tensor, nn

from cascadepsp.models.encoder import input_affine

from .config import PSPNetConfig

ENCODER_DEPTH = 5
OUTPUT_STRIDE = 8


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """Pool the features into ``bins``x``bins`` grids, reduce each to C/reduction channels, upsample, concat.

    The 1x1 branch has a biased conv and no BatchNorm: BN on a single pooled value per channel breaks in
    training with batch size 1. Output channels: C + len(bins) * C/reduction (features first).
    """

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6), reduction: int = 4) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.branch_channels = max(1, in_channels // reduction)
        branches = []
        for b in self.bins:
            if b == 1:
                reduce = nn.Sequential(nn.Conv2d(in_channels, self.branch_channels, 1, bias=True),
                                       nn.ReLU(inplace=True))
            else:
                reduce = _conv_bn_relu(in_channels, self.branch_channels, 1)
            branches.append(nn.Sequential(nn.AdaptiveAvgPool2d(b), reduce))
        self.branches = nn.ModuleList(branches)
        self.out_channels = in_channels + len(self.bins) * self.branch_channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [x]
        for branch in self.branches:
            outs.append(F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, dim=1)


class SegHead(nn.Module):
    """3x3 conv-BN-ReLU, Dropout2d, 1x1 classifier: the shape of both the main and the auxiliary head."""

    def __init__(self, in_channels: int, mid_channels: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.block = _conv_bn_relu(in_channels, mid_channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.block(x)))


class PSPNet(nn.Module):
    """Pyramid scene parsing network on any smp encoder dilated to output stride 8.

    ``forward`` returns logits ``(B, classes, H, W)`` at the input size in eval mode, and a tuple
    ``(main_logits, aux_logits)`` in training mode (``aux_logits`` is None when ``aux=False``).
    Keyword arguments are the fields of :class:`PSPNetConfig`; or pass ``config=``.
    """

    def __init__(self, encoder_name: str = "resnet50", classes: int = 2, *, config: PSPNetConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = PSPNetConfig(encoder_name=encoder_name, classes=classes, **kwargs)
        elif kwargs:
            raise ValueError(f"config: pass either config= or keyword fields, not both (got {sorted(kwargs)})")
        self.config = config
        try:
            self.encoder = get_encoder(config.encoder_name, in_channels=config.in_channels, depth=ENCODER_DEPTH,
                                       weights=None, output_stride=OUTPUT_STRIDE)
        except KeyError as err:
            raise ValueError(f"encoder_name: {config.encoder_name!r} is not a segmentation_models_pytorch encoder "
                             "(see segmentation_models_pytorch.encoders.get_encoder_names())") from err
        except (ValueError, NotImplementedError, AttributeError) as err:
            raise ValueError(f"encoder_name: {config.encoder_name!r} cannot run at output_stride=8 "
                             f"({str(err)[:200]})") from err
        # Inputs are ImageNet mean/std-normalised; encoders whose weights expect another normalisation
        # (EfficientNet-Lite: (x/255 - 0.5) / 0.5) get it here, so every PSPNet takes the same input.
        scale, shift = input_affine(config.encoder_name)
        self._renormalise = not (torch.all(scale == 1) and torch.all(shift == 0))
        self.register_buffer("rgb_scale", scale, persistent=False)
        self.register_buffer("rgb_shift", shift, persistent=False)
        channels = list(self.encoder.out_channels)
        self.feature_channels = channels[-1]
        self.aux_in_channels = channels[-2]  # stage 3 of a ResNet (layer3, 1024 channels for resnet50)
        self.ppm = PyramidPooling(self.feature_channels, config.ppm_bins, config.ppm_reduction)
        self.head = SegHead(self.ppm.out_channels, config.head_channels, config.classes, config.dropout)
        self.aux_head = (SegHead(self.aux_in_channels, config.aux_channels, config.classes, config.dropout)
                         if config.aux else None)

    @classmethod
    def from_config(cls, config: PSPNetConfig | dict[str, Any]) -> PSPNet:
        if isinstance(config, dict):
            config = PSPNetConfig.from_dict(config)
        return cls(config=config)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the randomly initialised heads (PPM, classifier, aux): they get 10x lr in training."""
        for module in (self.ppm, self.head, self.aux_head):
            if module is not None:
                yield from module.parameters()

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor | None]:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x: expected a (B, {self.config.in_channels}, H, W) tensor, got {tuple(x.shape)}")
        size = x.shape[-2:]
        if self._renormalise:
            x = x * self.rgb_scale + self.rgb_shift
        features = self.encoder(x)
        logits = self.head(self.ppm(features[-1]))
        main = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if not self.training:
            return main
        aux = None
        if self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features[-2]), size=size, mode="bilinear", align_corners=False)
        return main, aux
