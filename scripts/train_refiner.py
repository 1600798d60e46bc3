#!/usr/bin/env python
"""Train a CascadePSP refinement module (thin command line over :class:`cascadepsp.training.trainer.TrainConfig`).

Example (CPU smoke run):
    python scripts/train_refiner.py --human-seg ../shared/data/human_seg --davis ../shared/data/davis2016 \
        --backgrounds ../shared/data/backgrounds --preset resnet18 --iterations 20 --batch-size 8 --out runs/smoke

Re-running the same command continues from ``<out>/ckpt_last.pt`` exactly (``--no-resume`` starts over).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from cascadepsp.cli import RenamedOption
from cascadepsp.models.config import PRESETS
from cascadepsp.training.trainer import CHECKPOINT_NAME, SOURCES, TrainConfig, Trainer, config_replace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--human-seg", help="folder of <name>_im.jpg / <name>_gt.png pairs")
    g.add_argument("--davis", help="DAVIS-layout folder (JPEGImages/, Annotations/)")
    g.add_argument("--backgrounds", help="folder of background photos for copy-paste compositing")
    g.add_argument("--duts", help="DUTS-TR folder (DUTS-TR-Image/, DUTS-TR-Mask/); "
                   f"{d.duts_dev_count} photos are held back as dev by name hash")
    g.add_argument("--duts-repeat", type=int, default=d.duts_repeat)
    g.add_argument("--duts-coarse-repeat", type=int, default=d.duts_coarse_repeat,
                   help="times each DUTS photo with a real coarse mask (coarse_pspnet/, make_pspnet_masks.py) "
                        "appears; needs --real-coarse-sources duts")
    g.add_argument("--davis-train", help="DAVIS-layout folder of training sequences only (DAVIS-2016 train); "
                   f"{', '.join(d.davis_train_dev_sequences)} are held back as dev")
    g.add_argument("--davis-val", nargs="*", help="DAVIS sequences held out for validation "
                   f"(default: the last {d.davis_n_val} in sorted order)")
    g.add_argument("--human-seg-repeat", type=int, default=d.human_seg_repeat)
    g.add_argument("--davis-repeat", type=int, default=d.davis_repeat,
                   help="weight of DAVIS frames (--davis and --davis-train) in the batches")
    g.add_argument("--max-side", type=int, default=d.max_side, help="cap on training image long side")
    g.add_argument("--composite-prob", type=float, default=d.augment.composite_prob)
    g.add_argument("--brightness", type=float, default=d.augment.brightness)
    g.add_argument("--contrast", type=float, default=d.augment.contrast)
    g.add_argument("--saturation", type=float, default=d.augment.saturation)
    g.add_argument("--real-coarse-prob", type=float, default=d.augment.real_coarse_prob,
                   help="chance to train on the source's real segmenter mask instead of a synthetic one")
    g.add_argument("--global-view-prob", type=float, default=d.augment.global_view_prob,
                   help="share of crops cut from the photo resized to long side --global-L as the global step "
                        "resizes it (small photos upsampled bicubically), coarse mask made before the resize")
    g.add_argument("--global-L", type=int, default=d.augment.global_L)
    g.add_argument("--lowres-prob", type=float, default=d.augment.lowres_prob,
                   help="share of synthetic coarse masks made like a low-resolution segmenter's (smooth, a few "
                        "px off; cascadepsp.training.perturb.lowres_mask) instead of the original's polygon/morphology")
    g.add_argument("--real-coarse-min-iou", type=float, default=d.augment.real_coarse_min_iou,
                   help="a real coarse mask with less IoU than this with the GT is replaced by a synthetic one")
    g.add_argument("--perturb-iou", type=float, nargs=2, metavar=("LO", "HI"),
                   default=list(d.augment.perturb.iou_range),
                   help="target IoU range of the synthetic perturbation (the original's 0.8 1.0; lower for the "
                        "weak masks of a poor segmenter)")
    g.add_argument("--real-coarse-sources", nargs="+", default=list(d.real_coarse_sources),
                   choices=SOURCES, help="sources whose real masks may be used as coarse input")
    g.add_argument("--davis-n-dev", type=int, default=d.davis_n_dev,
                   help="DAVIS training sequences held back as the dev set (the last ones in sorted order)")
    g.add_argument("--human-seg-dev-fraction", type=float, default=d.human_seg_dev_fraction,
                   help="share of the human_seg training photos held back as the dev set (0 with --davis-n-dev 0 "
                        "trains a final model on train + dev)")
    g.add_argument("--validate-on", choices=("dev", "val"), default=d.validate_on,
                   help="dev: a part held back from the training split (default); val: the validation split")
    g = p.add_argument_group("optimisation")
    g.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    g.add_argument("--residual", type=float, help="residual-output scale (0: plain head; default: the preset's)")
    g.add_argument("--no-pretrained", action="store_true", help="do not ImageNet-initialise an encoder backbone")
    g.add_argument("--init", metavar="FILE", help="warm start from one of our .safetensors refiners")
    g.add_argument("--iterations", type=int, default=d.iterations, help="length of the step schedule")
    g.add_argument("--iters", action=RenamedOption, new="--iterations")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--crop", type=int, default=d.augment.crop_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--boundary-weight", type=float, default=d.boundary_weight,
                   help="extra loss weight of pixels near the GT boundary (0: the original's loss)")
    g.add_argument("--boundary-radius", type=int, default=d.boundary_radius, help="boundary band radius, px")
    g.add_argument("--keep-weight", type=float, default=d.keep_weight,
                   help="do no harm: extra loss weight of pixels the coarse mask had right near its edge (0: off)")
    g.add_argument("--keep-radius", type=int, default=d.keep_radius, help="keep band radius around the coarse edge, px")
    g.add_argument("--keep-min-iou", type=float, default=d.keep_min_iou,
                   help="apply the keep weight only to crops whose coarse mask has at least this IoU with the GT")
    g.add_argument("--guided-lr-scale", type=float, default=d.guided_lr_scale,
                   help="learning-rate multiplier of the guided output stage (presets with guided_radius > 0)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 disables")
    g.add_argument("--no-amp", action="store_true", help="train in fp32 on CUDA too")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="training randomness (order, augmentation, init); the splits never depend on it")
    g = p.add_argument_group("runtime")
    g.add_argument("--out", default=d.out_dir)
    g.add_argument("--device")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loader processes")
    g.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    g.add_argument("--val-every", type=int, default=d.val_every)
    g.add_argument("--val-items", type=int, default=d.val_max_items, help="validation images per source")
    g.add_argument("--val-L", type=int, default=d.val_L)
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--ckpt-every", action=RenamedOption, new="--checkpoint-every")
    g.add_argument("--keep-every", type=int, default=d.keep_every,
                   help="also export step_<N>.safetensors every N steps (0: off)")
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--max-minutes", type=float, help="stop cleanly (checkpoint saved) within this budget")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help=f"continue from <out>/{CHECKPOINT_NAME} if present (default; --no-resume starts over)")
    g.add_argument("--export", metavar="PATH", help="export the model of <out>/ckpt_last.pt to PATH and exit")
    g.add_argument("--tensorboard", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_config(a: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(
        preset=a.preset, residual=a.residual, pretrained=not a.no_pretrained, init=a.init,
        validate_on=a.validate_on, real_coarse_sources=tuple(a.real_coarse_sources), davis_n_dev=a.davis_n_dev,
        human_seg_dev_fraction=a.human_seg_dev_fraction,
        boundary_weight=a.boundary_weight, boundary_radius=a.boundary_radius,
        keep_weight=a.keep_weight, keep_radius=a.keep_radius, keep_min_iou=a.keep_min_iou,
        guided_lr_scale=a.guided_lr_scale, human_seg=a.human_seg, davis=a.davis, duts=a.duts,
        duts_repeat=a.duts_repeat, duts_coarse_repeat=a.duts_coarse_repeat, davis_train=a.davis_train,
        backgrounds=a.backgrounds,
        davis_val_sequences=tuple(a.davis_val) if a.davis_val else None, human_seg_repeat=a.human_seg_repeat, davis_repeat=a.davis_repeat,
        max_side=a.max_side, batch_size=a.batch_size, iterations=a.iterations, lr=a.lr, weight_decay=a.weight_decay,
        grad_clip=a.grad_clip, amp=not a.no_amp, seed=a.seed, device=a.device, workers=a.workers,
        threads=a.threads, out_dir=a.out, val_every=a.val_every, val_max_items=a.val_items, val_L=a.val_L,
        checkpoint_every=a.checkpoint_every, keep_every=a.keep_every, log_every=a.log_every, max_minutes=a.max_minutes, tensorboard=a.tensorboard,
        progress=not a.no_progress, resume=a.resume,
    )
    return config_replace(cfg, augment__crop_size=a.crop, augment__composite_prob=a.composite_prob,
                          augment__brightness=a.brightness, augment__contrast=a.contrast,
                          augment__saturation=a.saturation, augment__real_coarse_prob=a.real_coarse_prob,
                          augment__lowres_prob=a.lowres_prob, augment__global_view_prob=a.global_view_prob,
                          augment__global_L=a.global_L, augment__real_coarse_min_iou=a.real_coarse_min_iou,
                          augment__perturb=dataclasses.replace(cfg.augment.perturb, iou_range=tuple(a.perturb_iou)))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not (a.human_seg or a.davis or a.duts or a.davis_train):
        print("error: give at least one of --human-seg, --davis, --duts, --davis-train", file=sys.stderr)
        return 2
    cfg = build_config(a)
    trainer = Trainer(cfg)
    print(json.dumps(trainer.data.summary, indent=1))
    if a.export:
        if not trainer.resume():
            print(f"error: --export needs a checkpoint, found none at {trainer.ckpt_path}", file=sys.stderr)
            return 2
        print(f"exported {trainer.export(a.export)} (step {trainer.step})")
        return 0
    if a.resume and trainer.resume():
        print(f"resumed from {trainer.ckpt_path} at step {trainer.step}")
    (Path(cfg.out_dir) / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1,
                                                                    default=str))
    result = trainer.run()
    losses = result.pop("losses")
    result["last_loss"] = losses[-1] if losses else None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
