"""Every accepted input format gives the same result; every bad input gives a clear ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cascadepsp import Refiner
from cascadepsp.io.inputs import to_binary_mask, to_rgb_uint8


def test_image_formats_are_equivalent(scene):
    image, _ = scene
    ref = to_rgb_uint8(image)
    variants = {
        "bgr": (image[:, :, ::-1].copy(), {"bgr": True}),
        "pil": (Image.fromarray(image), {}),
        "torch_chw_uint8": (torch.from_numpy(image).permute(2, 0, 1), {}),
        "torch_bchw_float": (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, {}),
        "torch_hwc": (torch.from_numpy(image), {}),
        "float01": (image.astype(np.float32) / 255, {}),
        "uint16": (image.astype(np.uint16) * 257, {}),
    }
    for name, (value, kw) in variants.items():
        assert np.array_equal(to_rgb_uint8(value, **kw), ref), name


def test_grayscale_image_is_replicated():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_rgb_uint8(gray)
    assert out.shape == (3, 4, 3) and (out == gray[:, :, None]).all()


def test_mask_formats_are_equivalent(scene):
    _, mask = scene
    variants = {
        "bool": mask,
        "01_uint8": mask.astype(np.uint8),
        "0255_uint8": mask.astype(np.uint8) * 255,
        "float": mask.astype(np.float32),
        "soft_float": np.where(mask, 0.8, 0.2).astype(np.float64),
        "hw1": mask[:, :, None].astype(np.uint8) * 255,
        "torch_11hw": torch.from_numpy(mask)[None, None].float(),
        "torch_hw_bool": torch.from_numpy(mask),
        "pil_L": Image.fromarray(mask.astype(np.uint8) * 255),
        "pil_1": Image.fromarray(mask),
        "jpeg_like": np.where(mask, 250, 4).astype(np.uint8),
    }
    for name, value in variants.items():
        assert np.array_equal(to_binary_mask(value), mask), name


def test_all_formats_give_identical_refinement(small_refiner, scene):
    image, mask = scene
    ref = small_refiner.refine(image, mask, fast=True, L=96)
    assert np.array_equal(small_refiner.refine(Image.fromarray(image), mask * 255, fast=True, L=96), ref)
    assert np.array_equal(small_refiner.refine(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask),
                                               fast=True, L=96), ref)
    assert np.array_equal(small_refiner.refine(image[:, :, ::-1].copy(), mask.astype(np.float32), fast=True,
                                               L=96, bgr=True), ref)


BAD_IMAGES = [
    (np.zeros((10,), np.uint8), "image: expected shape"),
    (np.zeros((10, 10, 4), np.uint8), "image: expected 3 colour channels, got 4"),
    (np.zeros((10, 10, 2), np.uint8), "image: expected 3 colour channels, got 2"),
    (np.zeros((0, 10, 3), np.uint8), "image: empty"),
    (np.full((10, 10, 3), 2.0, np.float32), r"image: float images must lie in \[0, 1\]"),
    (np.full((10, 10, 3), np.nan, np.float32), "image: contains NaN"),
    (np.zeros((10, 10, 3), np.int64), "image: unsupported dtype"),
    (torch.zeros(2, 3, 10, 10), "image: expected a single image"),
    ("photo.jpg", "image: expected a numpy array"),
]


@pytest.mark.parametrize("image,message", BAD_IMAGES)
def test_bad_images_are_named(small_refiner, image, message):
    with pytest.raises(ValueError, match=message):
        small_refiner.refine(image, np.ones((10, 10), bool))


BAD_MASKS = [
    (np.zeros((10, 10, 3), np.uint8), "mask: expected shape HxW"),
    (np.zeros((0, 10), np.uint8), "mask: empty"),
    (np.full((10, 10), np.nan, np.float32), "mask: contains NaN"),
    (np.full((10, 10), 1.5, np.float32), r"mask: float masks must lie in \[0, 1\]"),
    (np.full((10, 10), 300, np.int32), "mask: integer masks"),
    (np.zeros((12, 10), bool), "mask: size 10x12"),
    (None, "mask: expected a numpy array"),
]


@pytest.mark.parametrize("mask,message", BAD_MASKS)
def test_bad_masks_are_named(small_refiner, mask, message):
    with pytest.raises(ValueError, match=message):
        small_refiner.refine(np.zeros((10, 10, 3), np.uint8), mask)


@pytest.mark.parametrize("kwargs,message", [({"L": 10}, "L: expected an integer"), ({"L": 900.5}, "L: expected"),
                                            ({"threshold": 1.5}, "threshold: expected")])
def test_bad_options_are_named(small_refiner, scene, kwargs, message):
    image, mask = scene
    with pytest.raises(ValueError, match=message):
        small_refiner.refine(image, mask, **kwargs)


class _MustNotRun(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the network must not run for trivial masks")


@pytest.mark.parametrize("fast", [True, False])
def test_empty_and_full_masks_skip_the_network(scene, fast):
    image, mask = scene
    refiner = Refiner(device="cpu", weights=_MustNotRun())
    empty = refiner.refine(image, np.zeros_like(mask), fast=fast)
    full = refiner.refine(image, np.ones_like(mask), fast=fast)
    assert empty.shape == mask.shape and (empty == 0).all()
    assert full.shape == mask.shape and (full == 255).all()
