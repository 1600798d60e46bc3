#!/usr/bin/env python
"""Score ``cascadepsp refine-coco`` on real photos: DAVIS-layout frames with coarse masks are written as a COCO
file (one instance per frame, compressed RLE), refined through the command, and the instances' mean IoU / mBA
against the ground truth are printed before and after (with instances per second).

    python scripts/evaluate_instances.py data_more/davis2016_train runs/instances --sequences bmx-bumps surf train \\
        --every 5 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from cascadepsp.cli import main as cli_main
from cascadepsp.evaluation.metrics import SegMetrics
from cascadepsp.inference.refiner import Refiner
from cascadepsp.instances.coco import decode_segmentation, encode_rle
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import read_binary, read_image, read_image_header
from cascadepsp.io.layouts import DAVIS_COARSE, find_davis


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="DAVIS-layout folder (JPEGImages/<seq>, Annotations/<seq>, <coarse-dir>/<seq>)")
    p.add_argument("work", help="folder for the COCO files, the refined file and the report (created)")
    p.add_argument("--sequences", nargs="+", required=True, help="sequences to use")
    p.add_argument("--every", type=int, default=5, help="every N-th frame (default 5)")
    p.add_argument("--coarse-dir", default=DAVIS_COARSE, help=f"folder of the coarse masks (default {DAVIS_COARSE})")
    p.add_argument("--weights", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--L", type=int, default=900)
    p.add_argument("--context", type=float, default=0.25)
    p.add_argument("--compare-full", action="store_true",
                   help="also refine each frame's coarse mask as a whole photo (Refiner.refine) and score it")
    return p.parse_args(argv)


def build_files(root: Path, work: Path, sequences: list[str], every: int, coarse_dir: str) -> tuple[int, int]:
    """Write ``work/coarse.json`` (the coarse instances) and ``work/gt.json`` (the same ids, true masks); returns
    (frames used, frames skipped for want of a coarse mask or ground truth)."""
    samples = find_davis(root, sequences, coarse_dir)
    images, coarse_anns, gt_anns = [], [], []
    skipped = 0
    for s in samples:
        if int(Path(s.image).stem) % every:
            continue
        if s.mask is None or s.gt is None:
            skipped += 1
            continue
        header = read_image_header(s.image)
        w, h = header.size
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": f"{s.group}/{Path(s.image).name}", "width": w, "height": h})
        for anns, path in ((coarse_anns, s.mask), (gt_anns, s.gt)):
            m = read_binary(path, header)
            rle = encode_rle(m)
            ys, xs = np.nonzero(m)
            bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)] if len(xs) else [0.0] * 4
            anns.append({"id": image_id, "image_id": image_id, "category_id": 1, "segmentation": rle,
                         "area": int(m.sum()), "bbox": bbox, "iscrowd": 0})
    categories = [{"id": 1, "name": "object"}]
    for name, anns in (("coarse.json", coarse_anns), ("gt.json", gt_anns)):
        doc = {"images": images, "annotations": anns, "categories": categories}
        write_atomic(work / name, json.dumps(doc).encode())
    return len(images), skipped


def score(work: Path, name: str) -> dict[str, float]:
    """SegMetrics summary of ``work/name``'s instances against ``work/gt.json`` (matched by id)."""
    gt_doc = json.loads((work / "gt.json").read_text())
    doc = json.loads((work / name).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt_doc["images"]}
    truth = {a["id"]: a for a in gt_doc["annotations"]}
    acc = SegMetrics()
    for a in doc["annotations"]:
        size = sizes[a["image_id"]]
        acc.update(decode_segmentation(a["segmentation"], *size), decode_segmentation(truth[a["id"]]["segmentation"],
                                                                                      *size))
    return acc.summary()


def score_whole_frames(root: Path, work: Path, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """Refine each frame's coarse mask as a whole photo (no crop) and score it; (summary, seconds)."""
    refiner = Refiner(device="cpu", weights=args.weights)
    doc = json.loads((work / "coarse.json").read_text())
    truth = {a["id"]: a for a in json.loads((work / "gt.json").read_text())["annotations"]}
    acc = SegMetrics()
    seconds = 0.0
    for im, a in zip(doc["images"], doc["annotations"], strict=True):
        rgb, _ = read_image(root / "JPEGImages" / im["file_name"])
        size = (im["height"], im["width"])
        t0 = time.perf_counter()
        out = refiner.refine(rgb, decode_segmentation(a["segmentation"], *size), fast=args.fast, L=args.L,
                             threshold=0.5)
        seconds += time.perf_counter() - t0
        acc.update(out > 0, decode_segmentation(truth[a["id"]]["segmentation"], *size))
    return acc.summary(), seconds


def per_sequence(report: Path) -> list[str]:
    """Table rows of the report's mean IoU / mBA per sequence, before -> after."""
    groups: dict[str, list[dict]] = defaultdict(list)
    with open(report, newline="") as f:
        for row in csv.DictReader(f):
            groups[row["file_name"].split("/")[0]].append(row)
    lines = []
    for seq, rows in groups.items():
        def mean(key: str, rows: list[dict] = rows) -> float:
            return float(np.nanmean([float(r[key]) if r[key] else np.nan for r in rows]))
        lines.append(f"| {seq} | {len(rows)} | {mean('iou_coarse'):.4f} -> {mean('iou_refined'):.4f} | "
                     f"{mean('mba_coarse'):.4f} -> {mean('mba_refined'):.4f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    root, work = Path(args.root), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n, skipped = build_files(root, work, args.sequences, args.every, args.coarse_dir)
    print(f"{n} frames of {', '.join(args.sequences)} (every {args.every}th; {skipped} without a coarse mask or "
          f"ground truth skipped)")
    cmd = ["refine-coco", str(root / "JPEGImages"), str(work / "coarse.json"), "--out", str(work / "refined.json"),
           "--gt", str(work / "gt.json"), "--report", str(work / "report.csv"), "--weights", args.weights,
           "--device", "cpu", "--threads", str(args.threads), "--L", str(args.L), "--context", str(args.context),
           "--no-resume", "--no-progress", *(["--fast"] if args.fast else [])]
    t0 = time.perf_counter()
    rc = cli_main(cmd)
    seconds = time.perf_counter() - t0
    if rc != 0:
        print(f"refine-coco exited with {rc}", file=sys.stderr)
        return rc
    before, after = score(work, "coarse.json"), score(work, "refined.json")
    print(f"\ncascadepsp {' '.join(cmd)}\n")
    print("| masks | instances | mean IoU | dataset IoU | mBA | seconds | instances/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| coarse ({args.coarse_dir}) | {before['n_images']} | {before['miou_per_image']:.4f} | "
          f"{before['iou']:.4f} | {before['mba']:.4f} | | |")
    print(f"| refined (refine-coco{' --fast' if args.fast else ''}, L={args.L}, context {args.context}) | "
          f"{after['n_images']} | {after['miou_per_image']:.4f} | {after['iou']:.4f} | {after['mba']:.4f} | "
          f"{seconds:.1f} | {n / seconds:.2f} |")
    if args.compare_full:
        full, full_s = score_whole_frames(root, work, args)
        print(f"| whole frame (Refiner.refine, no crop) | {full['n_images']} | {full['miou_per_image']:.4f} | "
              f"{full['iou']:.4f} | {full['mba']:.4f} | {full_s:.1f} (refinement only) | {n / full_s:.2f} |")
    print("\n| sequence | instances | mean IoU (coarse -> refined) | mBA (coarse -> refined) |")
    print("| --- | --- | --- | --- |")
    print("\n".join(per_sequence(work / "report.csv")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
