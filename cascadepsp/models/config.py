"""Architecture configuration of the refinement module: one object holds every width choice."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..configs import JsonConfig
from ..constants import LOCAL_STEPS

BACKBONE_BLOCKS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
# segmentation-models-pytorch encoders: smp name and the channels of its OS2, OS4, OS8 and deepest features.
ENCODER_BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "efficientnet_lite0": ("timm-tf_efficientnet_lite0", (32, 24, 40, 320)),
    "efficientnet_lite1": ("timm-tf_efficientnet_lite1", (32, 24, 40, 320)),  # Lite0's widths, deeper stages
    "efficientnet_lite2": ("timm-tf_efficientnet_lite2", (32, 24, 48, 352)),
}


@dataclass(frozen=True)
class RMConfig(JsonConfig):
    """Widths of a refinement module.

    The defaults are the official CascadePSP network (ResNet-50, 67,683,433 parameters); the
    narrower presets in :data:`PRESETS` keep the same topology with fewer channels.
    """

    backbone: str = "resnet50"
    base_width: int = 64  # stem / layer1 width of the ResNet (64 = standard; layers use 1x, 2x, 4x, 8x)
    psp_sizes: tuple[int, ...] = (1, 2, 3, 6)
    psp_out: int = 1024  # channels after the PSP bottleneck (OS8)
    up_channels: tuple[int, int, int] = (512, 256, 32)  # outputs of up_1 (OS4), up_2 (OS2), up_3 (OS1)
    head_hidden: int = 32  # hidden width of final_28 / final_56 / final_11
    in_channels: int = 6  # RGB + three mask channels
    # smp-encoder backbones only: the encoder's own output stride (16: its last stage dilated); its deepest
    # features are upsampled to OS8 and joined with its OS8 features before the PSP.
    encoder_output_stride: int = 16
    # Residual output: every output's logits get ``residual`` x the mask estimate its pass was given
    # (in [-1, 1]), so an untrained network returns its input. 0 = the original plain head.
    residual: float = 0.0
    # > 0: the OS1 output goes through a trainable colour guided filter of this radius (px) with a learned
    # per-pixel gate (cascadepsp.models.guided.GuidedOutput). 0 = the original output.
    guided_radius: int = 0
    # Inference recipe of the weights, for an image no larger than one L x L window: the local step refines
    # it only when the foreground share of the binarised global result is within this band and both classes
    # are present. The original's (0.1, 0.9) skips a photo whose object covers under 10 % of it; (0.0, 1.0)
    # gives every such photo its second, full-resolution pass. Larger images keep the original band per
    # window (it bounds how many windows run: 6 instead of 12 on the 2K benchmark photo).
    local_fg_band: tuple[float, float] = (0.1, 0.9)
    # Do no harm: > 0 confines the refiner's changes to pixels within edit_band x (H + W) / 2 of the coarse
    # mask's boundary (cascadepsp.inference.reference.confine_to_band); farther pixels keep the coarse label, so a
    # good mask can only move near its own boundary. 0 = unconfined (the original).
    edit_band: float = 0.0
    # > 0: when the binarised result differs from the coarse mask by an IoU below this, the whole refinement
    # runs once more from that result (a weak mask gains from a second look; a good one, which changes little,
    # keeps one pass). 0 = one pass (the original).
    second_pass_iou: float = 0.0
    # How the local step runs a full-resolution window (LOCAL_STEPS): "two_pass" (the original: cascade passes 2
    # and 3, each with its own encoder pass) or "light" (pass 3 only, the global step's OS4 result standing in for
    # pass 2's OS8 and OS4 estimates, and the network's own full-resolution output without the guided output
    # stage: about half a window's time, at a quality cost measured on dev, docs/results.md).
    local_step: str = "two_pass"

    def __post_init__(self) -> None:
        known = sorted([*BACKBONE_BLOCKS, *ENCODER_BACKBONES])
        if self.backbone not in known:
            raise ValueError(f"backbone must be one of {known}, got {self.backbone!r}")
        if self.encoder_output_stride not in (8, 16, 32):
            raise ValueError(f"encoder_output_stride must be 8, 16 or 32, got {self.encoder_output_stride}")
        if self.residual < 0:
            raise ValueError(f"residual must be >= 0, got {self.residual}")
        if self.guided_radius < 0:
            raise ValueError(f"guided_radius must be >= 0, got {self.guided_radius}")
        if len(self.local_fg_band) != 2 or not 0.0 <= self.local_fg_band[0] <= self.local_fg_band[1] <= 1.0:
            raise ValueError(f"local_fg_band must be (low, high) with 0 <= low <= high <= 1, got {self.local_fg_band}")
        if not 0.0 <= self.edit_band <= 1.0:
            raise ValueError(f"edit_band must be in [0, 1] (a fraction of (H + W) / 2; 0 = off), got {self.edit_band}")
        if not 0.0 <= self.second_pass_iou <= 1.0:
            raise ValueError(f"second_pass_iou must be in [0, 1] (0 = one pass), got {self.second_pass_iou}")
        if self.local_step not in LOCAL_STEPS:
            raise ValueError(f"local_step must be one of {', '.join(LOCAL_STEPS)}, got {self.local_step!r}")

    @property
    def is_encoder(self) -> bool:
        """True for a segmentation-models-pytorch encoder backbone, False for the built-in ResNets."""
        return self.backbone in ENCODER_BACKBONES

    @property
    def smp_encoder(self) -> str:
        return ENCODER_BACKBONES[self.backbone][0]

    @property
    def block_type(self) -> str:
        return BACKBONE_BLOCKS[self.backbone][0]

    @property
    def layers(self) -> tuple[int, int, int, int]:
        return BACKBONE_BLOCKS[self.backbone][1]

    @property
    def expansion(self) -> int:
        return 4 if self.block_type == "bottleneck" else 1

    @property
    def feature_channels(self) -> int:
        """Channels of the OS8 features fed to the PSP module (ResNet layer4; encoder: deepest + OS8)."""
        if self.is_encoder:
            ch = ENCODER_BACKBONES[self.backbone][1]
            return ch[3] + ch[2]
        return 8 * self.base_width * self.expansion

    @property
    def skip_channels(self) -> int:
        """Channels of the OS4 skip feature (ResNet layer1)."""
        if self.is_encoder:
            return ENCODER_BACKBONES[self.backbone][1][1]
        return self.base_width * self.expansion

    @property
    def stem_channels(self) -> int:
        """Channels of the OS2 skip feature (ResNet conv1)."""
        if self.is_encoder:
            return ENCODER_BACKBONES[self.backbone][1][0]
        return self.base_width



DEFAULT_PRESET = "lite1_guided"  # the one default architecture: that of the bundled default weights

PRESETS: dict[str, RMConfig] = {
    # The official network, loadable from the released checkpoint.
    "resnet50": RMConfig(),
    # Small networks for training from scratch (about 14.0 M and 24.1 M parameters).
    "resnet18": RMConfig(backbone="resnet18", psp_out=256, up_channels=(128, 64, 32)),
    "resnet34": RMConfig(backbone="resnet34", psp_out=256, up_channels=(128, 64, 32)),
    # Half-width ResNet-18 layout with a narrow decoder (3.5 M parameters), trained from scratch; the
    # bundled default before `lite0` (it degraded real masks, see issue 10).
    "resnet18_slim": RMConfig(backbone="resnet18", base_width=32, psp_out=128, up_channels=(64, 32, 16),
                              head_hidden=16),
    # ImageNet EfficientNet-Lite0 trunk (OS16, upsampled to OS8), narrow decoder, residual output: the
    # network trained on the project's CPU (the bundled default until `lite0_guided`).
    "lite0": RMConfig(backbone="efficientnet_lite0", encoder_output_stride=16, psp_out=128,
                      up_channels=(64, 32, 16), head_hidden=16, residual=4.0, local_fg_band=(0.0, 1.0)),
    # `lite0` with a trainable guided-filter output stage (radius 4 px, learned gate).
    "lite0_guided": RMConfig(backbone="efficientnet_lite0", encoder_output_stride=16, psp_out=128,
                             up_channels=(64, 32, 16), head_hidden=16, residual=4.0, guided_radius=4,
                             local_fg_band=(0.0, 1.0)),
}
# `lite0_guided` on the larger encoders of the same family: same head and decoder, EfficientNet-Lite1 (4.1 M
# encoder parameters, Lite0 3.4 M; the bundled default's since 2026-12-05, grown from a trained Lite0 file by
# :mod:`cascadepsp.weights.deepen`) and Lite2 (4.8 M).
PRESETS.update({f"lite{n}_guided": dataclasses.replace(PRESETS["lite0_guided"], backbone=f"efficientnet_lite{n}")
                for n in (1, 2)})


def get_config(name_or_config: str | RMConfig) -> RMConfig:
    """Resolve a preset name (a key of :data:`PRESETS`) or pass a config through."""
    if isinstance(name_or_config, RMConfig):
        return name_or_config
    if name_or_config not in PRESETS:
        raise ValueError(f"unknown model preset {name_or_config!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name_or_config]
