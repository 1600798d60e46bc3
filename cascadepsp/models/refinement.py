"""The CascadePSP refinement module (RM): a shared-weight network run as a 3-level cascade.

Attribute names (``feats``, ``psp.stages``, ``psp.bottleneck``, ``up_1..3``, ``final_28``, ``final_56``,
``final_11``, ``final_21``) and Sequential indices match the official checkpoint, so it loads with
``strict=True``. The module is free of IO and resizing policy: it maps tensors to tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RMConfig, get_config
from .encoder import EncoderExtractor
from .guided import GuidedOutput
from .resnet import ResNetExtractor


def _upsample(x: Tensor, factor: int) -> Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class PSPModule(nn.Module):
    """Pyramid pooling as in CascadePSP: per-bin 1x1 conv without channel reduction, then a 1x1 bottleneck."""

    def __init__(self, features: int, out_features: int, sizes: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d((s, s)), nn.Conv2d(features, features, 1, bias=False)) for s in sizes
        )
        self.bottleneck = nn.Conv2d(features * (len(sizes) + 1), out_features, kernel_size=1)
        self.relu = nn.ReLU()

    def forward(self, feats: Tensor) -> Tensor:
        size = feats.shape[-2:]
        priors = [F.interpolate(stage(feats), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.relu(self.bottleneck(torch.cat([*priors, feats], dim=1)))


def _preact_pair(in_ch: int, out_ch: int) -> nn.Sequential:
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 (indices 0..5 as in the checkpoint)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True), nn.Conv2d(out_ch, out_ch, 3, padding=1),
    )


class PSPUpsample(nn.Module):
    """x2 upsampling block: concat [upsampled x, skip] -> residual pre-activation convs."""

    def __init__(self, x_channels: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _preact_pair(in_channels, out_channels)
        self.conv2 = _preact_pair(out_channels, out_channels)
        self.shortcut = nn.Conv2d(x_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = _upsample(x, 2)
        p = self.conv(torch.cat([x, skip], dim=1)) + self.shortcut(x)
        return p + self.conv2(p)


class RefinementModule(nn.Module):
    """Image + coarse mask -> refined mask logits at output stride 8, 4 and 1.

    ``forward(x, seg, inter_s8=None, inter_s4=None)`` takes a normalised RGB image ``x`` (B,3,H,W) and
    masks in [-1, 1] (B,1,H,W); H and W must be multiples of 8. It returns a dict of logits
    ``out_*`` and their sigmoids ``pred_*``, all at the input size.

    With ``config.residual = k > 0`` every output's logits are the head's plus ``k`` x the mask estimate
    its pass was given (pass 1: ``seg``; later passes: the OS8 / OS4 estimates they take in), so the
    network only has to learn where to move the input, and an untrained one returns it.

    A call with ``inter_s8`` is a local-step window; ``config.local_step`` decides how it runs (passes 2 and 3,
    or "light": pass 3 alone, without the guided output stage).
    """

    def __init__(self, config: RMConfig | str = "resnet50") -> None:
        super().__init__()
        self.config = cfg = get_config(config)
        feat, psp_out = cfg.feature_channels, cfg.psp_out
        c1, c2, c3 = cfg.up_channels
        hid = cfg.head_hidden
        self.feats = EncoderExtractor(cfg) if cfg.is_encoder else ResNetExtractor(cfg)
        self.psp = PSPModule(feat, psp_out, cfg.psp_sizes)
        self.up_1 = PSPUpsample(psp_out, psp_out + cfg.skip_channels, c1)
        self.up_2 = PSPUpsample(c1, c1 + cfg.stem_channels, c2)
        self.up_3 = PSPUpsample(c2, c2 + 3, c3)
        self.final_28 = nn.Sequential(nn.Conv2d(psp_out, hid, 1), nn.ReLU(inplace=True), nn.Conv2d(hid, 1, 1))
        self.final_56 = nn.Sequential(nn.Conv2d(c1, hid, 1), nn.ReLU(inplace=True), nn.Conv2d(hid, 1, 1))
        self.final_11 = nn.Conv2d(c3 + 3, hid, kernel_size=1)
        self.final_21 = nn.Conv2d(hid, 1, kernel_size=1)
        self.guided = GuidedOutput(c3, cfg.guided_radius) if cfg.guided_radius else None

    def _trunk(self, x: Tensor, seg: Tensor, m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f, f_os2, f_os4 = self.feats(torch.cat([x, seg, m1, m2], dim=1))
        return self.psp(f), f_os2, f_os4

    def forward(self, x: Tensor, seg: Tensor, inter_s8: Tensor | None = None,
                inter_s4: Tensor | None = None) -> dict[str, Tensor]:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"x: height and width must be multiples of 8, got {tuple(x.shape[-2:])}")
        out: dict[str, Tensor] = {}

        k = self.config.residual

        def head(logits: Tensor, given: Tensor) -> Tensor:
            return logits + k * given if k else logits

        # Pass 1 (OS8 only), skipped when a coarse OS8 estimate is supplied.
        if inter_s8 is None:
            p, _, _ = self._trunk(x, seg, seg, seg)
            logits_8 = head(_upsample(self.final_28(p), 8), seg)
            out["out_28"], out["pred_28"] = logits_8, torch.sigmoid(logits_8)
            t8 = torch.tanh(logits_8)
        else:
            t8 = inter_s8

        # Pass 2 (OS8 + OS4), skipped when an OS4 estimate is supplied, and for a light local-step window (an
        # OS8 estimate supplied, config.local_step "light"): that estimate then stands in for both.
        light = inter_s8 is not None and self.config.local_step == "light"
        if inter_s4 is None and light:
            inter_s4 = inter_s8
        if inter_s4 is None:
            p, _, f_os4 = self._trunk(x, seg, t8, t8)
            logits_8 = head(_upsample(self.final_28(p), 8), t8)
            logits_4 = head(_upsample(self.final_56(self.up_1(p, f_os4)), 4), t8)
            out["out_28_2"], out["pred_28_2"] = logits_8, torch.sigmoid(logits_8)
            out["out_56"], out["pred_56"] = logits_4, torch.sigmoid(logits_4)
            t8, t4 = torch.tanh(logits_8), torch.tanh(logits_4)
        else:
            t4 = inter_s4

        # Pass 3 (OS8, OS4 and full resolution).
        p, f_os2, f_os4 = self._trunk(x, seg, t8, t4)
        out["out_28_3"] = head(_upsample(self.final_28(p), 8), t8)
        p = self.up_1(p, f_os4)
        out["out_56_2"] = head(_upsample(self.final_56(p), 4), t4)
        p = self.up_3(self.up_2(p, f_os2), x)
        logits_1 = head(self.final_21(F.relu(self.final_11(torch.cat([p, x], dim=1)))), t4)
        out["out_224"] = logits_1 if self.guided is None or light else self.guided(logits_1, p, x)
        for key in ("out_28_3", "out_56_2", "out_224"):
            out["pred" + key[3:]] = torch.sigmoid(out[key])
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
