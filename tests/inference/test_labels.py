"""Label-map refinement: per-object refinement, highest-confidence merge, object crops."""

from __future__ import annotations

import numpy as np
import pytest

import cascadepsp
from cascadepsp.inference.labels import object_crop, refine_label_map


class ScriptedRefiner:
    """Returns a fixed probability map per object (recognised by the mask it is given) and records calls."""

    def __init__(self, maps: dict[int, np.ndarray], labels: np.ndarray) -> None:
        self.maps, self.labels, self.calls = maps, labels, []

    def refine_probability(self, image, mask, fast=False, L=900, bgr=False):
        assert image.shape[:2] == mask.shape
        for obj, prob in self.maps.items():
            # identify the object by where its coarse mask lies inside the full label map
            full = self.labels == obj
            for y in range(full.shape[0] - mask.shape[0] + 1):
                for x in range(full.shape[1] - mask.shape[1] + 1):
                    window = full[y:y + mask.shape[0], x:x + mask.shape[1]]
                    if window.sum() == full.sum() and np.array_equal(window, mask):
                        self.calls.append((obj, (y, x), mask.shape))
                        return prob[y:y + mask.shape[0], x:x + mask.shape[1]]
        raise AssertionError("unknown object mask")


def test_merge_takes_highest_confidence_and_drops_below_half():
    labels = np.zeros((10, 12), np.int32)
    labels[1:6, 1:6] = 3
    labels[4:9, 4:10] = 5
    p3 = np.zeros(labels.shape, np.float32)
    p5 = np.zeros(labels.shape, np.float32)
    p3[0:7, 0:7] = 0.7
    p5[3:10, 3:11] = 0.9
    p5[9, 3:11] = 0.4  # too unsure: background unless another object claims it
    p3[0, 0] = 0.5  # exactly 0.5 counts
    ref = ScriptedRefiner({3: p3, 5: p5}, labels)
    out = refine_label_map(ref, np.zeros((10, 12, 3), np.uint8), labels, crop=False)
    expected = np.zeros_like(labels)
    expected[p3 >= 0.5] = 3
    expected[(p5 > p3) & (p5 >= 0.5)] = 5
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == labels.dtype and out[9, 5] == 0 and out[0, 0] == 3 and out[4, 4] == 5
    assert sorted(c[0] for c in ref.calls) == [3, 5]


def test_ties_go_to_the_lower_id():
    labels = np.zeros((6, 6), np.uint8)
    labels[:, :3] = 1
    labels[:, 3:] = 2
    same = np.full(labels.shape, 0.8, np.float32)
    out = refine_label_map(ScriptedRefiner({1: same, 2: same}, labels), np.zeros((6, 6, 3), np.uint8), labels,
                           crop=False)
    assert (out == 1).all()


def test_object_crop_enlarges_box_by_a_quarter_per_side_and_clamps():
    m = np.zeros((200, 300), bool)
    m[100:140, 100:180] = True  # 40 x 80 box
    rows, cols = object_crop(m)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (60, 120)
    assert (rows.start, cols.start) == (90, 80)
    m = np.zeros((50, 50), bool)
    m[0:2, 48:50] = True  # tiny, in a corner: min side 32, shifted inside the image
    rows, cols = object_crop(m)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 32, 18, 50)


def test_crop_refines_inside_the_box_only():
    labels = np.zeros((64, 96), np.int32)
    labels[20:30, 40:60] = 4
    prob = np.full(labels.shape, 0.9, np.float32)  # the refiner claims everything it sees
    ref = ScriptedRefiner({4: prob}, labels)
    out = refine_label_map(ref, np.zeros((64, 96, 3), np.uint8), labels, crop=True)
    rows, cols = object_crop(labels == 4)
    inside = np.zeros(labels.shape, bool)
    inside[rows, cols] = True
    assert (out[inside] == 4).all() and (out[~inside] == 0).all()
    assert ref.calls[0][2] == (rows.stop - rows.start, cols.stop - cols.start)


def test_with_the_bundled_network_ids_move_onto_their_objects_and_background_stays_zero():
    """Two bright boxes (ids 2 and 9) whose coarse label map is shifted by 2-4 px: with the bundled refiner each
    id comes closer to its own box (measured IoU 0.66 -> 0.78 and 0.72 -> 0.84 with object crops) and pixels
    away from both stay background."""
    from cascadepsp.evaluation.metrics import mask_iou
    from cascadepsp.inference.reference import distance_to_boundary

    refiner = cascadepsp.Refiner(device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (64, 80, 3), dtype=np.uint8)
    truth = np.zeros((64, 80), np.uint8)
    truth[8:30, 8:40] = 2
    truth[35:60, 30:75] = 9
    image[truth > 0] += 150
    labels = np.zeros_like(truth)
    labels[10:32, 12:44] = 2
    labels[33:58, 26:71] = 9
    far = distance_to_boundary((truth > 0) | (labels > 0)) > 4
    far &= (truth == 0) & (labels == 0)
    for crop in (True, False):
        out = refine_label_map(refiner, image, labels, fast=True, L=96, crop=crop)
        assert out.shape == labels.shape and out.dtype == np.uint8
        assert set(np.unique(out)) == {0, 2, 9}
        for i in (2, 9):
            assert mask_iou(out == i, truth == i) > mask_iou(labels == i, truth == i) + 0.05, (crop, i)
        assert far.sum() > 1000 and (out[far] == 0).all()


def test_bad_inputs_are_rejected():
    ref = ScriptedRefiner({}, np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="labels: expected an HxW integer"):
        refine_label_map(ref, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="does not match image size"):
        refine_label_map(ref, np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4), np.int32))
    empty = refine_label_map(ref, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int32))
    assert (empty == 0).all() and ref.calls == []
