"""refine_instances and the SAM / detectron2 / list adapters (small random model, plus one bundled-network check)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cascadepsp.evaluation.metrics import mask_iou
from cascadepsp.instances.adapters import refine_mask_list, refine_pred_masks, refine_sam_masks
from cascadepsp.instances.refine import instance_box, refine_instances
from cascadepsp.io.images import read_image, read_mask

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "davis"
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


class Recorder:
    """Wraps a refiner and records the crop sizes it was asked to refine."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def refine_probability(self, image, mask, fast=False, L=900, bgr=False):
        self.calls.append(mask.shape)
        return self.inner.refine_probability(image, mask, fast=fast, L=L, bgr=bgr)


class FixedProbability:
    """A stand-in network whose output is ``value`` on the coarse foreground and 0 elsewhere (for merging rules)."""

    def __init__(self, values):
        self.values, self.n = values, 0

    def refine_probability(self, image, mask, fast=False, L=900, bgr=False):
        value = self.values[self.n]
        self.n += 1
        return np.where(mask, value, 0.0).astype(np.float32)


def scene(h=120, w=160, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 70, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((3, h, w), bool)
    cv2.ellipse(masks[0].view(np.uint8), (50, 60), (25, 18), 0, 0, 360, 1, -1)
    masks[1, 0:30, 110:160] = True  # touches the top and right borders
    # masks[2] stays empty
    for m in masks[:2]:
        image[m] += 150
    return image, masks


def test_each_instance_is_its_own_crop_refined_and_pasted_back(small_refiner):
    image, masks = scene()
    rec = Recorder(small_refiner)
    out = refine_instances(image, masks, rec, L=96, context=0.25)
    assert out.shape == masks.shape and out.dtype == np.uint8
    assert len(rec.calls) == 2  # the empty instance is not refined
    assert not out[2].any()
    for i in range(2):
        rows, cols = instance_box(masks[i], 0.25)
        want = small_refiner.refine_probability(image[rows, cols], masks[i, rows, cols], L=96)
        np.testing.assert_array_equal(out[i, rows, cols], (want * 255).astype(np.uint8))
        outside = np.ones(masks[i].shape, bool)
        outside[rows, cols] = False
        assert not out[i][outside].any()  # nothing beyond the crop
        assert rec.calls[i] == (rows.stop - rows.start, cols.stop - cols.start)
    binary = refine_instances(image, masks, small_refiner, L=96, threshold=0.5)
    assert set(np.unique(binary)) <= {0, 255}
    np.testing.assert_array_equal(binary > 0, out >= 128)


def test_context_box_grows_by_the_share_on_each_side_and_stays_in_the_image():
    m = np.zeros((200, 300), bool)
    m[80:120, 100:160] = True  # 40 x 60
    rows, cols = instance_box(m, 0.25)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (60, 90)
    assert rows.start == 70 and cols.start == 85
    rows, cols = instance_box(m, 0.0)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (80, 120, 100, 160)
    corner = np.zeros((200, 300), bool)
    corner[0:50, 250:300] = True
    rows, cols = instance_box(corner, 0.5)
    assert rows.start == 0 and cols.stop == 300 and rows.stop - rows.start == 100
    with pytest.raises(ValueError, match="context"):
        instance_box(m, -0.1)


def test_resolve_overlaps_gives_each_pixel_to_the_most_probable_instance():
    h, w = 60, 80
    masks = np.zeros((3, h, w), bool)
    masks[0, 10:40, 10:50] = True
    masks[1, 20:50, 30:70] = True  # overlaps masks[0]
    masks[2, 0:10, 60:80] = True
    image = np.full((h, w, 3), 100, np.uint8)
    overlap = masks[0] & masks[1]
    free = refine_instances(image, masks, FixedProbability([0.6, 0.9, 0.3]), threshold=0.5)
    assert (free[0][overlap] == 255).all() and (free[1][overlap] == 255).all()  # left as the instances have them
    out = refine_instances(image, masks, FixedProbability([0.6, 0.9, 0.3]), threshold=0.5, resolve_overlaps=True)
    assert ((out > 0).sum(0) <= 1).all()
    assert (out[1][overlap] == 255).all() and not out[0][overlap].any()
    assert (out[0][masks[0] & ~masks[1]] == 255).all()
    assert not out[2].any()  # 0.3 < threshold: claimed by nobody, background
    soft = refine_instances(image, masks, FixedProbability([0.6, 0.9, 0.3]), resolve_overlaps=True)
    assert (soft[1][overlap] == int(0.9 * 255)).all() and not soft[0][overlap].any()
    assert (soft[2][masks[2]] == int(np.float32(0.3) * 255)).all()  # soft: kept, but below 128 (background)


def test_bad_inputs_name_the_argument(small_refiner):
    image, masks = scene()
    with pytest.raises(ValueError, match=r"masks\[1\]: size 80x60"):
        refine_instances(image, [masks[0], masks[1][:60, :80]], small_refiner)
    with pytest.raises(ValueError, match="masks: expected an N x H x W"):
        refine_instances(image, masks[0], small_refiner)
    with pytest.raises(TypeError, match="masks"):
        refine_instances(image, {"a": masks[0]}, small_refiner)
    with pytest.raises(ValueError, match=r"masks\[0\]: float masks"):
        refine_instances(image, [masks[0] * 3.0], small_refiner)
    with pytest.raises(ValueError, match="threshold"):
        refine_instances(image, masks, small_refiner, threshold=2)
    with pytest.raises(ValueError, match="context"):
        refine_instances(image, masks, small_refiner, context=-1)
    assert refine_instances(image, np.zeros((0, 120, 160), bool), small_refiner).shape == (0, 120, 160)


@pytest.mark.parametrize("name", ["parkour_00040", "scooter-black_00020"])
def test_bundled_network_sharpens_an_instance_of_a_shipped_photo(name):
    """The ground truth coarsened by a blocky 1/16 down- and up-sampling comes back closer to it (measured:
    IoU 0.81 -> 0.96 and 0.89 -> 0.95), next to an empty instance that stays empty."""
    from cascadepsp import Refiner

    image, _ = read_image(EXAMPLES / f"{name}_im.jpg")
    gt = read_mask(EXAMPLES / f"{name}_gt.png").binary()
    h, w = gt.shape
    small = cv2.resize(gt.astype(np.uint8), (w // 16, h // 16), interpolation=cv2.INTER_AREA).astype(np.float32)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    out = refine_instances(image, [coarse, np.zeros_like(coarse)], Refiner(device="cpu"), fast=True, L=480,
                           threshold=0.5)
    before, after = mask_iou(coarse, gt), mask_iou(out[0] > 0, gt)
    assert after > before + 0.03, (before, after)
    assert not out[1].any()


def test_sam_records_keep_their_format_and_other_keys(small_refiner):
    pytest.importorskip("pycocotools", reason="RLE records need pycocotools (the coco extra)")
    from cascadepsp.instances.coco import decode_segmentation, encode_rle, encode_uncompressed_rle

    image, masks = scene()
    h, w = masks.shape[1:]
    records = [
        {"segmentation": masks[0], "area": 1, "bbox": [0, 0, 1, 1], "predicted_iou": 0.9, "point_coords": [[1, 2]],
         "stability_score": 0.8, "crop_box": [0, 0, w, h]},
        {"segmentation": encode_rle(masks[1]), "area": 1, "bbox": [0, 0, 1, 1], "predicted_iou": 0.7},
        {"segmentation": encode_uncompressed_rle(masks[0]), "area": 1, "bbox": [0, 0, 1, 1], "extra": "kept"},
    ]
    out = refine_sam_masks(image, records, small_refiner, L=96)
    want = refine_instances(image, masks[[0, 1, 0]], small_refiner, L=96, threshold=0.5) > 0
    assert isinstance(out[0]["segmentation"], np.ndarray) and out[0]["segmentation"].dtype == bool
    assert isinstance(out[1]["segmentation"]["counts"], str)
    assert isinstance(out[2]["segmentation"]["counts"], list)
    for rec, new, m in zip(records, out, want, strict=True):
        assert list(new) == list(rec)  # same keys, same order
        got = new["segmentation"]
        got = decode_segmentation(got, h, w) if isinstance(got, dict) else got
        np.testing.assert_array_equal(got, m)
        ys, xs = np.nonzero(m)
        assert new["area"] == int(m.sum())
        assert new["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert {k: v for k, v in new.items() if k not in ("segmentation", "area", "bbox")} == \
               {k: v for k, v in rec.items() if k not in ("segmentation", "area", "bbox")}
    assert records[0]["area"] == 1  # the input is not changed
    with pytest.raises(ValueError, match=r"records\[0\]"):
        refine_sam_masks(image, [{"segmentation": masks[0][:10]}], small_refiner)


def test_pred_masks_come_back_as_the_same_type(small_refiner):
    image, masks = scene()
    want = refine_instances(image, masks, small_refiner, L=96, threshold=0.5)
    t = torch.from_numpy(masks)
    out = refine_pred_masks(image, t, small_refiner, L=96)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool and out.shape == t.shape
    np.testing.assert_array_equal(out.numpy(), want > 0)
    soft = refine_pred_masks(image, masks.astype(np.float32), small_refiner, L=96, threshold=None)
    assert soft.dtype == np.float32 and 0.0 <= soft.min() and soft.max() <= 1.0
    np.testing.assert_allclose(soft, refine_instances(image, masks, small_refiner, L=96) / 255.0, atol=1e-6)
    with pytest.raises(TypeError, match="pred_masks"):
        refine_pred_masks(image, list(masks), small_refiner)
    with pytest.raises(ValueError, match="pred_masks"):
        refine_pred_masks(image, t[0], small_refiner)


def test_mask_list(small_refiner):
    image, masks = scene()
    out = refine_mask_list(image, [m.astype(np.uint8) * 255 for m in masks], small_refiner, L=96)
    assert isinstance(out, list) and len(out) == 3
    np.testing.assert_array_equal(np.stack(out), refine_instances(image, masks, small_refiner, L=96))
