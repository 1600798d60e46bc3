"""cascadepsp.io (layouts, splits, images): layout finders, split rules, and one reading of masks for every consumer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cascadepsp.evaluation.evaluate import find_triplets, load_sample
from cascadepsp.io import images, layouts, splits
from cascadepsp.io import images as imageio
from cascadepsp.jobs.folder import refine_folder
from cascadepsp.training import data as D
from pspnet.data import find_samples, load_mask


def _touch(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((size[1], size[0]), np.uint8))
    return path


# ------------------------------------------------------------------------------------------------ finders

def test_original_layout_is_recursive_reports_problems_and_skips_excluded_folders(tmp_path):
    for name in ("a", "sub/b", "c"):
        _touch(tmp_path / f"{name}_im.png")
        _touch(tmp_path / f"{name}_seg.png")
    _touch(tmp_path / "a_gt.png")
    _touch(tmp_path / "c_im.jpg")  # two images for "c"
    _touch(tmp_path / "d_im.png")  # no mask
    _touch(tmp_path / "orphan_seg.png")
    _touch(tmp_path / "out" / "e_im.png")
    found = layouts.find_original(tmp_path, exclude=[tmp_path / "out"])
    by_name = {s.name: s for s in found.samples}
    assert list(by_name) == ["a", "c", "d", "sub/b"]
    assert by_name["a"].gt == tmp_path / "a_gt.png" and by_name["a"].problem is None
    assert by_name["sub/b"].group == "sub" and by_name["a"].group == tmp_path.name
    assert by_name["c"].problem.startswith("ambiguous image") and by_name["c"].image is None
    assert by_name["d"].problem == "missing mask"
    assert found.orphans == ["orphan"]
    _touch(tmp_path / "gts" / "sub" / "b.png")  # a separate ground-truth folder, nested like the inputs
    with_gt = {s.name: s for s in layouts.find_original(tmp_path, gt=tmp_path / "gts").samples}
    assert with_gt["sub/b"].gt == tmp_path / "gts" / "sub" / "b.png" and with_gt["a"].gt is None


def test_folders_matched_by_relative_path_and_stem(tmp_path):
    _touch(tmp_path / "im" / "x" / "1.jpg")
    _touch(tmp_path / "im" / "2.png")
    _touch(tmp_path / "m" / "x" / "1.png")
    _touch(tmp_path / "g" / "x" / "1.png")
    found = layouts.find_by_stem(tmp_path / "im", tmp_path / "m", tmp_path / "g")
    assert [(s.name, s.problem) for s in found.samples] == [("2", "missing mask"), ("x/1", None)]
    assert found.samples[1].gt == tmp_path / "g" / "x" / "1.png"
    # a mask folder nested inside the image folder: its files are masks, not images, and its sub-folders count
    _touch(tmp_path / "im" / "masks" / "x" / "1.png")
    nested = layouts.find_by_stem(tmp_path / "im", tmp_path / "im" / "masks")
    assert [(s.name, s.problem) for s in nested.samples] == [("2", "missing mask"), ("x/1", None)]
    with pytest.raises(ValueError, match="is the image folder"):
        layouts.find_by_stem(tmp_path / "im", tmp_path / "im")


def test_davis_frames_carry_ground_truth_and_coarse_mask_where_present(tmp_path):
    for seq in ("aa", "bb"):
        for f in range(2):
            _touch(tmp_path / "JPEGImages" / seq / f"{f:05d}.jpg")
            _touch(tmp_path / "Annotations" / seq / f"{f:05d}.png")
    _touch(tmp_path / "coarse_u2netp" / "bb" / "00001.png")
    samples = layouts.find_davis(tmp_path)
    assert [s.name for s in samples] == ["aa/00000", "aa/00001", "bb/00000", "bb/00001"]
    assert [s.mask is not None for s in samples] == [False, False, False, True]
    assert splits.split_davis(tmp_path, n_val=1) == (["aa"], ["bb"])
    assert [s.name for s in splits.select_samples(davis=tmp_path)] == ["bb/00001"]
    with pytest.raises(ValueError, match="unknown"):
        layouts.find_davis(tmp_path, ["zz"])


def test_images_masks_folders_and_image_listing(tmp_path):
    _touch(tmp_path / "images" / "a.jpg")
    _touch(tmp_path / "masks" / "a.png")
    _touch(tmp_path / "images" / "b.jpg")
    [s] = layouts.find_images_masks(tmp_path)
    assert s.gt == tmp_path / "masks" / "a.png" and s.mask is None
    _touch(tmp_path / "flat" / "p_im.jpg")
    _touch(tmp_path / "flat" / "p_seg.png")
    _touch(tmp_path / "flat" / ".hidden.png")
    assert [p.name for p in layouts.list_images(tmp_path / "flat")] == ["p_im.jpg"]


def test_split_by_name_is_stable_and_uses_the_seeded_sha1(tmp_path):
    items = [layouts.Sample(f"n{i}", None) for i in range(20)]
    train, val = splits.split_by_name(items, 0.2, seed=4)
    assert len(val) == 4 and set(train).isdisjoint(val)
    assert splits.split_by_name(items[::-1], 0.2, seed=4)[1] == val[::-1]


def test_evenly_spaced_keeps_the_ends_the_order_and_no_duplicates():
    items = [f"p{i:03d}" for i in range(225)]
    picked = splits.evenly_spaced(items, 45)
    assert len(picked) == len(set(picked)) == 45 and picked == sorted(picked)
    assert picked[0] == "p000" and picked[-1] == "p224" and picked[1] == "p005"  # a step of 224 / 44 = 5.09
    assert splits.evenly_spaced(items, 1) == ["p000"]
    assert splits.evenly_spaced(items, 0) == splits.evenly_spaced(items, None) == splits.evenly_spaced(items, 999) == items
    with pytest.raises(ValueError, match="count: expected >= 0, got -1"):
        splits.evenly_spaced(items, -1)


# ------------------------------------------------------------------------------------------------ reading

H, W = 30, 40


def _truth() -> np.ndarray:
    fg = np.zeros((H, W), bool)
    fg[8:22, 10:31] = True
    return fg


def _write_masks(folder: Path) -> dict[str, Path]:
    """The same foreground as a palette PNG (dark colour for id 1), a 16-bit PNG and an RGBA cut-out."""
    fg = _truth()
    folder.mkdir(parents=True, exist_ok=True)
    pal = Image.fromarray(fg.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 12, 8, 20] + [0] * 762)  # id 1 is almost black: its luminance is below 128
    pal.save(folder / "palette.png")
    cv2.imwrite(str(folder / "sixteen.png"), fg.astype(np.uint16) * 65535)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 200  # the colour says nothing; the alpha is the mask
    rgba[..., 3] = fg * 255
    Image.fromarray(rgba, mode="RGBA").save(folder / "cutout.png")
    return {k: folder / f"{k}.png" for k in ("palette", "sixteen", "cutout")}


class _Recorder:
    """A stand-in refiner that records the coarse mask the folder tool hands it and returns it."""

    def __init__(self) -> None:
        self.masks: list[np.ndarray] = []

    def refine(self, image, mask, fast=False, L=900, threshold=None, bgr=False):
        self.masks.append(np.asarray(mask, bool))
        return np.where(mask, 255, 0).astype(np.uint8)


@pytest.mark.parametrize("kind", ["palette", "sixteen", "cutout"])
def test_palette_16bit_and_rgba_masks_read_the_same_in_folder_tool_evaluation_and_training(tmp_path, kind):
    truth = _truth()
    photo = np.full((H, W, 3), 90, np.uint8)
    src = tmp_path / "set"
    src.mkdir()
    cv2.imwrite(str(src / "x_im.png"), photo)
    path = _write_masks(tmp_path / "masks")[kind]
    for role in ("seg", "gt"):
        (src / f"x_{role}.png").write_bytes(path.read_bytes())
    assert np.array_equal(imageio.read_mask(path).soft() >= 128, imageio.read_mask(path).binary())
    # folder tool: the coarse mask handed to the refiner, and the IoU against the ground truth
    rec = _Recorder()
    summary = refine_folder([src], tmp_path / "out", refiner=rec, report=tmp_path / "r.csv", progress=False)
    assert np.array_equal(rec.masks[0], truth) and summary.rows[0].iou_coarse == 1.0
    # evaluation
    [sample] = find_triplets(src)
    _, seg, gt = load_sample(sample)
    assert np.array_equal(seg >= 128, truth) and np.array_equal(gt >= 128, truth)
    # refiner training (ground truth and real coarse mask) and PSPNet training
    decoded = D.ImageStore(D.list_im_gt(src), max_side=None).get(0)
    assert np.array_equal(decoded.gt >= 128, truth) and np.array_equal(decoded.coarse >= 128, truth)
    [ps] = find_samples(src, "all")
    assert np.array_equal(load_mask(ps.gt, "binary", ps.image), truth.astype(np.uint8))


def test_a_mask_of_the_un_rotated_photo_is_turned_upright(tmp_path):
    photo = Image.fromarray(np.zeros((H, W, 3), np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    photo.save(tmp_path / "p.jpg", exif=exif)
    fg = _truth()
    cv2.imwrite(str(tmp_path / "m.png"), fg.astype(np.uint8) * 255)
    image, header = images.read_rgb(tmp_path / "p.jpg")
    assert image.shape[:2] == (W, H)
    soft = images.read_soft_mask(tmp_path / "m.png", header)
    assert np.array_equal(soft >= 128, np.rot90(fg, k=-1))
    small, _ = images.read_rgb(tmp_path / "p.jpg", max_side=20)
    assert max(small.shape[:2]) == 20
