#!/usr/bin/env python
"""Write the refiner's dev sets (held back from training, issue 26) as ``<name>_im / _seg / _gt`` folders.

One folder per source and kind of coarse mask, each scored by ``scripts/evaluate_dev.py`` (or evaluate.py):

* ``duts_lowres``, ``duts_pspnet``: the DUTS_DEV_COUNT DUTS-TR dev photos with a seeded low-resolution-segmenter
  perturbation of the ground truth (U2-Netp trained on DUTS-TR, so its masks of these photos are unrealistically
  good), and 100 of them (evenly spaced) with the bundled PSPNet's masks;
* ``davis_u2netp``, ``davis_u2netp_2k``, ``davis_pspnet``: every 5th frame of the DAVIS-2016 training
  sequences held back as dev, with real U2-Netp masks (``coarse_u2netp/``, see make_u2netp_masks.py), the same
  masks at a 2K photo's resolution ratio (cut to 320/2048 of the long side and back), and PSPNet's;
* ``human_u2netp``, ``human_u2netp_2k``, ``human_pspnet``: the human_seg dev photos likewise (their ``_seg``).

    python scripts/make_dev_sets.py runs/dev --duts data_more/duts_tr --davis-train data_more/davis2016_train \\
        --human-seg ../shared/data/human_seg
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

import pspnet
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import encode_png, read_binary, read_rgb
from cascadepsp.io.layouts import Sample
from cascadepsp.io.splits import (
    DAVIS_TRAIN_DEV_SEQUENCES,
    DEV_SALT,
    DUTS_DEV_COUNT,
    davis_eval_samples,
    evenly_spaced,
    hold_out_by_name,
    select_samples,
)
from cascadepsp.training.data import list_duts
from cascadepsp.training.perturb import LowResConfig, lowres_mask

SEGMENTER_SIDE, PHOTO_2K = 320, 2048  # a 320-px segmenter's mask on a 2K photo


def at_2k_ratio(mask: np.ndarray) -> np.ndarray:
    """The mask as a 320-px segmenter would draw it on a 2K photo: area-downscaled by 320/2048 and bilinearly
    upscaled back, cut at 0.5 (detail finer than ~6.4 px of the photo is lost)."""
    h, w = mask.shape
    s = SEGMENTER_SIDE / PHOTO_2K
    small = cv2.resize(mask.astype(np.float32), (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5


def seeded_lowres(gt: np.ndarray, name: str) -> np.ndarray:
    """A low-resolution-segmenter perturbation of ``gt`` seeded by the sample's name (the same on every run)."""
    seed = int(hashlib.sha1(f"{DEV_SALT}:{name}".encode()).hexdigest()[:8], 16)
    return lowres_mask(gt, np.random.default_rng(seed), LowResConfig()) > 127


def write_set(out: Path, samples: list[Sample], coarse: Callable[[Sample, np.ndarray], np.ndarray]) -> None:
    """``<out>/<name>_im / _gt / _seg`` for each sample; ``coarse(sample, gt_bool)`` makes the coarse mask."""
    out.mkdir(parents=True, exist_ok=True)
    for s in tqdm(samples, desc=out.name):
        name = s.name.replace("/", "_")
        seg_path = out / f"{name}_seg.png"
        if seg_path.is_file():
            continue
        gt = read_binary(s.gt)
        shutil.copyfile(s.image, out / f"{name}_im{s.image.suffix.lower()}")
        write_atomic(out / f"{name}_gt.png", encode_png(gt.astype(np.uint8) * 255))
        write_atomic(seg_path, encode_png(coarse(s, gt).astype(np.uint8) * 255))


DAVIS_DEV_EVERY = 5  # frames of one sequence are nearly the same picture


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write the dev sets into")
    p.add_argument("--duts", help="DUTS-TR folder (DUTS-TR-Image/, DUTS-TR-Mask/)")
    p.add_argument("--davis-train", help="DAVIS-2016 training sequences with coarse_u2netp/ masks")
    p.add_argument("--human-seg", help="human_seg folder (<name>_im / _seg / _gt)")
    p.add_argument("--pspnet", default="default", help="PSPNet weights for the *_pspnet sets ('' to skip them)")
    p.add_argument("--duts-pspnet-count", type=int, default=100,
                   help="DUTS dev photos (evenly spaced) in duts_pspnet: PSPNet is slow beside a training run")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    model = pspnet.load(args.pspnet) if args.pspnet else None

    def pspnet_mask(s: Sample, gt: np.ndarray) -> np.ndarray:
        return pspnet.predict(read_rgb(s.image)[0], model)[1] > 0

    def own_mask(s: Sample, gt: np.ndarray) -> np.ndarray:
        return read_binary(s.mask)

    def own_mask_2k(s: Sample, gt: np.ndarray) -> np.ndarray:
        return at_2k_ratio(read_binary(s.mask))

    groups: list[tuple[str, list[Sample], dict[str, Callable]]] = []
    if args.davis_train:
        # every 5th frame, whatever masks exist (make_u2netp_masks.py --every 1 writes one for every frame)
        dev = [s for s in davis_eval_samples(args.davis_train, list(DAVIS_TRAIN_DEV_SEQUENCES))
               if int(s.image.stem) % DAVIS_DEV_EVERY == 0]
        groups.append(("davis", dev, {"u2netp": own_mask, "u2netp_2k": own_mask_2k}))
    if args.human_seg:
        groups.append(("human", select_samples(args.human_seg, split="dev"),
                       {"u2netp": own_mask, "u2netp_2k": own_mask_2k}))
    if not (groups or args.duts):
        p.error("give at least one of --duts, --davis-train, --human-seg")
    for source, samples, kinds in groups:
        if model is not None:
            kinds = {**kinds, "pspnet": pspnet_mask}
        for kind, fn in kinds.items():
            write_set(out / f"{source}_{kind}", samples, fn)
        print(f"{source}: {len(samples)} photos x {len(kinds)} kinds of coarse mask")
    if args.duts:
        dev = hold_out_by_name(list_duts(args.duts), DUTS_DEV_COUNT, DEV_SALT)[1]
        write_set(out / "duts_lowres", dev, lambda s, gt: seeded_lowres(gt, s.name))
        if model is not None and args.duts_pspnet_count > 0:
            write_set(out / "duts_pspnet", evenly_spaced(dev, args.duts_pspnet_count), pspnet_mask)
        print(f"duts: {len(dev)} dev photos (lowres), {args.duts_pspnet_count} with PSPNet masks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
