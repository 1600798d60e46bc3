#!/usr/bin/env python
"""How much of a coarse mask's boundary error a refiner could fix: mBA of oracles and of 1-px offsets.

The "band oracle" replaces the coarse mask by the ground truth within k px of the coarse boundary and keeps
it elsewhere: the score a perfect local refiner would reach. Dilating / eroding the coarse mask by 1 px
tells whether the segmenter's boundary is systematically offset. Same sample selection as evaluate.py.

    python scripts/boundary_headroom.py --davis ../shared/data/davis2016 --sequences libby,motocross-jump,paragliding-launch
    python scripts/boundary_headroom.py ../shared/data/human_seg --split val
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from cascadepsp.evaluation.evaluate import load_sample
from cascadepsp.evaluation.metrics import binarize, boundary_accuracy
from cascadepsp.io.splits import add_selection_arguments, selected_samples

BANDS = (1, 2, 3, 5, 8, 15)


def band_oracle(coarse: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """``gt`` within ``k`` px of ``coarse``'s boundary, ``coarse`` elsewhere (both HxW bool)."""
    c = coarse.astype(np.uint8)
    edge = cv2.morphologyEx(c, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    dist = cv2.distanceTransform(1 - edge, cv2.DIST_L2, 3)
    return np.where(dist <= k, gt, coarse)


def offset(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` dilated (px > 0) or eroded (px < 0) by an elliptical kernel of radius |px|."""
    if px == 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(px) + 1, 2 * abs(px) + 1))
    op = cv2.dilate if px > 0 else cv2.erode
    return op(mask.astype(np.uint8), kernel) > 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_selection_arguments(p)
    args = p.parse_args(argv)
    if not (args.davis or args.dir):
        p.error("give a folder or --davis")
    try:
        found = selected_samples(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    samples = [s for s in found if s.mask is not None and s.gt is not None]
    if not samples:
        print("error: no samples with both a coarse mask and a ground truth", file=sys.stderr)
        return 2
    rows: dict[str, list[float]] = {}
    for s in samples:
        _, seg, soft_gt = load_sample(s)  # evaluate.py's reading rules, so "coarse" matches its coarse row
        coarse, gt = binarize(seg), binarize(soft_gt)
        candidates = {"coarse": coarse, "coarse eroded 1 px": offset(coarse, -1),
                      "coarse dilated 1 px": offset(coarse, 1),
                      **{f"band oracle k={k}": band_oracle(coarse, gt, k) for k in BANDS}}
        for name, mask in candidates.items():
            ba = boundary_accuracy(mask, gt)
            if np.isfinite(ba):
                rows.setdefault(name, []).append(ba)
    base = 100 * float(np.mean(rows["coarse"]))
    print(f"{len(samples)} images")
    print(f"{'mask':<22}{'mBA':>8}{'dmBA':>8}")
    for name, values in rows.items():
        mba = 100 * float(np.mean(values))
        print(f"{name:<22}{mba:8.2f}{mba - base:+8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
