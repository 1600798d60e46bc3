#!/usr/bin/env python
"""Score a refiner on the dev sets (scripts/make_dev_sets.py): a table per source, kind of coarse mask and
subset (small photos), with the guided-filter baseline and the do-no-harm edit band at several widths.

The refiner runs once per image; every band width is applied to that one probability map
(``cascadepsp.inference.reference.confine_to_band``), so a sweep costs no more than one run.

    python scripts/evaluate_dev.py runs/dev --weights default --bands 0.02,0.05 --out-json runs/dev_default.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cascadepsp.constants import BACKENDS, LOCAL_STEPS, PRECISIONS
from cascadepsp.deploy.quantize import QuantizationSettings
from cascadepsp.evaluation.baselines import BASELINES
from cascadepsp.evaluation.evaluate import REFINER, evaluate_sets, find_triplets, format_sets_table
from cascadepsp.inference.reference import confine_to_band
from cascadepsp.inference.refiner import Refiner
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.inputs import to_binary_mask
from cascadepsp.io.splits import evenly_spaced


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder of dev sets (one sub-folder of <name>_im / _seg / _gt triplets per set)")
    p.add_argument("--weights", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="Refiner precision (int8: openvino only)")
    p.add_argument("--threads", type=int, help="CPU threads (torch and OpenVINO)")
    p.add_argument("--int8-settings", help="JSON of QuantizationSettings fields replacing the shipped ones "
                                           "(candidates for cascadepsp/deploy/quantize.py, compared on dev)")
    p.add_argument("--second-pass-iou", type=float, help="replaces the weights' second-pass threshold "
                                                          "(RMConfig.second_pass_iou; candidates, compared on dev)")
    p.add_argument("--local-step", choices=LOCAL_STEPS, help="replaces how the weights' local step runs a "
                                                              "window (RMConfig.local_step)")
    p.add_argument("--sets", help="comma-separated set names (default: every sub-folder)")
    p.add_argument("--limit", type=int, help="at most N evenly spaced photos per set (quick comparisons)")
    p.add_argument("--bands", default="", help="comma-separated edit-band widths to try (fractions of (H+W)/2)")
    p.add_argument("--baselines", default="guided", help="comma-separated baselines ('' for none)")
    p.add_argument("--out-json", help="write the scores and the command here")
    return p.parse_args(argv)


def band_methods(refiner: Refiner, bands: list[float]) -> dict[str, object]:
    """The refiner as shipped (its own edit band), unconfined, and at each band width, from one run per image."""
    own = refiner.edit_band
    refiner.edit_band = 0.0
    last: dict[str, object] = {}

    def prob(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if last.get("mask") is not mask:  # the methods of one image are called in turn with the same arrays
            last.update(mask=mask, prob=refiner.refine_probability(image, mask))
        return last["prob"]

    def with_band(fraction: float):
        def run(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
            p = confine_to_band(prob(image, mask), to_binary_mask(mask), fraction)
            return (p * 255).astype(np.uint8)
        return run

    methods = {REFINER: with_band(own)}
    if own > 0:
        methods["unconfined"] = with_band(0.0)
    for b in bands:
        if b != own:
            methods[f"band {b:g}"] = with_band(b)
    return methods


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    root = Path(a.root)
    names = a.sets.split(",") if a.sets else sorted(p.name for p in root.iterdir() if p.is_dir())
    sets = {}
    for name in names:
        samples = find_triplets(root / name)
        sets[name] = evenly_spaced(samples, a.limit)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    quantization = QuantizationSettings.from_dict(json.loads(a.int8_settings)) if a.int8_settings else None
    refiner = Refiner(device=a.device, weights=a.weights, backend=a.backend, precision=a.precision,
                      quantization=quantization, second_pass_iou=a.second_pass_iou,
                      local_step=a.local_step)
    methods = band_methods(refiner, [float(b) for b in a.bands.split(",") if b])
    for b in (x for x in a.baselines.split(",") if x):
        methods[b] = BASELINES[b]
    scores = evaluate_sets(sets, methods, progress=sys.stderr.isatty())
    print(format_sets_table(scores))
    if a.out_json:
        doc = {"command": " ".join(sys.argv), "weights": str(a.weights), "scores": scores}
        write_atomic(a.out_json, json.dumps(doc, indent=1, sort_keys=True).encode())
        print(f"scores: {a.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
