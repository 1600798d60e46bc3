#!/usr/bin/env python
"""Grow a trained refiner into a deeper encoder of its family (e.g. lite0_guided -> lite1_guided) that
computes the same masks at the start, as a warm start for training the deeper network (`--init`).

    git show fe574a7:cascadepsp/weights/cascadepsp_lite0_guided.safetensors > lite0_guided_JK.safetensors
    python scripts/deepen_refiner.py lite0_guided_JK.safetensors lite1_guided runs/lite1_from_JK.safetensors

(JK, the Lite0 default before the bundled Lite1 one, which was grown from it this way.)

The extra blocks start from ImageNet (needs the `train` extra) with their last batch norm zeroed.
"""

from __future__ import annotations

import argparse
import sys

from cascadepsp.models.config import PRESETS
from cascadepsp.weights.deepen import deepen_model
from cascadepsp.weights.registry import load_safetensors_model, save_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a trained refiner .safetensors")
    p.add_argument("preset", choices=sorted(PRESETS), help="the deeper architecture")
    p.add_argument("out", help="where to write the grown .safetensors")
    a = p.parse_args(argv)
    try:
        source, _ = load_safetensors_model(a.source)
        model = deepen_model(source, PRESETS[a.preset].backbone)
    except (ValueError, FileNotFoundError, ImportError) as e:
        p.error(str(e))
    out = save_model(model, a.out, metadata={"deepened_from": a.source})
    print(f"{a.source} ({source.config.backbone}) -> {out} ({model.config.backbone})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
