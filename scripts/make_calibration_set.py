#!/usr/bin/env python
"""Write the int8 calibration photos shipped in ``cascadepsp/deploy/calibration/`` (issue 30).

One frame per DAVIS-2016 training sequence (CC BY 4.0; never a validation, dev or reserved sequence): the
middle frame that has a real U2-Netp mask (``coarse_u2netp/``), written as ``<seq>_<frame>_im.jpg`` with that
mask as ``_seg.png``; every other sequence also gives a second frame whose coarse mask is the seeded
low-resolution-segmenter perturbation of its annotation (``_seg.png`` again), so both kinds of coarse input the
refiner meets are in the statistics. Run once; the files are committed.

    python scripts/make_calibration_set.py ../shared/data/davis2016 cascadepsp/deploy/calibration
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import cv2

from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import encode_png, read_binary
from cascadepsp.io.splits import DAVIS_TRAIN_DEV_SEQUENCES, split_davis
from cascadepsp.training.perturb import lowres_mask

RESERVED = ("blackswan", "camel", "dog", "horsejump-high", "kite-surf")  # the project's final test: never read


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("davis", help="DAVIS-2016 folder (JPEGImages/, Annotations/, coarse_u2netp/)")
    p.add_argument("out", help="output folder")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the photos")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    root, out = Path(a.davis), Path(a.out)
    train, val = split_davis(root)
    sequences = [s for s in train if s not in (*val, *DAVIS_TRAIN_DEV_SEQUENCES, *RESERVED)]
    out.mkdir(parents=True, exist_ok=True)
    for i, seq in enumerate(sequences):
        real = sorted((root / "coarse_u2netp" / seq).glob("*.png"))
        if not real:
            print(f"skipped {seq}: no U2-Netp masks", file=sys.stderr)
            continue
        frames = [(real[len(real) // 2].stem, "real")]
        if i % 2:
            annotated = sorted((root / "Annotations" / seq).glob("*.png"))
            frames.append((annotated[len(annotated) // 4].stem, "lowres"))
        for frame, kind in frames:
            photo = cv2.imread(str(root / "JPEGImages" / seq / f"{frame}.jpg"), cv2.IMREAD_COLOR)
            if kind == "real":
                coarse = read_binary(root / "coarse_u2netp" / seq / f"{frame}.png").astype("uint8") * 255
            else:
                gt = read_binary(root / "Annotations" / seq / f"{frame}.png")
                coarse = lowres_mask(gt, zlib.crc32(f"{seq}/{frame}".encode()))
            ok, jpg = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, a.quality])
            if not ok:
                raise RuntimeError(f"could not encode {seq}/{frame}")
            write_atomic(out / f"{seq}_{frame}_im.jpg", jpg.tobytes())
            write_atomic(out / f"{seq}_{frame}_seg.png", encode_png(coarse))
            print(f"{seq}_{frame}: {kind} coarse mask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
