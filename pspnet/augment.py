"""Joint image + label-map augmentation for PSPNet training (flip, scale, rotation, blur, crop) and normalisation.

Images are HxWx3 uint8 RGB, masks HxW uint8 class ids with 255 = ignore. Geometric steps are applied to both
with the same parameters (image bilinear, mask nearest) so they stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from cascadepsp.configs import JsonConfig
from cascadepsp.constants import IMAGENET_MEAN
from cascadepsp.inference.reference import normalise_u8
from cascadepsp.training.data import AugmentConfig, paste_object, random_background

IGNORE_INDEX = 255
MEAN_PIXEL = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # padding colour: zero after normalisation


@dataclass(frozen=True)
class SegAugmentConfig(JsonConfig):
    """Ranges of the random augmentation (the PSPNet recipe: scale 0.5-2, rotation +-10 deg, blur, flip)."""

    scale: tuple[float, float] = (0.5, 2.0)
    rotate_deg: float = 10.0
    flip_p: float = 0.5
    blur_p: float = 0.5
    blur_kernel: int = 5


def resize_pair(image: np.ndarray, mask: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize both to ``size_hw``: image with area (shrink) or bilinear (grow), mask with exact nearest."""
    h, w = size_hw
    if (h, w) == image.shape[:2]:
        return image, mask
    shrink = h * w < image.shape[0] * image.shape[1]
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, mask


def long_side_size(shape_hw: tuple[int, int], long_side: float) -> tuple[int, int]:
    """(h, w) scaled so that the longer side becomes ``long_side`` (at least 1 pixel each)."""
    h, w = shape_hw
    s = long_side / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def rotate_pair(image: np.ndarray, mask: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate both about the image centre, keeping the size; new corners become mean colour / ignore."""
    if angle_deg == 0.0:
        return image, mask
    h, w = mask.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, 1.0)
    image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=MEAN_PIXEL)
    mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=IGNORE_INDEX)
    return image, mask


def pad_and_crop(image: np.ndarray, mask: np.ndarray, crop: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pad to at least ``crop`` x ``crop`` (mean colour / ignore), then take a random crop of that size."""
    h, w = mask.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        top, left = ph // 2, pw // 2
        image = cv2.copyMakeBorder(image, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=MEAN_PIXEL)
        mask = cv2.copyMakeBorder(mask, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        h, w = mask.shape
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    return image[y:y + crop, x:x + crop], mask[y:y + crop, x:x + crop]


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop: int, base_size: int,
                 cfg: SegAugmentConfig = SegAugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: long side to ``base_size`` x random scale, rotate, flip, blur, pad + crop."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask: shape {mask.shape} does not match image shape {image.shape[:2]}")
    scale = rng.uniform(*cfg.scale)
    image, mask = resize_pair(image, mask, long_side_size(mask.shape, base_size * scale))
    image, mask = rotate_pair(image, mask, float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)))
    if rng.random() < cfg.flip_p:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < cfg.blur_p:
        image = cv2.GaussianBlur(np.ascontiguousarray(image), (cfg.blur_kernel, cfg.blur_kernel), 0)
    image, mask = pad_and_crop(image, mask, crop, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


PASTE = AugmentConfig()  # the refiner's copy-paste ranges (scale 0.4-1.1, rotation +-30 deg, feathering)


def composite_pair(image: np.ndarray, mask: np.ndarray, background: np.ndarray, background_mask: np.ndarray,
                   rng: np.random.Generator, paste: AugmentConfig = PASTE) -> tuple[np.ndarray, np.ndarray] | None:
    """Copy-paste the foreground (label 1) of ``image`` onto a random region of ``background`` (binary masks).

    The new label is the pasted object united with the background's own foreground, so an object that was
    already in the background photo stays foreground. None when the object is too small or leaves the frame.
    """
    if image.shape[:2] != mask.shape or background.shape[:2] != background_mask.shape:
        raise ValueError("composite_pair: each mask must match its image's size")
    h, w = mask.shape
    both = np.dstack([background, np.where(background_mask == 1, 255, 0).astype(np.uint8)])
    region = random_background(both, h, w, rng)  # the same crop, resize and flip for image and label
    pasted = paste_object(image, np.where(mask == 1, 255, 0).astype(np.uint8), np.ascontiguousarray(region[..., :3]),
                          rng, paste)
    if pasted is None:
        return None
    composite, alpha = pasted
    return composite, ((alpha > 127) | (region[..., 3] > 127)).astype(np.uint8)


def normalize(image: np.ndarray) -> Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float32 tensor with ImageNet mean/std normalisation."""
    return normalise_u8(torch.from_numpy(np.ascontiguousarray(image)))
