#!/usr/bin/env python
"""Write the model card of a weights file (refiner or PSPNet) from its own metadata.

    python scripts/model_card.py cascadepsp/weights/cascadepsp_lite1_guided.safetensors --name default \\
        --out docs/models/refiner_default.md
"""

from __future__ import annotations

import argparse
import sys

from cascadepsp.evaluation.model_card import render_model_card
from cascadepsp.io.atomic import write_atomic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", help="a .safetensors file of ours")
    p.add_argument("--name", help="the name it ships under (default: the file's stem)")
    p.add_argument("--out", help="write here (default: print)")
    a = p.parse_args(argv)
    card = render_model_card(a.weights, a.name)
    if a.out:
        write_atomic(a.out, card.encode())
        print(f"wrote {a.out}")
    else:
        print(card, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
