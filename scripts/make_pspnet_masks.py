#!/usr/bin/env python
"""Write the bundled PSPNet's coarse masks for DUTS-TR training photos: ``<root>/coarse_pspnet/<stem>.png``.

PSPNet was trained on DAVIS and human_seg only, so its masks of DUTS-TR photos carry a real segmenter's errors on
new photos: realistic coarse inputs for training (``--real-coarse-sources duts``). The dev photos held back by
name hash are skipped (their PSPNet masks live in the dev sets); existing masks are kept.

    python scripts/make_pspnet_masks.py data_more/duts_tr --count 3000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import pspnet
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import encode_png, read_rgb
from cascadepsp.io.layouts import DUTS_COARSE
from cascadepsp.io.splits import DEV_SALT, DUTS_DEV_COUNT, evenly_spaced, hold_out_by_name
from cascadepsp.training.data import list_duts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="DUTS-TR folder (DUTS-TR-Image/, DUTS-TR-Mask/)")
    p.add_argument("--count", type=int, default=None,
                   help="training photos to segment, evenly spaced in name order (default: all)")
    p.add_argument("--weights", default="default", help="PSPNet .safetensors or 'default'")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.count is not None and args.count < 1:
        p.error("--count: expected >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    train = hold_out_by_name(list_duts(args.root), DUTS_DEV_COUNT, DEV_SALT)[0]
    model = pspnet.load(args.weights)
    out_dir = Path(args.root) / DUTS_COARSE
    out_dir.mkdir(exist_ok=True)
    picked = evenly_spaced(train, args.count)
    written = 0
    for s in tqdm(picked, desc="pspnet"):
        out = out_dir / f"{s.image.stem}.png"
        if out.is_file():
            continue
        image, _ = read_rgb(s.image)
        _, mask = pspnet.predict(image, model)
        write_atomic(out, encode_png((mask > 0).astype("uint8") * 255))
        written += 1
    print(f"wrote {written} masks under {out_dir} ({len(picked) - written} kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
