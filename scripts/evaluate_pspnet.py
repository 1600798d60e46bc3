"""Score PSPNet as a foreground segmenter: foreground IoU / mBA against the ground truth, beside the coarse masks.

The coarse row is the data's own coarse mask (U2-Netp for DAVIS and human_seg), so the table compares the two
segmenters on the same images. Takes the same selections as evaluate.py (a flat folder with ``--split``, or
DAVIS sequences).

    python scripts/evaluate_pspnet.py --davis ../shared/data/davis2016 --sequences libby,motocross-jump,paragliding-launch
    python scripts/evaluate_pspnet.py ../shared/data/human_seg --split dev --flip --scales 0.75 1 1.25
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from cascadepsp.evaluation.evaluate import evaluate_pairs, report
from cascadepsp.io.splits import add_selection_arguments, selected_samples
from pspnet import PSPNetSegmenter
from pspnet.config import check_threshold
from pspnet.postprocess import check_component_fraction

METHOD = "pspnet"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_selection_arguments(p)
    p.add_argument("--weights", default="default", help="PSPNet .safetensors or 'default'")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    p.add_argument("--base-size", type=int, default=None, help="long side to predict at (default: the model's)")
    p.add_argument("--crop", type=int, default=None, help="sliding-window size (default: the model's)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored prediction")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="multi-scale test, long sides as multiples of the base size (default: the model's)")
    p.add_argument("--threshold", type=float, default=None,
                   help="foreground probability threshold (default: the model's)")
    p.add_argument("--min-component-fraction", type=float, default=None,
                   help="drop mask regions smaller than this fraction of the largest (default: the model's; 0: off)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--out-csv", default=None, help="write per-image metrics here")
    p.add_argument("--out-json", default=None, help="write the summary and the command here")
    args = p.parse_args(argv)
    if not (args.davis or args.dir):
        p.error("give a folder or --davis")
    if args.threshold is not None:
        try:
            check_threshold(args.threshold)
        except ValueError as e:
            p.error(f"--{e}")
    if args.min_component_fraction is not None:
        try:
            check_component_fraction(args.min_component_fraction)
        except ValueError as e:
            p.error(f"--{e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        segmenter = PSPNetSegmenter(args.weights, device=args.device, base_size=args.base_size, crop=args.crop,
                                    flip=args.flip, scales=args.scales, threshold=args.threshold,
                                    min_component_fraction=args.min_component_fraction)
    except ValueError as e:  # e.g. a PSPNet with more than two classes
        p.error(f"--weights: {e}")

    def segment(image: np.ndarray, _coarse: np.ndarray) -> np.ndarray:
        return segmenter.predict_mask(image)

    results = evaluate_pairs(selected_samples(args), {METHOD: segment}, limit=args.limit,
                             progress=sys.stderr.isatty())
    report(results, args.out_csv, args.out_json, command=" ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
