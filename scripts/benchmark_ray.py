#!/usr/bin/env python
"""Throughput of the folder tool: the plain run against Ray Data runs with 1 and 2 local actors.

Builds an original-layout folder of DAVIS frames that have a U2-Netp coarse mask (symbolic links), refines it
with each configuration into a fresh output folder and prints a table: wall time including Ray's start and the
actors' model loading, and images per second. Every configuration uses the same number of CPU threads in all.

    python scripts/benchmark_ray.py --davis ../shared/data/davis2016 --count 24
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cascadepsp import Refiner
from cascadepsp.jobs.distributed import refine_dataset
from cascadepsp.jobs.folder import refine_folder


def build_folder(davis: Path, count: int, dest: Path) -> int:
    """Links ``<seq>_<frame>_im.jpg`` / ``_seg.png`` for the first ``count`` coarse masks (sorted)."""
    masks = sorted((davis / "coarse_u2netp").glob("*/*.png"))[:count]
    if not masks:
        raise SystemExit(f"error: no coarse masks under {davis / 'coarse_u2netp'}")
    dest.mkdir(parents=True, exist_ok=True)
    for m in masks:
        seq, frame = m.parent.name, m.stem
        os.symlink(davis / "JPEGImages" / seq / f"{frame}.jpg", dest / f"{seq}_{frame}_im.jpg")
        os.symlink(m, dest / f"{seq}_{frame}_seg.png")
    return len(masks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--davis", required=True, help="DAVIS root with coarse_u2netp/ (e.g. ../shared/data/davis2016)")
    p.add_argument("--count", type=int, default=24, help="images to refine")
    p.add_argument("--cpus", type=int, default=2, help="CPU threads in all, for every configuration")
    p.add_argument("--weights", default="default")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        n = build_folder(Path(a.davis).resolve(), a.count, src)
        torch.set_num_threads(a.cpus)
        t0 = time.perf_counter()
        s = refine_folder([src], Path(tmp) / "plain", refiner=Refiner(device="cpu", weights=a.weights),
                          progress=False)
        rows.append(("plain (1 process)", f"{a.cpus} threads", time.perf_counter() - t0, s))
        for actors in (1, 2):
            cpus = a.cpus / actors
            t0 = time.perf_counter()
            s = refine_dataset([src], Path(tmp) / f"ray{actors}", actors=actors, cpus_per_actor=cpus,
                               weights=a.weights, progress=False)
            rows.append((f"ray, {actors} actor{'s' if actors > 1 else ''}", f"{cpus:g} CPU / actor",
                         time.perf_counter() - t0, s))
    print(f"\n{n} images (DAVIS 854x480 with U2-Netp masks), {a.cpus} CPU threads in all, weights {a.weights}\n")
    print("| run | resources | wall s (incl. start) | images / s | done | failed |")
    print("|---|---|---|---|---|---|")
    for name, res, wall, s in rows:
        print(f"| {name} | {res} | {wall:.1f} | {s.count('done') / wall:.3f} | {s.count('done')} | "
              f"{s.count('failed')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
