"""Segment evaluation images with PSPNet and write them in the ``<name>_im / _seg / _gt`` layout.

The output folder can then be scored with ``scripts/evaluate.py OUT`` (PSPNet's own masks as coarse input).
Takes the same selections as evaluate.py (a flat folder with ``--split``, or DAVIS sequences).

    python scripts/make_coarse_masks.py --davis ../shared/data/davis2016 --sequences parkour,scooter-black,soapbox --out /tmp/psp_davis
    python scripts/make_coarse_masks.py ../shared/data/human_seg --split val --out /tmp/psp_human
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

import pspnet
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import encode_png, read_rgb
from cascadepsp.io.splits import add_selection_arguments, selected_samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_selection_arguments(p)
    p.add_argument("--weights", default="default", help="PSPNet .safetensors or 'default'")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not (args.davis or args.dir):
        p.error("give a folder or --davis")
    samples = selected_samples(args)
    model = pspnet.load(args.weights)
    if args.device:
        model = model.to(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in tqdm(samples, desc="pspnet"):
        name = s.name.replace("/", "_")
        image, _ = read_rgb(s.image)
        _, mask = pspnet.predict(image, model)
        shutil.copyfile(s.image, out / f"{name}_im{s.image.suffix}")
        shutil.copyfile(s.gt, out / f"{name}_gt.png")
        write_atomic(out / f"{name}_seg.png", encode_png((mask > 0).astype("uint8") * 255))
    print(f"wrote {len(samples)} triplets to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
