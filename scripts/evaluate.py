"""Score coarse masks, the CascadePSP refiner and simple baselines: IoU / mBA table, per-image CSV, figure.

Examples:
  python scripts/evaluate.py ../shared/data/human_seg --weights default --out-csv out/human.csv --figure out/human.png
  python scripts/evaluate.py --davis ../shared/data/davis2016 --sequences parkour,soapbox --methods coarse,guided,morph
"""

from __future__ import annotations

import argparse
import sys

from cascadepsp.evaluation.evaluate import (
    COARSE,
    REFINER,
    build_methods,
    evaluate_pairs,
    match_folders,
    report,
    save_figure,
    select_samples,
)
from cascadepsp.io.splits import SPLITS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", help="folder of <name>_im.jpg|png / <name>_seg.png / <name>_gt.png (recursive)")
    p.add_argument("--image-dir", help="images folder (with --seg-dir and --gt-dir; matched by relative stem)")
    p.add_argument("--seg-dir", help="coarse masks folder")
    p.add_argument("--gt-dir", help="ground-truth masks folder")
    p.add_argument("--davis", metavar="ROOT", help="DAVIS-2016 root with coarse_u2netp/, JPEGImages/, Annotations/")
    p.add_argument("--sequences", help="comma-separated DAVIS sequences (default: all with coarse masks)")
    p.add_argument("--weights", default="default", help="refiner weights: path, 'default' or 'official'")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    p.add_argument("--fast", action="store_true", help="refiner: global step only")
    p.add_argument("--L", type=int, default=900, help="refiner: global-step long side and local window size")
    p.add_argument("--baselines", default="guided,morph",
                   help="comma-separated baselines run beside the refiner (empty for none)")
    p.add_argument("--methods", default=None,
                   help=f"exact comma-separated method list instead of {REFINER} + --baselines, e.g. "
                        f"'{COARSE},guided,morph' to leave the network out")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N triplets")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="for a flat folder: keep the training or validation part of the refiner's name-hash "
                        "split (cascadepsp.io.splits.split_by_name, 20%% validation), or the dev part the "
                        "trainers hold back from training (10%% of the training part)")
    p.add_argument("--out-csv", default=None, help="write per-image metrics here")
    p.add_argument("--out-json", default=None,
                   help="write the per-method summary (IoU, mBA, time) and the command here, e.g. for "
                        "scripts/package_weights.py")
    p.add_argument("--figure", default=None, help="write a PNG of the worst and best cases here")
    args = p.parse_args(argv)
    sources = sum([args.dir is not None, args.davis is not None, any([args.image_dir, args.seg_dir, args.gt_dir])])
    if sources != 1:
        p.error("give exactly one data source: DIR, --davis ROOT, or --image-dir/--seg-dir/--gt-dir")
    if any([args.image_dir, args.seg_dir, args.gt_dir]) and not all([args.image_dir, args.seg_dir, args.gt_dir]):
        p.error("--image-dir, --seg-dir and --gt-dir go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.davis or args.dir:
        samples = select_samples(args.dir, davis=args.davis, sequences=args.sequences, split=args.split)
    else:
        samples = match_folders(args.image_dir, args.seg_dir, args.gt_dir)
    if args.methods is not None:
        names = args.methods.split(",")
    else:
        names = [REFINER, *args.baselines.split(",")]
    methods = build_methods(names, weights=args.weights, device=args.device, fast=args.fast, L=args.L)
    results = evaluate_pairs(samples, methods, limit=args.limit, progress=sys.stderr.isatty())
    report(results, args.out_csv, args.out_json, command=" ".join(sys.argv))
    if args.figure:
        print(f"figure ({results.figure_method} vs {COARSE}): {save_figure(results, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
