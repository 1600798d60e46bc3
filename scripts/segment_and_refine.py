#!/usr/bin/env python
"""Segment images with PSPNet (or U2-Netp) and refine the masks with CascadePSP.

Writes <stem>_coarse.png, <stem>_refined.png and <stem>_side_by_side.png into --out. Exit code 1 if any
image failed, 2 if the models could not be loaded.
"""

from __future__ import annotations

import argparse
import sys

from cascadepsp import Refiner
from pspnet.pipeline import SEGMENTERS, build_segmenter, segment_and_refine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--segmenter", choices=SEGMENTERS, default="pspnet")
    p.add_argument("--pspnet-weights", default="default", help="PSPNet .safetensors path, or 'default'")
    p.add_argument("--onnx", default=None, help="u2netp.onnx path (for --segmenter u2netp)")
    p.add_argument("--refiner-weights", default="default", help="refiner weights: 'default', 'official' or a path")
    p.add_argument("--fast", action="store_true", help="refine with the global step only")
    p.add_argument("--L", type=int, default=900, help="refiner global-step long side and local window size")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when available)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        segmenter = build_segmenter(args.segmenter, pspnet_weights=args.pspnet_weights, onnx_path=args.onnx,
                                    device=args.device)
        refiner = Refiner(device=args.device, weights=args.refiner_weights)
    except (FileNotFoundError, ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = segment_and_refine(args.images, args.out, segmenter, refiner, fast=args.fast, L=args.L)
    print(f"{len(report.written)} image(s) written to {args.out}, {len(report.failed)} failed")
    for path, msg in report.failed:
        print(f"failed: {path}: {msg}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
