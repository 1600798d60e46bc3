"""Tests for the CascadePSP-style coarse-mask synthesis."""

import cv2
import numpy as np
import pytest

from cascadepsp.evaluation.metrics import boundary_accuracy
from cascadepsp.training.perturb import (
    LowResConfig,
    PerturbConfig,
    degrade_polygons,
    lowres_mask,
    morph_perturb,
    perturb_mask,
)


def _ellipse(h=160, w=200, axes=(70, 50)) -> np.ndarray:
    gt = np.zeros((h, w), np.uint8)
    cv2.ellipse(gt, (w // 2, h // 2), axes, 15, 0, 360, 255, -1)
    return gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 127, b > 127
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


def test_output_type_and_values():
    out = perturb_mask(_ellipse(), 0)
    assert out.dtype == np.uint8 and out.shape == (160, 200)
    assert set(np.unique(out)) <= {0, 255}
    assert 0 < np.count_nonzero(out) < out.size


def test_bool_and_uint8_inputs_agree():
    gt = _ellipse()
    assert np.array_equal(perturb_mask(gt, 3), perturb_mask(gt > 0, 3))


def test_deterministic_and_seed_dependent():
    gt = _ellipse()
    a = perturb_mask(gt, 7)
    b = perturb_mask(gt, np.random.default_rng(7))
    assert np.array_equal(a, b)
    c = perturb_mask(gt, 8)
    assert not np.array_equal(a, c)


def test_stops_just_below_target_band():
    """Original rule: stage 2 stops once IoU to its input (the polygon mask) < target, target in [lo, hi)."""
    gt = _ellipse()
    cfg = PerturbConfig(iou_range=(0.85, 0.9))
    below, final = [], []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        target = rng.uniform(*cfg.iou_range)
        poly = degrade_polygons(gt, rng, cfg)
        out = morph_perturb(poly, target, rng, cfg)
        assert np.array_equal(out, perturb_mask(gt, seed, cfg))  # the public path is exactly these stages
        below.append(_iou(out, poly) < target)
        final.append(_iou(out, gt))
    assert np.mean(below) >= 0.9  # only an exhausted 250-round budget may leave it above
    final = np.array(final)
    assert np.all(final < 0.9 + 0.01)  # polygon stage only loses area-overlap, morphology stops below hi
    assert np.median(final) > 0.75 and final.min() > 0.5  # a coarse mask, not a destroyed one


def test_gt_stop_reference_bounds_iou_to_gt():
    gt = _ellipse()
    cfg = PerturbConfig(iou_range=(0.85, 0.9), stop_reference="gt")
    ious = np.array([_iou(perturb_mask(gt, s, cfg), gt) for s in range(20)])
    assert np.all(ious < 0.9)
    assert np.median(ious) > 0.78


def test_polygon_stage_bites_and_smooths():
    gt = _ellipse()
    poly = degrade_polygons(gt, 0)
    iou = _iou(poly, gt)
    assert 0.6 < iou < 1.0  # something was cut, most survives
    assert set(np.unique(poly)) == {0, 255}


def test_no_morphology_rounds_returns_polygon_mask():
    gt = _ellipse()
    cfg = PerturbConfig(max_rounds=0)
    rng = np.random.default_rng(1)
    rng.uniform(*cfg.iou_range)  # perturb_mask draws the target first
    assert np.array_equal(perturb_mask(gt, 1, cfg), degrade_polygons(gt, rng, cfg))


@pytest.mark.parametrize("value", [0, 255])
def test_empty_and_full_masks(value):
    gt = np.full((40, 50), value, np.uint8)
    out = perturb_mask(gt, 0)
    assert out.shape == gt.shape and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 255}


@pytest.mark.parametrize("shape", [(1, 1), (2, 9), (3, 3), (5, 4)])
def test_tiny_masks(shape):
    gt = np.zeros(shape, np.uint8)
    gt[0, 0] = 255
    out = perturb_mask(gt, 0)
    assert out.shape == shape


def test_small_object_without_long_contours_keeps_gt_before_morphology():
    gt = np.zeros((30, 30), np.uint8)
    gt[10:12, 10:12] = 255  # contour of 4 vertices: < 10, so no polygon survives
    assert np.array_equal(degrade_polygons(gt, 0), gt)


def test_bad_inputs():
    with pytest.raises(ValueError, match="gt"):
        perturb_mask(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="rng"):
        perturb_mask(_ellipse(), rng="seed")
    with pytest.raises(ValueError, match="iou_range"):
        PerturbConfig(iou_range=(0.9, 0.8))
    with pytest.raises(ValueError, match="stop_reference"):
        PerturbConfig(stop_reference="other")


def test_lowres_mask_is_a_smooth_near_miss():
    gt = _ellipse(320, 400, (140, 100))
    out = lowres_mask(gt, 5)
    assert out.dtype == np.uint8 and out.shape == gt.shape and set(np.unique(out)) <= {0, 255}
    assert np.array_equal(out, lowres_mask(gt > 0, np.random.default_rng(5)))
    assert not np.array_equal(out, lowres_mask(gt, 6))
    # A low-resolution segmenter gets the shape and moves the boundary a few px: high IoU, imperfect boundary.
    assert 0.9 < _iou(out, gt) < 1.0
    assert boundary_accuracy(out > 127, gt > 127) < 0.97
    # ... and keeps no jagged detail: its boundary is no longer than the GT's by more than a little.
    perimeter = [sum(cv2.arcLength(c, True) for c in cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)[0])
                 for m in (out, gt)]
    assert perimeter[0] < 1.15 * perimeter[1]


def test_lowres_mask_loses_thin_parts():
    gt = _ellipse(320, 400, (140, 100))
    gt[:, 20:22] = 255  # a 2-px pole
    cfg = LowResConfig(factor_range=(8.0, 8.0), shift=0.0, noise=0.0, threshold_range=(0.5, 0.5))
    out = lowres_mask(gt, 0, cfg)
    assert np.count_nonzero(out[:, 15:27]) < 0.2 * np.count_nonzero(gt[:, 15:27])
    assert _iou(out, gt) > 0.95


def test_lowres_mask_edge_cases_and_bad_config():
    for value in (0, 255):
        full = np.full((64, 80), value, np.uint8)
        assert np.array_equal(lowres_mask(full, 1), full)
    tiny = np.zeros((3, 3), np.uint8)
    tiny[1, 1] = 255
    assert np.array_equal(lowres_mask(tiny, 0), tiny)
    with pytest.raises(ValueError, match="factor_range"):
        LowResConfig(factor_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="threshold_range"):
        LowResConfig(threshold_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="shift"):
        LowResConfig(shift=-1.0)
