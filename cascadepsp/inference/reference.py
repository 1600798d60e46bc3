"""Reference inference: numerically the same pipeline as the original ``segmentation-refinement`` package.

Global step over the image resized so its long side is ``L``; then a local step over ``L``x``L`` windows
at full resolution, refining only windows that contain a boundary. Everything works on normalised
tensors; the image/mask conversion lives in :mod:`cascadepsp.io.inputs` and :mod:`cascadepsp.inference.refiner`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD

WINDOW_PADDING = 16  # pixels trimmed from each inner side of a refined window
LOW_FG, HIGH_FG = 0.1, 0.9  # the original: windows whose foreground share is outside [LOW_FG, HIGH_FG] are skipped
ORIGINAL_BAND = (LOW_FG, HIGH_FG)


def normalise_u8(image_u8: Tensor, channels: slice = slice(0, 3)) -> Tensor:
    """(..., H, W, C) uint8 RGB -> (..., C, H, W) float, ImageNet-normalised (as ToTensor + Normalize).

    The one normalisation of both packages; ``channels`` names which RGB channels ``image_u8`` holds (the
    batched engine normalises a large photo one channel at a time to bound memory).
    """
    t = image_u8.movedim(-1, -3).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN[channels], device=t.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD[channels], device=t.device).view(-1, 1, 1)
    return (t - mean) / std


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """HxWx3 uint8 RGB -> 1x3xHxW float, ImageNet-normalised (read-only arrays, e.g. a cache's, are copied)."""
    return normalise_u8(torch.from_numpy(np.require(image, requirements="W")).to(device))[None]


def mask_to_tensor(mask: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """HxW bool -> 1x1xHxW float in {-1, +1}."""
    return torch.from_numpy(np.require(mask, requirements="W")).to(device).float().mul_(2.0).sub_(1.0)[None, None]


def resize_max_side(x: Tensor, side: int, mode: str) -> Tensor:
    """Rescale so the long side becomes ``side`` (by scale factor, so it may land a pixel short, as the original).

    A side the scale factor would shrink to 0 rows or columns (a strip far thinner than it is long) keeps 1.
    """
    ratio = side / max(x.shape[-2:])
    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    if min(int(n * ratio) for n in x.shape[-2:]) < 1:
        size = tuple(max(1, int(n * ratio)) for n in x.shape[-2:])
        return F.interpolate(x, size=size, mode=mode, **corners)
    return F.interpolate(x, scale_factor=ratio, mode=mode, **corners)


def pad_to_multiple_of_8(x: Tensor, value: float) -> Tensor:
    """Pad bottom/right to the next multiple of 8 (only when needed), as the original ``safe_forward``."""
    h, w = x.shape[-2:]
    if h % 8 == 0 and w % 8 == 0:
        return x
    # The original always pads both sides to the *next* multiple of 8 once either side needs it.
    nh, nw = (h // 8 + 1) * 8, (w // 8 + 1) * 8
    return F.pad(x, (0, nw - w, 0, nh - h), value=value)


def safe_forward(model: nn.Module, im: Tensor, seg: Tensor, inter_s8: Tensor | None = None,
                 inter_s4: Tensor | None = None, keys: tuple[str, ...] = ("pred_224", "pred_28_3", "pred_56_2"),
                 ) -> dict[str, Tensor]:
    """Run the model on any size: pad image with 0 and masks with -1 to a multiple of 8, crop outputs back."""
    h, w = im.shape[-2:]
    im = pad_to_multiple_of_8(im, 0.0)
    seg = pad_to_multiple_of_8(seg, -1.0)
    inter_s8 = None if inter_s8 is None else pad_to_multiple_of_8(inter_s8, -1.0)
    inter_s4 = None if inter_s4 is None else pad_to_multiple_of_8(inter_s4, -1.0)
    out = model(im, seg, inter_s8, inter_s4)
    return {k: out[k][..., :h, :w] for k in keys}


def global_inputs(im: Tensor, seg: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """Resize image and mask so the long side is ``L``: area down, bicubic (image) / bilinear (mask) up."""
    side = max(im.shape[-2:])
    if side > L:
        return resize_max_side(im, L, "area"), resize_max_side(seg, L, "area")
    if side < L:
        return resize_max_side(im, L, "bicubic"), resize_max_side(seg, L, "bilinear")
    return im, seg


def refine_single_pass(model: nn.Module, im: Tensor, seg: Tensor, L: int = 900) -> Tensor:
    """``fast=True``: one cascade pass at long side ``L``; returns 1x1xHxW probabilities at input size."""
    small_im, small_seg = global_inputs(im, seg, L)
    pred = safe_forward(model, small_im, small_seg, keys=("pred_224",))["pred_224"]
    return single_pass_to_input_size(pred, *im.shape[-2:], L)


def single_pass_to_input_size(pred: Tensor, h: int, w: int, L: int) -> Tensor:
    """Bring a global-only prediction back to h x w: area when the input was upsampled, bilinear (corners
    aligned) when it was downsampled, as the original."""
    if max(h, w) < L:
        return F.interpolate(pred, size=(h, w), mode="area")
    if max(h, w) > L:
        return F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=True)
    return pred


@dataclass(frozen=True)
class Window:
    """One local-step window: ``[y0:y1, x0:x1]`` of the image; ``trim`` gives the region kept after trimming."""

    y0: int
    y1: int
    x0: int
    x1: int

    def kept(self, h: int, w: int, pad: int = WINDOW_PADDING) -> tuple[slice, slice, slice, slice]:
        """Image slices and window slices of the part kept after trimming ``pad`` on inner sides."""
        ty0 = pad if self.y0 != 0 else 0
        tx0 = pad if self.x0 != 0 else 0
        ty1 = pad if self.y1 != h else 0
        tx1 = pad if self.x1 != w else 0
        wh, ww = self.y1 - self.y0, self.x1 - self.x0
        return (slice(self.y0 + ty0, self.y1 - ty1), slice(self.x0 + tx0, self.x1 - tx1),
                slice(ty0, wh - ty1), slice(tx0, ww - tx1))


def window_grid(h: int, w: int, L: int = 900, pad: int = WINDOW_PADDING) -> list[Window]:
    """The original's window layout: LxL windows every ``L//2 - 2*pad`` px, shifted inside the border, deduplicated.

    Windows are listed column by column (x outer, y inner), the order the original visits them.
    """
    step = L // 2 - 2 * pad
    if step <= 0:
        raise ValueError(f"L: must be greater than {4 * pad}, got {L}")
    seen: set[tuple[int, int]] = set()
    windows = []
    for xi in range(w // step + 1):
        for yi in range(h // step + 1):
            x0, y0 = xi * step, yi * step
            x1, y1 = x0 + L, y0 + L
            if y1 > h:
                y1, y0 = h, h - L
            if x1 > w:
                x1, x0 = w, w - L
            x0, y0 = max(0, x0), max(0, y0)
            if (y0, x0) in seen:
                continue
            seen.add((y0, x0))
            windows.append(Window(y0, y1, x0, x1))
    return windows


def needs_refinement(fg_share: float, band: tuple[float, float] = ORIGINAL_BAND) -> bool:
    """A window is refined only when its foreground share is within ``band`` (the original: [0.1, 0.9]) and it
    holds both classes (a boundary)."""
    return band[0] <= fg_share <= band[1] and 0.0 < fg_share < 1.0


def local_band(model: nn.Module) -> tuple[float, float]:
    """The foreground-share band of the local step stored with the weights (``RMConfig.local_fg_band``);
    the original's for a model without a config."""
    config = getattr(model, "config", None)
    return tuple(getattr(config, "local_fg_band", ORIGINAL_BAND))


def edit_band(model: nn.Module) -> float:
    """The do-no-harm band stored with the weights (``RMConfig.edit_band``; 0 = off, also without a config)."""
    return float(getattr(getattr(model, "config", None), "edit_band", 0.0))


def second_pass_iou(model: nn.Module) -> float:
    """The second-pass threshold stored with the weights (``RMConfig.second_pass_iou``; 0 = one pass)."""
    return float(getattr(getattr(model, "config", None), "second_pass_iou", 0.0))


def band_radius(h: int, w: int, fraction: float) -> float:
    """The edit band's radius in pixels for an h x w image: ``fraction`` x (h + w) / 2."""
    return fraction * (h + w) / 2


def distance_to_boundary(fg: np.ndarray) -> np.ndarray:
    """float32 HxW: each pixel's Euclidean distance to the nearest pixel of the other class of ``fg`` (bool)."""
    u8 = fg.astype(np.uint8)
    inside = cv2.distanceTransform(u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(fg, inside, outside)


def confine_to_band(prob: np.ndarray, fg: np.ndarray, fraction: float) -> np.ndarray:
    """``prob`` where a pixel lies within the edit band of the coarse mask ``fg``'s boundary, else ``fg``'s own
    label (0 / 1): the refiner may move a boundary, never flip a region far from one. ``fraction`` 0: unchanged."""
    if fraction <= 0:
        return prob
    far = distance_to_boundary(fg) > band_radius(*fg.shape, fraction)
    return np.where(far, fg.astype(prob.dtype), prob)


def global_step(model: nn.Module, im: Tensor, seg: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """Global pass at long side ``L``; returns (binary OS1 result in {-1,1}, soft OS4 result in [-1,1]) at full size."""
    h, w = im.shape[-2:]
    small_im, small_seg = global_inputs(im, seg, L)
    out = safe_forward(model, small_im, small_seg, keys=("pred_224", "pred_56_2"))
    binary = (F.interpolate(out["pred_224"], size=(h, w), mode="bilinear", align_corners=False) > 0.5).float() * 2 - 1
    soft4 = F.interpolate(out["pred_56_2"], size=(h, w), mode="bilinear", align_corners=False) * 2 - 1
    return binary, soft4


def iter_windows_to_refine(binary: Tensor, L: int, band: tuple[float, float] = ORIGINAL_BAND
                           ) -> Iterator[Window]:
    """Windows of the grid that contain a boundary of the binarised global result (foreground: ``> 0``;
    a {-1, 1} float map or a bool map), with a foreground share within ``band``. ``band`` applies to an image
    that is one window; a larger image keeps the original band, which bounds how many windows run."""
    h, w = binary.shape[-2:]
    grid = window_grid(h, w, L)
    band = band if len(grid) == 1 else ORIGINAL_BAND
    for win in grid:
        share = (binary[..., win.y0:win.y1, win.x0:win.x1] > 0).float().mean().item()
        if needs_refinement(share, band):
            yield win


def refine_reference(model: nn.Module, im: Tensor, seg: Tensor, L: int = 900) -> Tensor:
    """Full global + local refinement, one window at a time in fp32 (the faithful path; the local step's
    window band is the model's own, :func:`local_band`)."""
    h, w = im.shape[-2:]
    binary, soft4 = global_step(model, im, seg, L)
    total = torch.zeros_like(binary)
    count = torch.zeros_like(binary)
    for win in iter_windows_to_refine(binary, L, local_band(model)):
        crop = (..., slice(win.y0, win.y1), slice(win.x0, win.x1))
        pred = safe_forward(model, im[crop], binary[crop], soft4[crop], keys=("pred_224",))["pred_224"]
        iy, ix, py, px = win.kept(h, w)
        total[..., iy, ix] += pred[..., py, px]
        count[..., iy, ix] += 1
    result = torch.where(count == 0, binary / 2 + 0.5, total / count.clamp_min(1))
    return result
