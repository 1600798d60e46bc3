#!/usr/bin/env python
"""Instances per second on one photo with 1, 5 and 20 instances: ``refine_instances`` (each instance refined
in its context crop) against refining each instance as its own full-photo mask (``Refiner.refine``).

The instances are copies of the photo's object mask, scaled to the cells of a grid over the photo (the
original mask when there is one instance), so their sizes shrink as their number grows.

    python scripts/benchmark_instances.py examples/davis/parkour_00040_im.jpg examples/davis/parkour_00040_gt.png \\
        --counts 1 5 20 --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import cv2
import numpy as np
import torch

from cascadepsp.inference.refiner import Refiner
from cascadepsp.instances.refine import refine_instances
from cascadepsp.io.images import read_binary, read_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image")
    p.add_argument("mask", help="the object's mask; copies of it make the instances")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 5, 20])
    p.add_argument("--weights", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true", help="global step only, for both ways")
    p.add_argument("--L", type=int, default=900)
    return p.parse_args(argv)


def make_instances(mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` copies of the object in ``mask`` (cropped to its box), each scaled into one cell of a grid."""
    if n == 1:
        return mask[None].copy()
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    obj = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)
    cols = math.ceil(math.sqrt(n * w / h))
    rows = math.ceil(n / cols)
    ch, cw = h // rows, w // cols
    scale = min((ch - 4) / obj.shape[0], (cw - 4) / obj.shape[1])
    small = cv2.resize(obj, (max(1, int(obj.shape[1] * scale)), max(1, int(obj.shape[0] * scale))),
                       interpolation=cv2.INTER_NEAREST).astype(bool)
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        r, c = divmod(i, cols)
        y0, x0 = r * ch + 2, c * cw + 2
        out[i, y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    image, _ = read_image(args.image)
    mask = read_binary(args.mask)
    refiner = Refiner(device="cpu", weights=args.weights)
    refiner.refine(image, mask, fast=args.fast, L=args.L)  # warm-up
    print(f"photo {image.shape[1]}x{image.shape[0]}, {args.threads} thread(s), L={args.L}"
          f"{', fast' if args.fast else ''}")
    print("| instances | mean instance area (px) | refine_instances: s | inst/s | each as its own photo: s | inst/s "
          "| speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.counts:
        masks = make_instances(mask, n)
        t0 = time.perf_counter()
        refine_instances(image, masks, refiner, fast=args.fast, L=args.L)
        crops = time.perf_counter() - t0
        t0 = time.perf_counter()
        for m in masks:
            refiner.refine(image, m, fast=args.fast, L=args.L)
        separate = time.perf_counter() - t0
        print(f"| {n} | {int(masks.sum(axis=(1, 2)).mean())} | {crops:.1f} | {n / crops:.2f} | {separate:.1f} | "
              f"{n / separate:.2f} | {separate / crops:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
