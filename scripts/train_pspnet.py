#!/usr/bin/env python
"""Train a PSPNet segmenter on folders of image + mask (DAVIS layout, <name>_im/_gt pairs, images/ + masks/).

Resumes from OUT/ckpt_last.pt when present; --max-minutes stops cleanly with a checkpoint, so re-running the same
command continues the schedule. Writes OUT/final.safetensors (or step_N.safetensors when stopped early),
OUT/best.safetensors (best validation mIoU) and OUT/log.csv (the refiner trainer's format).
"""

from __future__ import annotations

import argparse
import sys

import torch

from cascadepsp.cli import RenamedOption
from pspnet.train import PSPNetTrainConfig, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="dataset root (repeat for several)")
    p.add_argument("--out", required=True, help="run folder for checkpoints, weights and the log")
    p.add_argument("--encoder", default="resnet18", help="segmentation_models_pytorch encoder name")
    p.add_argument("--no-pretrained", action="store_true",
                   help="random encoder init even where local ImageNet weights exist (timm-tf_efficientnet_lite0)")
    p.add_argument("--init", metavar="FILE",
                   help="warm start from one of our PSPNet .safetensors of the same architecture (e.g. "
                        "pspnet/weights/pspnet_fg.safetensors) with a new schedule; --resume-style continuation "
                        "of a run uses OUT/ckpt_last.pt instead")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--mask-mode", choices=("binary", "labels"), default="binary")
    p.add_argument("--head-channels", type=int, default=512, help="width of the 3x3 conv after pyramid pooling")
    p.add_argument("--crop", type=int, default=320)
    p.add_argument("--base-size", type=int, default=512, help="long side images are scaled to before augmenting")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch", action=RenamedOption, new="--batch-size")
    p.add_argument("--iterations", type=int, default=2000, help="length of the poly schedule")
    p.add_argument("--iters", action=RenamedOption, new="--iterations")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--val-every", type=int, default=0, help="validate every N steps (0: at the end only)")
    p.add_argument("--val-items", type=int, default=60, help="validation images (evenly spaced; 0: all)")
    p.add_argument("--val-max-images", action=RenamedOption, new="--val-items")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--keep-every", type=int, default=0,
                   help="also write OUT/step_N.safetensors every N steps (weights to average later; 0: off)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this long")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="stop (with a checkpoint) at this step; the poly schedule still spans --iterations")
    p.add_argument("--frame-step", type=int, default=1, help="use every n-th DAVIS frame")
    p.add_argument("--sequences", nargs="*", default=None, help="restrict DAVIS to these sequences")
    p.add_argument("--backgrounds", help="folder of object-free photos for copy-paste compositing")
    p.add_argument("--composite-prob", type=float, default=0.0,
                   help="chance to paste the training object onto a background photo or another training image")
    p.add_argument("--dev-sequences", type=int, default=3,
                   help="DAVIS training sequences held back as the dev set (the last ones in sorted order)")
    p.add_argument("--dev-fraction", type=float, default=0.1,
                   help="share of the other layouts' training images held back as the dev set")
    p.add_argument("--validate-on", choices=("dev", "val"), default="dev",
                   help="split read by validation during training (read val once, for the final weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT/ckpt_last.pt if present (default; --no-resume starts over)")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on GPU")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PSPNetTrainConfig(data=tuple(args.data), out_dir=args.out, encoder_name=args.encoder, classes=args.classes,
                      pretrained=not args.no_pretrained, init=args.init,
                      head_channels=args.head_channels,
                      mask_mode=args.mask_mode, crop_size=args.crop, base_size=args.base_size,
                      batch_size=args.batch_size, iterations=args.iterations, lr=args.lr, workers=args.workers,
                      val_every=args.val_every, val_max_items=args.val_items,
                      checkpoint_every=args.checkpoint_every, keep_every=args.keep_every, max_minutes=args.max_minutes,
                      stop_at_step=args.stop_at_step,
                      frame_step=args.frame_step, sequences=tuple(args.sequences) if args.sequences else None,
                      backgrounds=args.backgrounds, composite_prob=args.composite_prob,
                      dev_sequences=args.dev_sequences, dev_fraction=args.dev_fraction, validate_on=args.validate_on,
                      seed=args.seed, device=args.device, resume=args.resume, amp=not args.no_amp)
    result = train(cfg)
    state = "stopped early" if result.stopped_early else "finished"
    print(f"{state} at step {result.step}/{cfg.iterations}; checkpoint {result.checkpoint}; weights {result.weights}")
    if result.validations:
        print(f"last validation mIoU {result.validations[-1]['miou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
