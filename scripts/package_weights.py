#!/usr/bin/env python
"""Package a trained refiner or PSPNet for shipping: fp16 safetensors with its training metadata plus the command
that trained it, its training log's path and the evaluation summaries that scored it (``--out-json`` of
evaluate.py / evaluate_pspnet.py). For a PSPNet, ``--base-size`` / ``--crop`` set the prediction geometry stored
with it, ``--threshold`` its foreground probability threshold, ``--min-component-fraction`` its mask clean-up and
``--scales`` its multi-scale test (chosen on the dev part with evaluate_pspnet.py).

    python scripts/package_weights.py runs/JM1/soup.safetensors \\
        cascadepsp/weights/cascadepsp_lite1_guided.safetensors --train-command "$(cat runs/M/command.txt)" \\
        --log docs/models/logs/lite1_guided_M_lowlr_log.csv --eval dev_davis=runs/JM1/dev_davis.json ...
    python scripts/package_weights.py runs/psp/final.safetensors pspnet/weights/pspnet_fg.safetensors --base-size 576
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pspnet
from cascadepsp.constants import LOCAL_STEPS
from cascadepsp.weights.files import read_metadata
from cascadepsp.weights.registry import load_safetensors_model, save_model

# metadata written by save_weights itself, not carried over
_OWN_KEYS = {"format", "config", "created"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a trained refiner or PSPNet .safetensors (e.g. a run's model_best.safetensors)")
    p.add_argument("dst", help="where to write the packaged fp16 file")
    p.add_argument("--train-command", default="", help="the command line that trained it")
    p.add_argument("--log", default="", help="path of the run's training log in the repository")
    p.add_argument("--eval", nargs="*", default=[], metavar="NAME=JSON",
                   help="evaluation summaries (evaluate.py --out-json) to record under their names")
    p.add_argument("--note", default="", help="a free-text note (e.g. how the file was chosen)")
    p.add_argument("--meta", nargs="*", default=[], metavar="KEY=TEXT",
                   help="more metadata to record as text (e.g. data=..., hardware=..., train_time_s=...)")
    p.add_argument("--edit-band", type=float, default=None,
                   help="refiner only: the do-no-harm edit band stored with it (RMConfig.edit_band; 0: off)")
    p.add_argument("--second-pass-iou", type=float, default=None,
                   help="refiner only: refine again when the result's IoU with the coarse mask is below this "
                        "(RMConfig.second_pass_iou; 0: one pass)")
    p.add_argument("--local-step", choices=LOCAL_STEPS, default=None,
                   help="refiner only: how the local step runs a window (RMConfig.local_step)")
    p.add_argument("--base-size", type=int, default=None, help="PSPNet only: long side to predict at")
    p.add_argument("--crop", type=int, default=None, help="PSPNet only: sliding-window size")
    p.add_argument("--threshold", type=float, default=None, help="PSPNet only: foreground probability threshold")
    p.add_argument("--min-component-fraction", type=float, default=None,
                   help="PSPNet only: drop mask regions smaller than this fraction of the largest (0: off)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="PSPNet only: multi-scale test, long sides as multiples of --base-size")
    a = p.parse_args(argv)
    source_meta = read_metadata(a.src)
    is_pspnet = source_meta.get("format") == pspnet.MODEL_FORMAT
    pspnet_options = (a.base_size, a.crop, a.threshold, a.min_component_fraction, a.scales)
    if not is_pspnet and any(v is not None for v in pspnet_options):
        p.error("--base-size / --crop / --threshold / --min-component-fraction / --scales apply to PSPNet weights only")
    recipe = {k: v for k, v in (("edit_band", a.edit_band), ("second_pass_iou", a.second_pass_iou),
                                ("local_step", a.local_step)) if v is not None}
    if is_pspnet and recipe:
        p.error("--edit-band / --second-pass-iou / --local-step apply to refiner weights only")
    meta = {k: v for k, v in source_meta.items() if k not in _OWN_KEYS}
    evaluation = {}
    for item in a.eval:
        name, sep, path = item.partition("=")
        if not sep:
            p.error(f"--eval: expected NAME=JSON, got {item!r}")
        evaluation[name] = json.loads(Path(path).read_text())
    for item in a.meta:
        key, sep, text = item.partition("=")
        if not sep or not key or key in _OWN_KEYS:
            p.error(f"--meta: expected KEY=TEXT with KEY not one of {sorted(_OWN_KEYS)}, got {item!r}")
        meta[key] = text
    meta.update({k: v for k, v in (("train_command", a.train_command), ("training_log", a.log),
                                   ("note", a.note)) if v})
    if evaluation:
        meta["evaluation"] = json.dumps(evaluation, sort_keys=True)
    if is_pspnet:
        model = pspnet.load(a.src)
        geometry = {k: v for k, v in (("base_size", a.base_size), ("crop_size", a.crop), ("threshold", a.threshold),
                                      ("min_component_fraction", a.min_component_fraction),
                                      ("scales", tuple(a.scales) if a.scales else None)) if v is not None}
        try:
            model.config = model.config.replace(**geometry)
        except ValueError as e:
            p.error(str(e))
        out = pspnet.save(model, a.dst, metadata=meta, half=True)
    else:
        model, _ = load_safetensors_model(a.src)
        try:
            model.config = dataclasses.replace(model.config, **recipe)
        except ValueError as e:
            p.error(str(e))
        out = save_model(model, a.dst, metadata=meta, half=True)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
