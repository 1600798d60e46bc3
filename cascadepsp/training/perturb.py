"""Coarse-mask synthesis for training: degrade a ground-truth mask the way CascadePSP does.

Two stages, as in the original (``modify_boundary`` then ``perturb_seg``):

1. Polygon degradation: every contour of the binarised GT with enough vertices loses a consecutive
   run of vertices (a "bite" where the chord across the run is short) and is then sparsely
   resampled; the surviving polygons are filled.
2. Random morphology: rounds of dilate/erode on random sub-rectangles (sometimes seeded with a
   stray on/off pixel, which grows into blobs or holes) until the IoU drops below a target drawn
   from ``iou_range``.

Note on the stopping rule: the original measures the IoU of stage 2 against its own input, i.e.
the *polygon-degraded* mask, not the true GT, so the final IoU to the GT is usually a bit lower
than the target. ``PerturbConfig.stop_reference="polygon"`` (default) keeps that behaviour;
``"gt"`` measures against the true GT instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..configs import JsonConfig

__all__ = ["LowResConfig", "PerturbConfig", "degrade_polygons", "lowres_mask", "morph_perturb", "perturb_mask"]


@dataclass(frozen=True)
class PerturbConfig(JsonConfig):
    """All knobs of :func:`perturb_mask`; the defaults reproduce the original training recipe."""

    iou_range: tuple[float, float] = (0.8, 1.0)  # target IoU ~ U[lo, hi)
    min_vertices: int = 10  # contours with fewer vertices are dropped
    cut_fraction: float = 0.1  # consecutive run of vertices removed per contour
    cut_candidates_fraction: float = 0.1  # start chosen among this share of shortest-chord positions
    keep_fraction: float = 0.1  # share of the remaining vertices kept (random subset, order preserved)
    max_rounds: int = 250
    rects_per_round: int = 4
    kernel_size_range: tuple[int, int] = (3, 10)  # random size in [lo, hi)
    seed_pixel_prob: float = 0.25  # chance to set the rectangle's centre pixel to 0 or 255
    dilate_prob: float = 0.5  # otherwise erode
    stop_reference: str = "polygon"  # "polygon" (original) or "gt"

    def __post_init__(self) -> None:
        lo, hi = self.iou_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"iou_range: expected 0 <= lo <= hi <= 1, got {self.iou_range!r}")
        for name in ("cut_fraction", "cut_candidates_fraction", "keep_fraction", "seed_pixel_prob",
                     "dilate_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {v!r}")
        klo, khi = self.kernel_size_range
        if not 1 <= klo < khi:
            raise ValueError(f"kernel_size_range: expected 1 <= lo < hi, got {self.kernel_size_range!r}")
        if self.max_rounds < 0 or self.rects_per_round < 1 or self.min_vertices < 1:
            raise ValueError("max_rounds must be >= 0, rects_per_round >= 1 and min_vertices >= 1")
        if self.stop_reference not in ("polygon", "gt"):
            raise ValueError(f"stop_reference: expected 'polygon' or 'gt', got {self.stop_reference!r}")


@dataclass(frozen=True)
class LowResConfig(JsonConfig):
    """Knobs of :func:`lowres_mask`: how a segmenter that predicts at low resolution errs (e.g. U2-Netp at 320 px)."""

    factor_range: tuple[float, float] = (1.5, 8.0)  # the segmenter sees the crop downscaled by this (log-uniform)
    shift: float = 2.5  # largest smooth displacement of the boundary before downscaling, px
    noise: float = 0.25  # amplitude of smooth noise on the low-resolution probabilities
    threshold_range: tuple[float, float] = (0.35, 0.65)  # the upsampled probabilities are cut at U[lo, hi)

    def __post_init__(self) -> None:
        lo, hi = self.factor_range
        if not 1.0 <= lo <= hi:
            raise ValueError(f"factor_range: expected 1 <= lo <= hi, got {self.factor_range!r}")
        tlo, thi = self.threshold_range
        if not 0.0 < tlo <= thi < 1.0:
            raise ValueError(f"threshold_range: expected 0 < lo <= hi < 1, got {self.threshold_range!r}")
        if self.shift < 0 or self.noise < 0:
            raise ValueError(f"shift and noise must be >= 0, got {self.shift!r}, {self.noise!r}")


def _as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _binarise(gt: np.ndarray) -> np.ndarray:
    """HxW bool / 0-255 integer / [0, 1] float mask -> HxW uint8 0/255 (integers: > 127, floats: > 0.5)."""
    if not isinstance(gt, np.ndarray):
        raise ValueError(f"gt: expected a numpy array, got {type(gt).__name__}")
    if gt.ndim == 3 and gt.shape[2] == 1:
        gt = gt[:, :, 0]
    if gt.ndim != 2 or gt.size == 0:
        raise ValueError(f"gt: expected a non-empty HxW mask, got shape {gt.shape}")
    if gt.dtype == np.bool_:
        fg = gt
    elif np.issubdtype(gt.dtype, np.integer):
        fg = gt > 127
    elif np.issubdtype(gt.dtype, np.floating):
        fg = gt > 0.5
    else:
        raise ValueError(f"gt: unsupported dtype {gt.dtype}; expected bool, uint8 0/255 or float in [0, 1]")
    return np.where(fg, 255, 0).astype(np.uint8)


def _iou_u8(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two 0/255 masks with the original's +1e-6 smoothing (empty vs empty is 1)."""
    fa, fb = a > 0, b > 0
    inter = np.count_nonzero(fa & fb)
    union = np.count_nonzero(fa | fb)
    return (inter + 1e-6) / (union + 1e-6)


