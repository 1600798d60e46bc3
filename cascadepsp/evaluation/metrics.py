"""Segmentation metrics as used to judge CascadePSP: IoU (per image and dataset-wide) and boundary accuracy.

Conventions follow the original evaluation (``eval_post.py`` / ``compute_boundary_acc.py``):

* Masks are binarised at ``> 128`` (0-255 integers). Bool masks are used as they are; integer masks whose
  maximum is 1 are read as 0/1 masks; float masks must lie in [0, 1] and are binarised at ``> 0.5``.
* Dataset IoU is total intersection / total union over all images, not a mean of per-image IoUs.
* Boundary accuracy (BA) of one image: with ``R = (W + H) / 300`` and radii
  ``r_i = 1 + int((R - 1) / 5 * i)``, i = 0..4, the boundary region is the morphological gradient
  (dilation minus erosion) of the GT with an elliptical (2r+1)x(2r+1) kernel; BA is the mean over the 5 radii
  of the share of region pixels where prediction equals GT. mBA is the mean BA over images.
  The original uses Python ``int()`` (truncation toward zero), not floor: for small images (R < 1) the
  offset ``(R - 1) / 5 * i`` lies in (-1, 0], truncates to 0, and every radius is 1. We do the same.
* A GT with no boundary (all background or all foreground) has an empty region; the original then divides
  0 by 0. Here its BA is ``nan`` and :class:`SegMetrics` leaves such images out of mBA (and counts them).
* Per-image IoU of two empty masks is 1.0 (the prediction is exactly right).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

__all__ = ["SegMetrics", "binarize", "boundary_accuracy", "boundary_radii", "boundary_region",
           "intersection_union", "mask_iou"]


def binarize(mask: Any, name: str = "mask") -> np.ndarray:
    """HxW mask (bool, 0/1 or 0-255 integers, float in [0, 1]) -> HxW bool, using the original's ``> 128``."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty HxW mask, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr > 0 if int(arr.max()) <= 1 else arr > 128
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if np.isnan(arr).any() or lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: float masks must lie in [0, 1] without NaN, got range [{lo:.3g}, {hi:.3g}]")
        return arr > 0.5
    raise ValueError(f"{name}: unsupported dtype {arr.dtype}; expected bool, integer 0-255 or float in [0, 1]")


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = binarize(pred, "pred"), binarize(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred: shape {p.shape} does not match gt shape {g.shape}")
    return p, g


def intersection_union(pred: Any, gt: Any) -> tuple[int, int]:
    """Foreground pixel counts of pred AND gt and of pred OR gt."""
    p, g = _pair(pred, gt)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def mask_iou(a: Any, b: Any) -> float:
    """IoU of two masks; 1.0 when both are empty."""
    inter, union = intersection_union(a, b)
    return 1.0 if union == 0 else inter / union


def boundary_radii(height: int, width: int, num_steps: int = 5) -> list[int]:
    """The original's radii ``1 + int((R - 1) / num_steps * i)`` with ``R = (W + H) / 300``."""
    max_radius = (width + height) / 300
    return [1 + int((max_radius - 1) / num_steps * i) for i in range(num_steps)]


def boundary_region(gt: Any, radius: int) -> np.ndarray:
    """HxW bool band around the GT boundary: dilation minus erosion with a (2r+1)^2 elliptical kernel."""
    g = binarize(gt, "gt").astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx(g, cv2.MORPH_GRADIENT, kernel) > 0


def boundary_accuracy(pred: Any, gt: Any, num_steps: int = 5) -> float:
    """Mean over the radii of the share of boundary-region pixels where pred == gt; ``nan`` if GT has no boundary."""
    p, g = _pair(pred, gt)
    accs = []
    for r in boundary_radii(*g.shape, num_steps=num_steps):
        region = boundary_region(g, r)
        n = int(np.count_nonzero(region))
        if n == 0:
            return math.nan  # a region is empty only when the GT is constant, and then it is empty for every r
        accs.append(np.count_nonzero(p[region] == g[region]) / n)
    return float(np.mean(accs))


class SegMetrics:
    """Accumulates IoU and boundary accuracy over a dataset; ``summary()`` gives iou, miou_per_image, mba."""

    def __init__(self) -> None:
        self.total_inter = 0
        self.total_union = 0
        self.ious: list[float] = []
        self.bas: list[float] = []

    def update(self, pred: Any, gt: Any) -> dict[str, float]:
        """Add one image; returns its own ``{"iou", "ba", "intersection", "union"}``."""
        inter, union = intersection_union(pred, gt)
        ba = boundary_accuracy(pred, gt)
        iou = 1.0 if union == 0 else inter / union
        self.total_inter += inter
        self.total_union += union
        self.ious.append(iou)
        self.bas.append(ba)
        return {"iou": iou, "ba": ba, "intersection": inter, "union": union}

    def __len__(self) -> int:
        return len(self.ious)

    def state(self) -> dict[str, Any]:
        """The accumulated sums and per-image lists (JSON-able; NaN boundary scores stay NaN)."""
        return {"inter": self.total_inter, "union": self.total_union, "ious": self.ious, "bas": self.bas}

    def merge(self, state: dict[str, Any]) -> None:
        """Add another accumulator's :meth:`state`, as if its images had been added here in order."""
        self.total_inter += state["inter"]
        self.total_union += state["union"]
        self.ious += state["ious"]
        self.bas += state["bas"]

    def summary(self) -> dict[str, float]:
        """Dataset IoU (total I / total U), mean per-image IoU, mBA over images with a GT boundary, counts."""
        bas = [b for b in self.bas if not math.isnan(b)]
        return {
            "iou": self.total_inter / self.total_union if self.total_union else math.nan,
            "miou_per_image": float(np.mean(self.ious)) if self.ious else math.nan,
            "mba": float(np.mean(bas)) if bas else math.nan,
            "n_images": len(self.ious),
            "n_no_boundary": len(self.bas) - len(bas),
        }


# ------------------------------------------------------------------ multi-class (the PSPNet segmenter)

def confusion_matrix(pred: np.ndarray, target: np.ndarray, classes: int, ignore_index: int = 255) -> np.ndarray:
    """``classes x classes`` counts (rows: target, columns: prediction), ignoring target ``ignore_index``."""
    valid = target != ignore_index
    t = target[valid].astype(np.int64)
    p = np.clip(pred[valid].astype(np.int64), 0, classes - 1)
    if t.size and t.max() >= classes:
        raise ValueError(f"target: label {int(t.max())} >= classes={classes}")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def iou_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """Per-class IoU, mIoU over classes that occur (in target or prediction), and pixel accuracy."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)) if present.any() else float("nan"),
            "iou": [None if np.isnan(v) else float(v) for v in iou],
            "pixel_acc": float(tp.sum() / max(conf.sum(), 1))}
