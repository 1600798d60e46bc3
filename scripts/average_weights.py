#!/usr/bin/env python
"""Average the weights of several refiner or PSPNet .safetensors files of one architecture (e.g. checkpoints
late in one training run, as in stochastic weight averaging), and record which files went in.

    python scripts/average_weights.py runs/psp_P1_avg3.safetensors runs/psp_P1/step_800.safetensors \\
        runs/psp_P1/step_1000.safetensors runs/psp_P1/step_1274.safetensors

The output is fp32 with the last file's config (its prediction geometry, for a PSPNet); package it with
scripts/package_weights.py to ship it.
"""

from __future__ import annotations

import argparse
import sys

from cascadepsp.weights.files import average_weights, save_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="where to write the averaged .safetensors")
    p.add_argument("inputs", nargs="+", help="two or more weight files of the same architecture")
    a = p.parse_args(argv)
    try:
        state, config, fmt = average_weights(a.inputs)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    out = save_weights(state, a.out, model_format=fmt, config=config,
                       metadata={"averaged_from": " ".join(a.inputs)})
    print(f"averaged {len(a.inputs)} files -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
