"""Refine the instance masks of one photo, each inside its own box enlarged by some context (the original's
ADE20K scheme), and return them in the photo's frame.

Why crops are refined one at a time: the engine can only put inputs of one shape in a model call. A crop's
global step runs at long side ``L`` with the crop's own aspect ratio, and its local windows have the crop's
own size, so crops of different boxes never share a shape; padding them to one would change every result
(the network's pyramid pooling averages over the padding). On the CPU the engine runs one window per call
anyway (batching measured no gain there). What one photo's instances do share is done once: the photo is
validated and converted once, crops are views of it, and each crop is refined at its own size, so the local
step covers the crop instead of the whole photo (measured in ``docs/instances.md``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..inference.labels import MIN_CROP, object_crop
from ..inference.protocols import ProbabilityRefiner
from ..inference.refiner import _check_threshold, get_default_refiner, probability_to_uint8
from ..io.inputs import to_binary_mask, to_rgb_uint8

Box = tuple[slice, slice]


def check_context(context: float) -> float:
    """Validate ``context``, the share of an instance's box added on each side of its crop."""
    if isinstance(context, bool) or not isinstance(context, (int, float)) or not 0.0 <= float(context) <= 10.0:
        raise ValueError(f"context: expected a number in [0, 10] (share of the box added on each side), got {context!r}")
    return float(context)


def instance_masks(masks: Any, size: tuple[int, int]) -> list[np.ndarray]:
    """Validate ``masks`` (N x H x W array or tensor, or a sequence of HxW masks) as HxW bool masks of ``size``
    (H, W)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"masks: expected an N x H x W array (or a list of HxW masks), got shape {masks.shape}")
        items: Sequence[Any] = list(masks)
    elif isinstance(masks, (list, tuple)):
        items = masks
    else:
        raise TypeError(f"masks: expected an N x H x W array or tensor, or a list of HxW masks, got "
                        f"{type(masks).__name__}")
    out = []
    for i, m in enumerate(items):
        try:
            fg = to_binary_mask(m)
        except ValueError as e:
            raise ValueError(f"masks[{i}]: {str(e).removeprefix('mask: ')}") from None
        if fg.shape != tuple(size):
            raise ValueError(f"masks[{i}]: size {fg.shape[1]}x{fg.shape[0]} (WxH) does not match image size "
                             f"{size[1]}x{size[0]}")
        out.append(fg)
    return out


def instance_box(mask: np.ndarray, context: float = 0.25) -> Box:
    """Rows and columns of ``mask``'s box grown by ``context`` x its side on each side (at least
    :data:`~cascadepsp.inference.labels.MIN_CROP` pixels), moved inside the image; the same crop as ``--labels`` uses."""
    return object_crop(mask, scale=1.0 + 2.0 * check_context(context), min_side=MIN_CROP)


def refine_crops(refiner: ProbabilityRefiner, rgb: np.ndarray, masks: Sequence[np.ndarray], *,
                 context: float = 0.25, fast: bool = False, L: int = 900
                 ) -> Iterator[tuple[Box, np.ndarray] | None]:
    """For each HxW bool mask of the HxWx3 uint8 photo ``rgb``: its crop box and the refined float32
    probabilities inside it, or ``None`` for an empty mask (yielded in order, one crop in memory at a time)."""
    context = check_context(context)
    for fg in masks:
        if not fg.any():
            yield None
            continue
        rows, cols = instance_box(fg, context)
        yield (rows, cols), refiner.refine_probability(rgb[rows, cols], fg[rows, cols], fast=fast, L=L)


def refine_instances(image: Any, masks: Any, refiner: ProbabilityRefiner | None = None, *, context: float = 0.25,
                     threshold: float | None = None, resolve_overlaps: bool = False, fast: bool = False,
                     L: int = 900, bgr: bool = False) -> np.ndarray:
    """Refine every instance mask of ``image``; returns an N x H x W uint8 array in the image's frame.

    Each instance is refined inside its box enlarged by ``context`` (0.25: a quarter of the box's side on every
    side, as the original's ADE20K scheme) and cannot grow beyond it. ``masks``: N x H x W (numpy or torch) or
    a list of HxW masks, in any form :func:`cascadepsp.io.inputs.to_binary_mask` takes. Output: soft 0-255, or
    0/255 with ``threshold``; empty instances stay empty. Instances may overlap; ``resolve_overlaps=True``
    gives each pixel to the instance of highest probability only (ties: the lower index), so pixels no
    instance claims (below ``threshold``, or below 128 when soft) stay background everywhere.
    ``refiner``: a :class:`~cascadepsp.Refiner` (default: the cached one with the bundled weights).
    """
    threshold = _check_threshold(threshold)
    rgb = to_rgb_uint8(image, bgr=bgr)
    h, w = rgb.shape[:2]
    fgs = instance_masks(masks, (h, w))
    if refiner is None:
        refiner = get_default_refiner()
    out = np.zeros((len(fgs), h, w), np.uint8)
    if not resolve_overlaps:
        for i, item in enumerate(refine_crops(refiner, rgb, fgs, context=context, fast=fast, L=L)):
            if item is not None:
                (rows, cols), prob = item
                out[i, rows, cols] = probability_to_uint8(prob, threshold)
        return out
    best_p = np.zeros((h, w), np.float32)
    best_i = np.full((h, w), -1, np.int32)
    for i, item in enumerate(refine_crops(refiner, rgb, fgs, context=context, fast=fast, L=L)):
        if item is None:
            continue
        (rows, cols), prob = item
        region_p, region_i = best_p[rows, cols], best_i[rows, cols]  # views: updated in place
        wins = prob > region_p
        region_p[wins] = prob[wins]
        region_i[wins] = i
        out[i, rows, cols] = probability_to_uint8(prob, threshold)
    for i in range(len(fgs)):
        out[i][best_i != i] = 0
    return out
