#!/usr/bin/env python
"""Write U2-Netp coarse masks for the frames of a DAVIS-layout folder: ``<root>/coarse_u2netp/<seq>/<frame>.png``.

The masks are realistic refinement inputs (a real third-party segmenter's errors) for training and for dev
scoring, the same kind ``../shared/data/davis2016/coarse_u2netp`` holds. Existing masks are kept.

    python scripts/make_u2netp_masks.py data_more/davis2016_train ../shared/segmenters/u2netp.onnx --every 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from cascadepsp.inference.segmenters import U2NetP
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import encode_png, read_rgb
from cascadepsp.io.layouts import DAVIS_COARSE, find_davis


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="DAVIS-layout folder (JPEGImages/<seq>/)")
    p.add_argument("onnx", help="u2netp.onnx")
    p.add_argument("--sequences", help="comma-separated sequences (default: all)")
    p.add_argument("--every", type=int, default=5, help="every N-th frame of each sequence (frame index %% N == 0)")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every: expected >= 1")
    seqs = [s for s in args.sequences.split(",") if s] if args.sequences else None
    frames = [s for s in find_davis(args.root, seqs) if int(s.image.stem) % args.every == 0]
    model = U2NetP(args.onnx)
    written = 0
    for s in tqdm(frames, desc="u2netp"):
        out = Path(args.root) / DAVIS_COARSE / s.group / f"{s.image.stem}.png"
        if out.is_file():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        image, _ = read_rgb(s.image)
        write_atomic(out, encode_png(model.predict_mask(image).astype("uint8") * 255))
        written += 1
    print(f"wrote {written} masks under {Path(args.root) / DAVIS_COARSE} ({len(frames) - written} kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