def degrade_polygons(gt: np.ndarray, rng: np.random.Generator | int | None = None,
                     config: PerturbConfig = PerturbConfig()) -> np.ndarray:
    """Stage 1: bite a run of vertices out of each contour, keep a sparse subset, fill; GT if nothing survives."""
    rng = _as_generator(rng)
    src = _binarise(gt)
    contours, _ = cv2.findContours(src, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        n = contour.shape[0]
        if n < config.min_vertices:
            continue
        pts = contour[:, 0, :].astype(np.int64)
        k = int(n * config.cut_fraction)
        starts = n - k  # the run never wraps around the contour's start, as in the original
        if k > 0 and starts > 0:
            chord = np.sum((pts[:starts] - pts[k:k + starts]) ** 2, axis=1)
            order = np.argsort(chord, kind="stable")  # ties keep index order
            n_cand = max(1, math.ceil(config.cut_candidates_fraction * starts))
            start = int(order[rng.integers(n_cand)])
            pts = np.concatenate([pts[:start], pts[start + k:]], axis=0)
        m = pts.shape[0]
        n_keep = int(m * config.keep_fraction)
        if n_keep == 0:
            continue
        idx = np.sort(rng.choice(m, size=n_keep, replace=False))
        polygons.append(pts[idx].reshape(-1, 1, 2).astype(np.int32))
    if not polygons:
        return src.copy()
    out = np.zeros_like(src)
    cv2.drawContours(out, polygons, -1, 255, thickness=-1)
    return out


def _random_kernel(size: int, rng: np.random.Generator) -> np.ndarray:
    # cv2 sizes are (width, height); the half-size ellipses are flat and tall ones respectively.
    shape = int(rng.integers(4))
    if shape == 0:
        return cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    if shape == 1:
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    if shape == 2:
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, max(1, size // 2)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(1, size // 2), size))


def morph_perturb(seg: np.ndarray, iou_target: float, rng: np.random.Generator | int | None = None,
                  config: PerturbConfig = PerturbConfig(), reference: np.ndarray | None = None) -> np.ndarray:
    """Stage 2: random dilate/erode rounds on sub-rectangles until IoU(result, reference) < ``iou_target``.

    ``reference`` defaults to the input ``seg`` (the original's rule). Returns a new 0/255 uint8 mask.
    """
    rng = _as_generator(rng)
    out = _binarise(seg)
    ref = out.copy() if reference is None else _binarise(reference)
    if ref.shape != out.shape:
        raise ValueError(f"reference: shape {ref.shape} does not match seg shape {out.shape}")
    h, w = out.shape
    if h <= 2 or w <= 2:  # too small to perturb meaningfully (the original returns it unchanged too)
        return out
    klo, khi = config.kernel_size_range
    for _ in range(config.max_rounds):
        for _ in range(config.rects_per_round):
            x0, y0 = int(rng.integers(w)), int(rng.integers(h))
            x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
            if rng.random() < config.seed_pixel_prob:
                out[(y0 + y1) // 2, (x0 + x1) // 2] = 255 * int(rng.integers(2))
            op = cv2.dilate if rng.random() < config.dilate_prob else cv2.erode
            kernel = _random_kernel(int(rng.integers(klo, khi)), rng)
            out[y0:y1, x0:x1] = op(np.ascontiguousarray(out[y0:y1, x0:x1]), kernel, iterations=1)
        if _iou_u8(out, ref) < iou_target:
            break
    return out


def perturb_mask(gt: np.ndarray, rng: np.random.Generator | int | None = None,
                 config: PerturbConfig = PerturbConfig()) -> np.ndarray:
    """Synthesise a realistic coarse mask from ``gt`` (HxW bool or 0/255 uint8); returns HxW uint8 0/255.

    Deterministic for a given seed / Generator state. The target IoU is drawn from ``config.iou_range``.
    """
    rng = _as_generator(rng)
    src = _binarise(gt)
    lo, hi = config.iou_range
    target = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    poly = degrade_polygons(src, rng, config)
    reference = src if config.stop_reference == "gt" else None
    return morph_perturb(poly, target, rng, config, reference=reference)


def _smooth_field(h: int, w: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """HxW float32 noise, Gaussian-smoothed with ``sigma`` px and scaled to a maximum magnitude of 1."""
    field = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
    peak = float(np.abs(field).max())
    return field / peak if peak > 0 else field


def lowres_mask(gt: np.ndarray, rng: np.random.Generator | int | None = None,
                config: LowResConfig = LowResConfig()) -> np.ndarray:
    """A coarse mask as a low-resolution segmenter makes it: smooth boundaries a few px off, thin parts lost.

    The GT is displaced by a smooth random field, area-downscaled by a random factor, given smooth noise,
    upsampled bilinearly and cut at a random threshold (the original's polygon/morphology perturbation makes
    jagged, large errors instead; real masks upsampled from e.g. 320 px look like this). Returns HxW uint8 0/255.
    """
    rng = _as_generator(rng)
    src = _binarise(gt).astype(np.float32) / 255.0
    h, w = src.shape
    if h < 4 or w < 4:
        return _binarise(gt)
    if config.shift > 0:
        sigma = max(h, w) / 8.0
        dx = _smooth_field(h, w, sigma, rng) * float(rng.uniform(0, config.shift))
        dy = _smooth_field(h, w, sigma, rng) * float(rng.uniform(0, config.shift))
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        src = cv2.remap(src, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lo, hi = config.factor_range
    factor = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    sh, sw = max(2, round(h / factor)), max(2, round(w / factor))
    small = cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA)
    if config.noise > 0:
        small = small + config.noise * _smooth_field(sh, sw, max(1.0, max(sh, sw) / 10.0), rng)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    threshold = float(rng.uniform(*config.threshold_range))
    return np.where(up > threshold, 255, 0).astype(np.uint8)
