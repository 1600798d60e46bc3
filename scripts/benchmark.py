"""Speed / memory benchmark of the refiner: engines (reference, batched), backends (torch, openvino) and
precisions, per image size, on CPU and GPU.

Each measurement runs in a fresh subprocess so peak RSS is that run's own. Prints a Markdown table. A mode is
``reference``, ``batched``, ``batched+compile`` or ``openvino``, optionally with a precision after a colon
(``batched:bf16``, ``openvino:bf16``, ``openvino:int8``). The openvino rows run the batched engine twice, each
in a fresh process with the row's own cache: first empty ("setup" is the one-time conversion, and for int8
the calibration and quantisation), then warm ("setup" is loading it; the timed run is this one). "IoU vs
fp32" compares each binarised mask with the fp32 batched torch row's (or the reference row's).

    python scripts/benchmark.py --data ../shared/data --sizes 1k 2k 4k 8k --devices cpu
    python scripts/benchmark.py --data ../shared/data --sizes 2k --modes batched batched:bf16 openvino \
        openvino:bf16 openvino:int8 --threads 2 --warm
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cascadepsp.constants import LOCAL_STEPS
from cascadepsp.constants import PRECISIONS as REFINER_PRECISIONS

SIZES = {"1k": (1024, 768), "2k": (2048, 1536), "4k": (4096, 3072), "8k": (8000, 6000), "12k": (12000, 9000),
         "8k_uhd": (7680, 4320), "16k_uhd": (15360, 8640)}


def make_input(size: str, data: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The aeroplane photo + coarse mask from ../shared/data/highres resized to the size, else a synthetic scene."""
    import cv2

    w, h = SIZES[size]
    src = data / "highres" / "aeroplane_im.jpg" if data else None
    if src is not None and src.is_file():
        im = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB)
        seg = cv2.imread(str(data / "highres" / "aeroplane_seg.png"), cv2.IMREAD_GRAYSCALE)
        im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA if w < im.shape[1] else cv2.INTER_CUBIC)
        seg = cv2.resize(seg, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
        return im, seg, "highres/aeroplane"
    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[:h, :w]
    seg = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1
    im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return im, seg, "synthetic"


def run_one(args: argparse.Namespace) -> None:
    """Child process: one refinement, prints a JSON line with time and memory, saves the output."""
    import torch

    import cascadepsp

    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else None
    im, seg, source = make_input(args.size, data)
    torch.manual_seed(0)  # "random:<preset>" weights must be the same in every child process
    weights = cascadepsp.create_model(args.weights[len("random:"):]) if args.weights.startswith("random:") \
        else args.weights
    mode = args.mode.split(":")[0]
    engine, compiled = ("batched", True) if mode == "batched+compile" else (mode, False)
    backend = "torch"
    if mode == "openvino":
        engine, backend = "batched", "openvino"
    t_setup = time.perf_counter()
    refiner = cascadepsp.Refiner(device=args.device, weights=weights, engine=engine,
                                 precision=args.precision, compile=compiled, backend=backend,
                                 cache_dir=args.cache, local_step=args.local_step)
    setup = time.perf_counter() - t_setup
    dev = refiner.device
    small_im, small_seg, _ = make_input("1k", data)
    refiner.refine(small_im[:256, :256], small_seg[:256, :256], fast=True, L=256)  # warm-up
    first = None
    if compiled or args.warm:  # pay one-time costs (compile, first-shape setup) on the real image, time a second run
        t0 = time.perf_counter()
        refiner.refine(im, seg, fast=args.global_only, L=args.L)
        first = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = refiner.refine(im, seg, fast=args.global_only, L=args.L)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rss_before_mb": rss_before / 1024, "source": source, "device": str(dev), "first_seconds": first,
              "setup_seconds": setup,
              "gpu_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
    np.save(args.save, out)
    print("RESULT " + json.dumps(result), flush=True)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, int, float]:
    """Share of pixels that differ by more than 1/255, the largest difference (in 1/255 units), and the IoU of
    the two masks binarised at 128."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    fa, fb = a >= 128, b >= 128
    union = int((fa | fb).sum())
    return float((d > 1).mean()), int(d.max()), float((fa & fb).sum() / union) if union else 1.0


MODES = ("reference", "batched", "batched+compile", "openvino")
PRECISIONS = tuple(p for p in REFINER_PRECISIONS if p != "auto")


def mode_spec(text: str) -> str:
    mode, _, precision = text.partition(":")
    if mode not in MODES or (precision and precision not in PRECISIONS):
        raise argparse.ArgumentTypeError(f"expected one of {MODES}, optionally :<{'|'.join(PRECISIONS)}>, got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="../shared/data (uses highres/aeroplane); synthetic if absent")
    p.add_argument("--sizes", nargs="+", default=["1k", "2k", "4k"], choices=list(SIZES))
    p.add_argument("--devices", nargs="+", default=["cpu"])
    p.add_argument("--modes", nargs="+", default=["reference", "batched"], type=mode_spec,
                   help="reference / batched: torch engines; batched+compile: torch.compile'd windows, timed after "
                        "a first (compiling) run; openvino: the batched engine on the OpenVINO backend (cold, then "
                        "warm cache); each optionally :fp32/:bf16/:fp16/:int8 (int8: openvino only)")
    p.add_argument("--reference-sizes", nargs="*", default=None,
                   help="sizes on which to also run the reference path (default: all)")
    p.add_argument("--global-only", action="store_true", help="benchmark fast=True (global step only)")
    p.add_argument("--gpu-precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--weights", default="default", help='weights, or "random:<preset>"')
    p.add_argument("--L", type=int, default=900)
    p.add_argument("--local-step", choices=LOCAL_STEPS, default=None,
                   help="how every row's local step runs a window (default: the weights' setting)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--warm", action="store_true",
                   help="time a second refinement of the same photo in each process (steady state, as in a folder "
                        "of same-size photos); the first run's time is shown beside the engine")
    p.add_argument("--out-md", default=None, help="also write the table here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_one(args)
        return 0

    rows = []
    header = ("| device | size | engine | backend | precision | setup (s) | time (s) | vs batched torch | "
              "peak RSS (MB) | peak GPU (MB) | pixels off by >1/255 | max diff | IoU vs fp32 |")
    print(header + "\n|" + "---|" * 13, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for device in args.devices:
            for size in args.sizes:
                outputs, times = {}, {}
                for spec in args.modes:
                    mode, _, precision = spec.partition(":")
                    if mode == "reference" and args.reference_sizes is not None and size not in args.reference_sizes:
                        continue
                    if not precision:
                        precision = args.gpu_precision if (mode != "reference" and device.startswith("cuda")) \
                            else "fp32"
                    # empty: each row's first child converts (and calibrates), so its setup is the first-use cost
                    cache = str(Path(tmp) / f"openvino_{device}_{size}_{spec}")
                    save = str(Path(tmp) / f"{device}_{size}_{spec}.npy")
                    cmd = [sys.executable, __file__, "--child", "--size", size, "--device", device, "--mode", spec,
                           "--precision", precision, "--save", save, "--weights", args.weights, "--L", str(args.L),
                           "--threads", str(args.threads), "--cache", cache]
                    if args.warm:
                        cmd.append("--warm")
                    if args.data:
                        cmd += ["--data", args.data]
                    if args.global_only:
                        cmd.append("--global-only")
                    if args.local_step:
                        cmd += ["--local-step", args.local_step]
                    runs = 2 if mode == "openvino" else 1  # cold cache (conversion), then warm cache (timed)
                    setups, res = [], None
                    for _ in range(runs):
                        proc = subprocess.run(cmd, capture_output=True, text=True)
                        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                        if proc.returncode != 0 or line is None:
                            print(f"| {device} | {size} | {spec} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
                            res = None
                            break
                        res = json.loads(line[len("RESULT "):])
                        setups.append(res["setup_seconds"])
                    if res is None:
                        continue
                    outputs[spec], times[spec] = np.load(save), res["seconds"]
                    speed = times["batched"] / res["seconds"] if "batched" in times and spec != "batched" else None
                    base = next((b for b in ("batched", "batched:fp32", "reference") if b in outputs), None)
                    off, mx, iou = agreement(outputs[base], outputs[spec]) if base and spec != base \
                        else (None, None, None)
                    gpu = res["gpu_peak_mb"]
                    engine = {"openvino": "batched"}.get(mode, mode)
                    if res["first_seconds"] is not None:
                        engine += f" (first run {res['first_seconds']:.0f} s)"
                    setup = " / ".join(f"{t:.1f}" for t in setups) if mode == "openvino" else f"{setups[0]:.1f}"
                    cells = [device, f"{size} ({SIZES[size][0]}x{SIZES[size][1]})", engine,
                             "openvino" if mode == "openvino" else "torch", precision, setup,
                             f"{res['seconds']:.1f}", "" if speed is None else f"{speed:.2f}x",
                             f"{res['peak_rss_mb']:.0f}", "" if gpu is None else f"{gpu:.0f}",
                             "" if off is None else f"{100 * off:.4f}%", "" if mx is None else str(mx),
                             "" if iou is None else f"{iou:.4f}"]
                    row = "| " + " | ".join(cells) + " |"
                    rows.append(row)
                    print(row, flush=True)
    if args.out_md:
        Path(args.out_md).write_text(header + "\n|" + "---|" * 13 + "\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
