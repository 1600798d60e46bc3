"""A segmentation-models-pytorch encoder as the refinement module's trunk (e.g. ImageNet EfficientNet-Lite0).

Same contract as :class:`cascadepsp.models.resnet.ResNetExtractor`: 6 channels in (ImageNet-normalised RGB +
three masks in [-1, 1]), ``(features @ OS8, skip @ OS2, skip @ OS4)`` out. The encoder runs at its own
output stride (16 by default, measured 4x cheaper than 8 on the CPU); its deepest features are upsampled
to OS8 and concatenated with its OS8 features, so the PSP and decoder keep their meaning.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import Tensor, nn

from ..constants import ENCODER_INPUT_NORMS, IMAGENET_MEAN, IMAGENET_STD
from .config import RMConfig


def input_affine(encoder: str) -> tuple[Tensor, Tensor]:
    """(scale, shift), each 1x3x1x1, with ``x * scale + shift`` taking an ImageNet mean/std-normalised RGB
    tensor to the normalisation ``encoder``'s weights were trained with (identity for other encoders)."""
    mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    mean, std = (torch.tensor(v) for v in ENCODER_INPUT_NORMS.get(encoder, (IMAGENET_MEAN, IMAGENET_STD)))
    return (std_in / std).view(1, 3, 1, 1), ((mean_in - mean) / std).view(1, 3, 1, 1)


class EncoderExtractor(nn.Module):
    """smp encoder trunk; the RGB input is re-normalised from ImageNet mean/std to the encoder's own."""

    def __init__(self, config: RMConfig) -> None:
        super().__init__()
        if not config.is_encoder:
            raise ValueError(f"backbone {config.backbone!r} is not an smp encoder")
        self.encoder_name = config.smp_encoder
        with warnings.catch_warnings():  # smp 0.5+ flags its `timm-` encoder names as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            self.encoder = get_encoder(self.encoder_name, in_channels=config.in_channels, weights=None,
                                       output_stride=config.encoder_output_stride)
        scale, shift = input_affine(self.encoder_name)
        self.register_buffer("rgb_scale", scale, persistent=False)
        self.register_buffer("rgb_shift", shift, persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rgb = x[:, :3] * self.rgb_scale + self.rgb_shift
        feats = self.encoder(torch.cat([rgb, x[:, 3:]], dim=1))
        os2, os4, os8, deep = feats[1], feats[2], feats[3], feats[-1]
        if deep.shape[-2:] != os8.shape[-2:]:
            deep = F.interpolate(deep, size=os8.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([deep, os8], dim=1), os2, os4
