#!/usr/bin/env python
"""Speed / memory of PSPNet prediction (``pspnet.predict``) per photo size; prints a Markdown table.

Each size runs in a fresh subprocess (peak RSS is that run's own); the photo is the DAVIS example frame
shipped in ``examples/davis`` resized to each size, timed after one warm-up prediction.

    python scripts/benchmark_pspnet.py --sizes 1k 2k --threads 2 [--weights default]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"0.5k": (640, 480), "1k": (1024, 768), "2k": (2048, 1536), "4k": (4096, 3072)}
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "davis" / "soapbox_00060_im.jpg"


def run_one(args: argparse.Namespace) -> None:
    """Child process: one timed prediction, prints a JSON line."""
    import cv2
    import torch

    import pspnet

    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = SIZES[args.size]
    image = cv2.resize(cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    model = pspnet.load(args.weights).to(args.device).eval()
    with torch.inference_mode():
        pspnet.predict(image, model)  # warm-up (oneDNN primitive creation)
        t0 = time.perf_counter()
        _, mask = pspnet.predict(image, model)
        seconds = time.perf_counter() - t0
    cfg = model.config
    print("RESULT " + json.dumps({"seconds": seconds, "foreground": float(mask.mean()),
                                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "encoder": cfg.encoder_name, "base_size": cfg.base_size,
                                  "crop": cfg.crop_size}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["1k", "2k"], choices=list(SIZES))
    p.add_argument("--weights", default="default", help="'default' (bundled) or a PSPNet .safetensors")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_one(args)
        return 0
    print("| device | size | encoder | base size / crop | time (s) | peak RSS (MB) |\n|---|---|---|---|---|---|",
          flush=True)
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", "--size", size, "--weights", args.weights,
               "--device", args.device, "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"| {args.device} | {size} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(line[len("RESULT "):])
        print(f"| {args.device} | {size} ({SIZES[size][0]}x{SIZES[size][1]}) | {r['encoder']} | "
              f"{r['base_size']} / {r['crop']} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
