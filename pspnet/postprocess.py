"""Mask clean-up after thresholding: drop foreground regions much smaller than the main one."""

from __future__ import annotations

import cv2
import numpy as np


def check_component_fraction(fraction: object) -> float:
    """A region-size fraction in [0, 1], else a one-line ValueError."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"min_component_fraction: expected a number in [0, 1], got {fraction!r}")
    return float(fraction)


def keep_main_regions(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Keep the 8-connected foreground regions of an HxW mask whose area is at least ``min_fraction`` of the
    largest region's (0 keeps everything, 1 only the largest and its equals); same dtype and shape back.

    A foreground segmenter's stray blobs (a bystander, a patch of wall) are far smaller than the object it was
    asked for, so this removes them without touching the object's own pixels.
    """
    min_fraction = check_component_fraction(min_fraction)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an HxW array, got shape {mask.shape}")
    if min_fraction == 0.0:
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    if count <= 2:  # background plus at most one region
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, dtype=bool)
    keep[1:] = areas >= min_fraction * areas.max()
    return np.where(keep[labels], mask, np.zeros_like(mask))
