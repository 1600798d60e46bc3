"""Hand-computed checks of IoU and boundary accuracy (the original's mBA definition)."""

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from cascadepsp.evaluation.metrics import (
    SegMetrics,
    binarize,
    boundary_accuracy,
    boundary_radii,
    boundary_region,
    intersection_union,
    mask_iou,
)


def _square(shift: int = 0, size: int = 10) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[3:7, 3 + shift:7 + shift] = 255
    return m


def test_radii_match_original_examples():
    assert boundary_radii(2000, 3000) == [1, 4, 7, 10, 13]  # R = 16.7, the reference's example
    assert boundary_radii(600, 600) == [1, 1, 2, 2, 3]  # R = 4: offsets 0, .6, 1.2, 1.8, 2.4 truncated
    # R < 1: (R - 1) / 5 * i is in (-1, 0]; int() truncates to 0 (floor would give radius 0 and an empty band)
    assert boundary_radii(10, 10) == [1, 1, 1, 1, 1]


def test_boundary_region_of_square_with_cross_kernel():
    # radius 1 -> 3x3 elliptical kernel = a cross; dilation adds 16 edge neighbours, erosion keeps the 2x2 core
    region = boundary_region(_square(), 1)
    assert region.sum() == 16 + 16 - 4
    assert not region[4:6, 4:6].any() and region[3, 3] and region[2, 4] and not region[2, 2]


def test_identical_prediction_is_perfect():
    gt = _square()
    assert mask_iou(gt, gt) == 1.0
    assert boundary_accuracy(gt, gt) == 1.0


def test_shifted_square_hand_computed():
    gt, pred = _square(), _square(shift=1)
    assert intersection_union(pred, gt) == (12, 20)
    assert mask_iou(pred, gt) == pytest.approx(0.6)
    # 28 band pixels; wrong: GT column 3 (4 px, inner band) and predicted column 7 (4 px, outer band)
    assert boundary_accuracy(pred, gt) == pytest.approx(20 / 28)


def test_same_iou_different_boundary_accuracy():
    gt = _square()
    near = gt.copy()
    near[3:7, 7] = 255  # 4 false positives touching the boundary
    far = gt.copy()
    far[[0, 0, 9, 9], [0, 9, 0, 9]] = 255  # 4 false positives in the corners, outside the band
    assert mask_iou(near, gt) == mask_iou(far, gt) == pytest.approx(16 / 20)
    assert boundary_accuracy(near, gt) == pytest.approx(24 / 28)
    assert boundary_accuracy(far, gt) == 1.0


def test_empty_region_gives_nan_and_is_excluded_from_mba():
    empty, full = np.zeros((10, 10), np.uint8), np.full((10, 10), 255, np.uint8)
    assert math.isnan(boundary_accuracy(_square(), empty))
    assert math.isnan(boundary_accuracy(empty, full))
    assert mask_iou(empty, empty) == 1.0
    m = SegMetrics()
    m.update(_square(shift=1), _square())
    rec = m.update(_square(), empty)
    assert math.isnan(rec["ba"]) and rec["iou"] == 0.0
    s = m.summary()
    assert s["mba"] == pytest.approx(20 / 28)
    assert s["n_images"] == 2 and s["n_no_boundary"] == 1


def test_dataset_iou_is_total_intersection_over_total_union():
    m = SegMetrics()
    m.update(_square(shift=1), _square())  # I=12, U=20
    small = np.zeros((10, 10), bool)
    small[0, 0:4] = True
    gt_small = np.zeros((10, 10), bool)
    gt_small[0, 0] = True
    m.update(small, gt_small)  # I=1, U=4
    s = m.summary()
    assert s["iou"] == pytest.approx(13 / 24)
    assert s["miou_per_image"] == pytest.approx((0.6 + 0.25) / 2)
    assert len(m) == 2


def test_boundary_accuracy_matches_independent_morphology_for_larger_radii():
    rng = np.random.default_rng(0)
    h, w = 700, 800  # R = 5 -> radii 1, 1, 2, 3, 4
    gt = np.zeros((h, w), np.uint8)
    cv2.ellipse(gt, (400, 350), (250, 180), 20, 0, 360, 255, -1)
    pred = gt.copy()
    cv2.circle(pred, (150, 350), 30, 255, -1)
    noise = rng.random((h, w)) < 0.05
    pred[noise] = 255 - pred[noise]
    expected = []
    g = gt > 128
    for r in boundary_radii(h, w):
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)).astype(bool)
        band = ndimage.binary_dilation(g, k) & ~ndimage.binary_erosion(g, k, border_value=1)
        expected.append(np.mean((pred > 128)[band] == g[band]))
    assert boundary_accuracy(pred, gt) == pytest.approx(np.mean(expected), abs=1e-12)


def test_binarize_conventions():
    assert binarize(np.array([[128, 129]], np.uint8)).tolist() == [[False, True]]  # > 128, as eval_post.py
    assert binarize(np.array([[0, 1]], np.uint8)).tolist() == [[False, True]]  # 0/1 masks
    assert binarize(np.array([[0.5, 0.51]], np.float32)).tolist() == [[False, True]]
    with pytest.raises(ValueError, match="pred"):
        mask_iou(np.zeros((4, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="mask"):
        binarize(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="float"):
        binarize(np.full((2, 2), 2.0))
