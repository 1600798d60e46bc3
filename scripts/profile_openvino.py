#!/usr/bin/env python
"""Per-part time of one cached OpenVINO graph (the CPU plugin's per-layer counters), to see where a window's
time goes before optimising it.

    python scripts/profile_openvino.py ~/.cache/cascadepsp/openvino/<key> window --size 904 904 --threads 2
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import numpy as np

PARTS = ("guided", "feats", "psp", "up_1", "up_2", "up_3", "final")  # module names in the exported graphs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("entry", help="a cache entry folder (holds global.xml / window.xml)")
    p.add_argument("graph", choices=["global", "window"])
    p.add_argument("--size", type=int, nargs=2, default=[904, 904], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hint", default="f32", help="INFERENCE_PRECISION_HINT (f32, bf16)")
    p.add_argument("--top", type=int, default=12, help="how many (part, layer type, kernel) rows to print")
    a = p.parse_args(argv)
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(f"{a.entry}/{a.graph}.xml"), "CPU", {
        "PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": a.threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": a.hint})
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feed = {port.get_any_name(): rng.random((1, 3 if port.get_any_name() == "image" else 1, *a.size), np.float32)
            for port in compiled.inputs}
    for _ in range(3):  # the last of three runs is reported
        t0 = time.perf_counter()
        request.infer(feed)
        seconds = time.perf_counter() - t0
    by_part: collections.Counter[str] = collections.Counter()
    by_kernel: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for info in request.get_profiling_info():
        part = next((k for k in PARTS if f"/{k}" in info.node_name), "other")
        by_part[part] += info.real_time.total_seconds()
        by_kernel[(part, info.node_type, info.exec_type)] += info.real_time.total_seconds()
    total = sum(by_part.values()) or 1.0
    print(f"{a.graph} {a.size[0]}x{a.size[1]} {a.hint}: {seconds:.3f} s")
    print("| part | seconds | share |\n|---|---|---|")
    for part, s in by_part.most_common():
        print(f"| {part} | {s:.3f} | {100 * s / total:.0f} % |")
    print("\n| part | layer | kernel | seconds |\n|---|---|---|---|")
    for (part, node_type, kernel), s in by_kernel.most_common(a.top):
        print(f"| {part} | {node_type} | {kernel} | {s:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
