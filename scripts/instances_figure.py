#!/usr/bin/env python
"""A before/after picture of several instances in one photo: frames tiled into a 2-column collage, each
frame's coarse mask one instance, refined with ``refine_instances``; one colour per instance.

    python scripts/instances_figure.py docs/instances.jpg \\
        data_more/davis2016_train/JPEGImages/bmx-bumps/00040.jpg data_more/davis2016_train/coarse_u2netp/bmx-bumps/00040.png \\
        ...  (photo, coarse mask pairs)
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
import torch

from cascadepsp.evaluation.overlay import make_overlay
from cascadepsp.inference.refiner import Refiner
from cascadepsp.instances.refine import refine_instances
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import encode_jpeg, read_binary, read_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output .jpg")
    p.add_argument("pairs", nargs="+", help="photo and coarse-mask paths, alternating")
    p.add_argument("--tile", type=int, nargs=2, default=[427, 240], metavar=("W", "H"), help="size of each tile")
    p.add_argument("--weights", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-width", type=int, default=1280)
    return p.parse_args(argv)


def collage(pairs: list[str], tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(photo, N x H x W instance masks): the tiles in rows of two, each tile's mask as one instance."""
    tw, th = tile
    n = len(pairs) // 2
    rows = (n + 1) // 2
    image = np.zeros((rows * th, 2 * tw, 3), np.uint8)
    masks = np.zeros((n, rows * th, 2 * tw), bool)
    for i in range(n):
        rgb, header = read_image(pairs[2 * i])
        fg = read_binary(pairs[2 * i + 1], header)
        r, c = divmod(i, 2)
        image[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
        masks[i, r * th:(r + 1) * th, c * tw:(c + 1) * tw] = cv2.resize(fg.astype(np.uint8), (tw, th),
                                                                         interpolation=cv2.INTER_NEAREST) > 0
    return image, masks


def ids(masks: np.ndarray) -> np.ndarray:
    """Instance masks -> an id map (1..N; the later instance wins where they overlap)."""
    out = np.zeros(masks.shape[1:], np.int32)
    for i, m in enumerate(masks):
        out[m] = i + 1
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.pairs) % 2:
        raise SystemExit("pairs: expected photo and mask paths, alternating")
    torch.set_num_threads(args.threads)
    image, masks = collage(args.pairs, tuple(args.tile))
    refined = refine_instances(image, masks, Refiner(device="cpu", weights=args.weights), threshold=0.5) > 0
    pic = make_overlay(image, ids(masks), ids(refined), labels=True, max_width=args.max_width)
    write_atomic(args.out, encode_jpeg(pic, quality=85))
    print(f"wrote {args.out} ({pic.shape[1]}x{pic.shape[0]}, {len(masks)} instances)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
