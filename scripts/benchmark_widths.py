#!/usr/bin/env python
"""Cost split of one local-step window (trunk passes vs decoder) for several decoder widths of a preset.

A local-step window runs the trunk (encoder + PSP) twice and the decoder once at full resolution; this
prints, per width choice, the GFLOP of each part (counted by torch's FlopCounterMode) and measured seconds
on this machine, so the widths can be chosen against the speed budget.

    python scripts/benchmark_widths.py --preset lite0 --widths 128,64,32 64,32,16 48,24,12 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cascadepsp import count_parameters, create_model, get_config


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="lite0")
    p.add_argument("--widths", nargs="+", default=["128,64,32", "64,32,16", "48,24,12"],
                   help="up_1,up_2,up_3 channel triples; psp_out is set to 2 x up_1")
    p.add_argument("--window", type=int, default=904)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"| decoder widths | PSP out | parameters | trunk GFLOP (2 passes) | decoder GFLOP | trunk s | "
          f"window s (trunk + decoder) | decoder share of time |\n|{'---|' * 8}")
    n = a.window
    x = torch.randn(1, 3, n, n).contiguous(memory_format=torch.channels_last)
    seg = torch.rand(1, 1, n, n) * 2 - 1
    for spec in a.widths:
        ups = tuple(int(v) for v in spec.split(","))
        cfg = dataclasses.replace(get_config(a.preset), up_channels=ups, psp_out=2 * ups[0])
        model = create_model(cfg).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            def trunk(m: torch.nn.Module = model) -> None:
                m._trunk(x, seg, seg, seg)
                m._trunk(x, seg, seg, seg)

            def window(m: torch.nn.Module = model) -> None:
                m(x, seg, seg)  # inter_s8 given: passes 2 and 3, as in the local step

            g_trunk, g_all = _gflop(trunk), _gflop(window)
            t_trunk, t_all = _best_of(trunk, a.repeats), _best_of(window, a.repeats)
        print(f"| {spec} | {cfg.psp_out} | {count_parameters(model) / 1e6:.2f} M | {g_trunk:.1f} | "
              f"{g_all - g_trunk:.1f} | {t_trunk:.2f} | {t_all:.2f} | {100 * (1 - t_trunk / t_all):.0f} % |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
