"""Refine instance masks in the shapes other tools hand them out: Segment Anything's automatic-mask-generator
records, detectron2's ``pred_masks``, a list of arrays. Each adapter is a thin wrapper of
:func:`cascadepsp.instances.refine.refine_instances` that returns the masks in the shape they came in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..inference.protocols import ProbabilityRefiner
from ..io.inputs import to_rgb_uint8
from .refine import refine_instances


def _sam_box(mask: np.ndarray) -> list[int]:
    """``[x, y, w, h]`` as SAM computes it: w and h are the distances between the extreme pixels' indices."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]


def _sam_mask(record: Any, i: int, size: tuple[int, int]) -> np.ndarray:
    if not isinstance(record, dict) or "segmentation" not in record:
        raise ValueError(f"records[{i}]: expected a dict with a 'segmentation' key")
    seg = record["segmentation"]
    if isinstance(seg, dict):
        from .coco import decode_segmentation

        try:
            return decode_segmentation(seg, *size)
        except ValueError as e:
            raise ValueError(f"records[{i}]: {e}") from None
    arr = seg.detach().cpu().numpy() if isinstance(seg, torch.Tensor) else np.asarray(seg)
    if arr.shape != size:
        raise ValueError(f"records[{i}]: segmentation of shape {arr.shape} does not match image size "
                         f"{size[1]}x{size[0]} (WxH)")
    return arr != 0


def refine_sam_masks(image: Any, records: Sequence[dict], refiner: ProbabilityRefiner | None = None, *,
                     context: float = 0.25, threshold: float = 0.5, fast: bool = False, L: int = 900,
                     bgr: bool = False) -> list[dict]:
    """Refine ``SamAutomaticMaskGenerator.generate`` output; returns new dicts in the same order.

    ``segmentation`` comes back in the form it had (HxW bool array, compressed RLE or uncompressed RLE; RLE
    needs ``pycocotools``), with ``area`` (pixels) and ``bbox`` (XYWH, SAM's convention) of the refined mask;
    every other key (``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``, ...) is untouched.
    """
    if threshold is None:
        raise ValueError("threshold: SAM masks are binary; expected a value in [0, 1]")
    rgb = to_rgb_uint8(image, bgr=bgr)
    size = rgb.shape[:2]
    masks = [_sam_mask(r, i, size) for i, r in enumerate(records)]
    refined = refine_instances(rgb, masks, refiner, context=context, threshold=threshold, fast=fast, L=L) > 0
    out = []
    for record, mask in zip(records, refined, strict=True):
        seg = record["segmentation"]
        if isinstance(seg, dict):
            from .coco import encode_rle, encode_uncompressed_rle

            new_seg: Any = encode_uncompressed_rle(mask) if isinstance(seg.get("counts"), list) else encode_rle(mask)
        elif isinstance(seg, torch.Tensor):
            new_seg = torch.from_numpy(mask).to(seg.device)
        else:
            new_seg = mask
        out.append({**record, "segmentation": new_seg, "area": int(mask.sum()), "bbox": _sam_box(mask)})
    return out


def refine_pred_masks(image: Any, pred_masks: Any, refiner: ProbabilityRefiner | None = None, *,
                      context: float = 0.25, threshold: float | None = 0.5, fast: bool = False, L: int = 900,
                      bgr: bool = False) -> Any:
    """Refine detectron2-style ``pred_masks`` (N x H x W torch tensor or numpy array); returns the same type,
    dtype and device.

    Bool masks come back binary (probability >= ``threshold``); float masks as probabilities in [0, 1] (0/1
    with a threshold, soft with ``threshold=None``); integer masks as 0-255 (0/255 with a threshold).
    """
    is_tensor = isinstance(pred_masks, torch.Tensor)
    if not is_tensor and not isinstance(pred_masks, np.ndarray):
        raise TypeError(f"pred_masks: expected an N x H x W torch tensor or numpy array, got "
                        f"{type(pred_masks).__name__}")
    if pred_masks.ndim != 3:
        raise ValueError(f"pred_masks: expected N x H x W, got shape {tuple(pred_masks.shape)}")
    dtype = pred_masks.dtype
    is_bool = dtype == (torch.bool if is_tensor else np.bool_)
    is_float = dtype.is_floating_point if is_tensor else np.issubdtype(dtype, np.floating)
    if is_bool and threshold is None:
        raise ValueError("threshold: bool pred_masks come back binary; expected a value in [0, 1]")
    refined = refine_instances(image, pred_masks, refiner, context=context, threshold=threshold, fast=fast, L=L,
                               bgr=bgr)
    if is_bool:
        result: Any = refined > 0
    elif is_float:
        result = refined.astype(np.float32) / 255.0
    else:
        result = refined
    if is_tensor:
        return torch.from_numpy(result).to(device=pred_masks.device, dtype=dtype)
    return result.astype(dtype, copy=False)


def refine_mask_list(image: Any, masks: Sequence[Any], refiner: ProbabilityRefiner | None = None, *,
                     context: float = 0.25, threshold: float | None = None, resolve_overlaps: bool = False,
                     fast: bool = False, L: int = 900, bgr: bool = False) -> list[np.ndarray]:
    """Refine a list of HxW masks; returns a list of HxW uint8 masks (soft 0-255, or 0/255 with ``threshold``)."""
    if not isinstance(masks, (list, tuple)):
        raise TypeError(f"masks: expected a list of HxW masks, got {type(masks).__name__}")
    return list(refine_instances(image, masks, refiner, context=context, threshold=threshold,
                                 resolve_overlaps=resolve_overlaps, fast=fast, L=L, bgr=bgr))
