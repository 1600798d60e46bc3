"""COCO segmentations (polygons, uncompressed RLE, compressed RLE) to masks and back through ``pycocotools``,
and the refinement of one image's COCO annotations.

``pycocotools`` is imported on first use (``pip install 'cascadepsp[coco]'``). RLE counts are checked before
``pycocotools`` decodes them: it reads malformed counts without complaint and returns garbage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..inference.protocols import ProbabilityRefiner
from ..io.inputs import to_rgb_uint8
from .refine import refine_instances

CHUNK = 16  # instances refined per refine_instances call: bounds the N x H x W output held at once


def mask_api() -> Any:
    """The ``pycocotools.mask`` module, or a one-line ImportError naming the extra that installs it."""
    try:
        import pycocotools.mask as api
    except ImportError as e:
        raise ImportError("pycocotools is needed for COCO masks: pip install 'cascadepsp[coco]'") from e
    return api


def _string_counts(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (5-bit groups from '0', differences to the count two back)."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("segmentation: truncated RLE counts string")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"segmentation: invalid character {counts[p]!r} in RLE counts")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_runs(runs: Sequence[int], height: int, width: int) -> None:
    if any(r < 0 for r in runs):
        raise ValueError("segmentation: negative run length in RLE counts")
    if sum(runs) != height * width:
        raise ValueError(f"segmentation: RLE counts cover {sum(runs)} pixels, expected {height}x{width} = "
                         f"{height * width}")


def _check_size(height: int, width: int) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")


def _to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Any COCO segmentation of an image of ``height`` x ``width`` -> one compressed RLE (checked first)."""
    _check_size(height, width)
    api = mask_api()
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("segmentation: empty polygon list")
        polys = []
        for i, poly in enumerate(segmentation):
            if (not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in poly)):
                raise ValueError(f"segmentation: polygon {i} must be a list of at least 3 x, y pairs of numbers")
            polys.append([float(v) for v in poly])
        return api.merge(api.frPyObjects(polys, height, width))
    if not isinstance(segmentation, dict):
        raise ValueError(f"segmentation: expected polygons (a list of [x, y, ...] lists) or an RLE dict, got "
                         f"{type(segmentation).__name__}")
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"segmentation: RLE needs 'size': [height, width], got {size!r}")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise ValueError(f"segmentation: RLE size {size[1]}x{size[0]} (WxH) does not match image size "
                         f"{width}x{height}")
    if isinstance(counts, list):
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise ValueError("segmentation: uncompressed RLE counts must be integers")
        _check_runs(counts, height, width)
        return api.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str):
        raise ValueError(f"segmentation: RLE 'counts' must be a list or a string, got {type(counts).__name__}")
    _check_runs(_string_counts(counts), height, width)
    return {"size": [height, width], "counts": counts.encode("ascii")}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> HxW bool mask; ValueError if malformed."""
    return mask_api().decode(_to_rle(segmentation, height, width)).astype(bool)


def encode_rle(mask: np.ndarray) -> dict:
    """HxW mask (nonzero = foreground) -> compressed COCO RLE ``{"size": [h, w], "counts": str}`` (JSON-ready)."""
    rle = mask_api().encode(np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_uncompressed_rle(mask: np.ndarray) -> dict:
    """HxW mask -> uncompressed COCO RLE ``{"size": [h, w], "counts": [runs...]}`` (column-major, background first)."""
    flat = (np.asarray(mask) != 0).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer outlines of ``mask`` as COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` along the pixels' edges, so
    they decode back to the same pixels; holes are filled (COCO unites polygons, it cannot cut holes)."""
    fg = np.asarray(mask) != 0
    if not fg.any():
        return []
    ys, xs = np.nonzero(fg)
    y0, x0 = int(ys.min()), int(xs.min())
    box = fg[y0:int(ys.max()) + 1, x0:int(xs.max()) + 1].astype(np.uint8)
    # On the mask grown 3x, the outline's pixels sit at 3k (a pixel's left/top edge k) or 3k + 2 (its
    # right/bottom edge k + 1): (c + 1) // 3 puts every outline point on the pixel corner it belongs to.
    # (The 1-pixel padding shifts c by +1, so the padded coordinate // 3 is that corner.)
    big = np.pad(np.kron(box, np.ones((3, 3), np.uint8)), 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        pts = c.reshape(-1, 2) // 3 + np.array([x0, y0])
        keep = np.ones(len(pts), bool)
        keep[1:] = (pts[1:] != pts[:-1]).any(axis=1)
        pts = pts[keep]
        if len(pts) > 1 and (pts[0] == pts[-1]).all():
            pts = pts[:-1]
        if len(pts) >= 3:
            polygons.append(pts.astype(np.float64).ravel().tolist())
    return polygons


def area_bbox(segmentation: Any, height: int, width: int) -> tuple[int, list[float]]:
    """Pixel area and ``[x, y, w, h]`` box of a COCO segmentation, as ``pycocotools`` computes them."""
    api = mask_api()
    rle = _to_rle(segmentation, height, width)
    return int(api.area(rle)), [float(v) for v in api.toBbox(rle)]


def encode_segmentation(mask: np.ndarray, polygons: bool = False) -> tuple[Any, int, list[float]]:
    """(segmentation, area, bbox) of an HxW mask: compressed RLE, or polygons with ``polygons=True`` (an empty
    mask stays RLE: COCO cannot load an empty polygon list)."""
    h, w = mask.shape
    seg: Any = mask_to_polygons(mask) if polygons else None
    if not seg:
        seg = encode_rle(mask)
    area, bbox = area_bbox(seg, h, w)
    return seg, area, bbox


def refine_coco_annotations(image: Any, annotations: Sequence[dict], refiner: ProbabilityRefiner | None = None, *,
                            polygons: bool = False, context: float = 0.25, threshold: float = 0.5,
                            fast: bool = False, L: int = 900, bgr: bool = False,
                            errors: list[tuple[int, str]] | None = None) -> list[dict]:
    """Refine the COCO annotations of one image; returns new dicts in the same order.

    Each refined annotation keeps every key as it was except ``segmentation`` (compressed RLE, or polygons),
    ``area`` and ``bbox``; ``iscrowd`` annotations are returned untouched. A malformed segmentation raises a
    ValueError, or, when an ``errors`` list is given, is left untouched and reported there as (index, message).
    """
    if threshold is None:
        raise ValueError("threshold: COCO segmentations are binary; expected a value in [0, 1]")
    rgb = to_rgb_uint8(image, bgr=bgr)
    h, w = rgb.shape[:2]
    out = [dict(a) for a in annotations]
    todo: list[tuple[int, np.ndarray]] = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"annotations[{i}]: expected a dict, got {type(ann).__name__}")
        if ann.get("iscrowd"):
            continue
        try:
            if "segmentation" not in ann:
                raise ValueError("segmentation: missing")
            todo.append((i, decode_segmentation(ann["segmentation"], h, w)))
        except ValueError as e:
            if errors is None:
                raise ValueError(f"annotations[{i}]: {e}") from None
            errors.append((i, str(e)))
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        refined = refine_instances(rgb, [m for _, m in chunk], refiner, context=context, threshold=threshold,
                                   fast=fast, L=L)
        for (i, _), mask in zip(chunk, refined, strict=True):
            seg, area, bbox = encode_segmentation(mask, polygons)
            out[i].update(segmentation=seg, area=area, bbox=bbox)
    return out
