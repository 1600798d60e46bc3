"""Architecture configuration of the PSPNet segmenter, stored in the safetensors header of its weights."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cascadepsp.configs import JsonConfig

from .postprocess import check_component_fraction


@dataclass(frozen=True)
class PSPNetConfig(JsonConfig):
    """Every choice that shapes a :class:`pspnet.PSPNet`, plus the geometry it was trained at.

    ``crop_size`` / ``base_size`` are not architecture: they record the training crop and the long side
    images were normalised to, so :func:`pspnet.predict` can reuse them by default. ``threshold`` is the
    foreground probability at which a 1- or 2-class model's mask is cut (chosen on held-back data),
    ``min_component_fraction`` drops the mask's regions smaller than that fraction of its largest one (0: off),
    and ``scales`` are the multi-scale test's long sides as multiples of ``base_size`` (the paper's testing).
    """

    encoder_name: str = "resnet50"
    classes: int = 2
    in_channels: int = 3
    ppm_bins: tuple[int, ...] = (1, 2, 3, 6)
    ppm_reduction: int = 4  # each pyramid branch has C / ppm_reduction channels
    head_channels: int = 512
    dropout: float = 0.1
    aux: bool = True  # build the stage-3 auxiliary head (its output is used in training only)
    aux_channels: int = 256
    aux_weight: float = 0.4
    crop_size: int = 320
    base_size: int = 512
    threshold: float = 0.5
    min_component_fraction: float = 0.0
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        _check_int("classes", self.classes, 1)
        _check_int("in_channels", self.in_channels, 1)
        _check_int("ppm_reduction", self.ppm_reduction, 1)
        _check_int("head_channels", self.head_channels, 1)
        _check_int("aux_channels", self.aux_channels, 1)
        _check_int("crop_size", self.crop_size, 8)
        _check_int("base_size", self.base_size, 8)
        if not isinstance(self.encoder_name, str) or not self.encoder_name:
            raise ValueError(f"encoder_name: expected a segmentation_models_pytorch encoder name, "
                             f"got {self.encoder_name!r}")
        bins = tuple(self.ppm_bins)
        if not bins or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bins):
            raise ValueError(f"ppm_bins: expected a non-empty tuple of positive integers, got {self.ppm_bins!r}")
        object.__setattr__(self, "ppm_bins", bins)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        check_threshold(self.threshold)
        check_component_fraction(self.min_component_fraction)
        object.__setattr__(self, "scales", tuple(check_scales(self.scales)))
        if float(self.aux_weight) < 0.0:
            raise ValueError(f"aux_weight: expected a value >= 0, got {self.aux_weight!r}")




    def replace(self, **changes: Any) -> PSPNetConfig:
        return dataclasses.replace(self, **changes)


def check_threshold(threshold: Any) -> float:
    """A foreground probability threshold strictly inside (0, 1), else a one-line ValueError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: expected a foreground probability in (0, 1), got {threshold!r}")
    return float(threshold)


def check_scales(scales: Any) -> list[float]:
    """Multi-scale factors as a non-empty list of finite positive floats (one number is one scale), else a
    one-line ValueError."""
    items = [scales] if isinstance(scales, (int, float)) and not isinstance(scales, bool) else scales
    try:
        values = [] if isinstance(items, (str, bytes)) else [float(s) for s in items]
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"scales: expected one or more positive numbers, got {scales!r}")
    return values


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
