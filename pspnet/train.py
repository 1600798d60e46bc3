"""PSPNet training: SGD + poly lr (10x on the heads), main + 0.4 x aux cross-entropy, checkpoints with resume,
bf16 autocast on GPU, and a validation loop that reports mIoU on full images.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cascadepsp.configs import JsonConfig
from cascadepsp.devices import resolve_device
from cascadepsp.io.atomic import write_atomic
from cascadepsp.training import runfiles
from cascadepsp.training.data import load_backgrounds
from cascadepsp.weights.files import INFERENCE_CONFIG_KEYS
from cascadepsp.weights.imagenet import SOURCES as PRETRAINED_SOURCES
from cascadepsp.weights.imagenet import load_imagenet_encoder

from .augment import SegAugmentConfig
from .config import PSPNetConfig
from .data import Sample, SegmentationDataset, find_samples
from .evaluate import evaluate
from .losses import segmentation_loss
from .model import PSPNet
from .schedule import build_optimizer, set_poly_lr
from .weights import load, save

CHECKPOINT_NAME = runfiles.CHECKPOINT_NAME
RESUME_MUST_MATCH = ("seed", "batch_size", "crop_size", "base_size", "mask_mode", "dev_sequences", "dev_fraction")  # data order and shapes
RESUME_SHOULD_MATCH = ("iterations", "lr", "data", "augment", "composite_prob", "backgrounds")
LEGACY_CHECKPOINT_NAME = "last.pt"  # runs started before the trainers shared their file names still resume
LOG_COLUMNS = ("step", "lr", "loss", "main", "aux", "time_s", "val_miou", "val_pixel_acc", "val_images")


@dataclass
class PSPNetTrainConfig(JsonConfig):
    """Everything one training run needs; stored in its checkpoints."""

    renamed_fields = {"iters": "iterations", "val_max_images": "val_max_items"}  # runs saved before 2026-12

    data: tuple[str, ...]
    out_dir: str
    encoder_name: str = "resnet18"
    pretrained: bool = True  # ImageNet-initialise the encoder when local weights exist for it
    init: str | None = None  # warm start from one of our PSPNet .safetensors (same architecture), e.g. the bundled
    classes: int = 2
    mask_mode: str = "binary"
    crop_size: int = 320
    base_size: int = 512
    batch_size: int = 8
    iterations: int = 2000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    head_lr_mult: float = 10.0
    aux_weight: float = 0.4
    dropout: float = 0.1
    head_channels: int = 512
    aux_channels: int = 256
    workers: int = 2
    val_every: int = 0  # 0: validate only at the end
    val_at_end: bool = True
    val_max_items: int = 60  # evenly spaced subset of the validation images (0 = all)
    checkpoint_every: int = 100
    keep_every: int = 0  # also write step_N.safetensors every N steps, to average late weights (0: off)
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    stop_at_step: int | None = None  # stop early at this step; the schedule still spans ``iterations``
    seed: int = 0
    device: str | None = None
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    frame_step: int = 1  # take every n-th DAVIS frame
    sequences: tuple[str, ...] | None = None
    val_sequences: int = 3
    val_fraction: float = 0.2
    # A part held back from the training split for model selection (the refiner trainer's dev: DAVIS's last
    # 3 training sequences, 10 % of the other layouts' training names); validation during training reads it,
    # the validation split is read with validate_on="val" (once, for the final weights).
    dev_sequences: int = 3
    dev_fraction: float = 0.1
    validate_on: str = "dev"
    composite_prob: float = 0.0  # copy-paste a training object onto a background photo or another training image
    backgrounds: str | None = None  # folder of object-free photos for compositing
    resume: bool = True
    progress: bool = True
    augment: SegAugmentConfig = field(default_factory=SegAugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):
            self.data = (str(self.data),)
        self.data = tuple(str(d) for d in self.data)
        if not self.data:
            raise ValueError("data: expected at least one dataset root")
        if self.classes < 2:
            raise ValueError(f"classes: training uses softmax cross-entropy, expected >= 2, got {self.classes}")
        for name in ("batch_size", "iterations", "crop_size", "base_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.validate_on not in ("dev", "val"):
            raise ValueError(f"validate_on: expected 'dev' or 'val', got {self.validate_on!r}")
        if isinstance(self.augment, dict):
            aug = dict(self.augment)
            aug["scale"] = tuple(aug.get("scale", SegAugmentConfig.scale))
            self.augment = SegAugmentConfig(**aug)


    def model_config(self) -> PSPNetConfig:
        return PSPNetConfig(encoder_name=self.encoder_name, classes=self.classes, dropout=self.dropout,
                            head_channels=self.head_channels, aux_channels=self.aux_channels,
                            aux_weight=self.aux_weight, crop_size=self.crop_size, base_size=self.base_size)


def save_checkpoint(path: str | Path, model: PSPNet, optimizer: torch.optim.Optimizer, step: int,
                    cfg: PSPNetTrainConfig, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write model + optimizer + step + configs (:func:`cascadepsp.training.runfiles.save_checkpoint`)."""
    blob = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "model_config": model.config.to_dict(), "train_config": json.dumps(cfg.to_dict(), default=str),
            "extra": json.dumps(extra or {}), "torch_rng": torch.get_rng_state()}
    return runfiles.save_checkpoint(blob, path)


def load_checkpoint(path: str | Path, model: PSPNet, optimizer: torch.optim.Optimizer | None = None
                    ) -> dict[str, Any]:
    """Restore model (and optimizer) state from :func:`save_checkpoint`; returns the checkpoint dict."""
    blob = runfiles.load_checkpoint(path, weights_only=True)
    if PSPNetConfig.from_dict(blob["model_config"]) != model.config:
        raise ValueError(f"{path}: checkpoint model config {blob['model_config']} differs from the run's "
                         f"{model.config.to_dict()}")
    model.load_state_dict(blob["model"])
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if "torch_rng" in blob:
        torch.set_rng_state(blob["torch_rng"])
    blob["extra"] = json.loads(blob.get("extra", "{}"))
    return blob


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled index batches of one epoch (a pure function of seed and epoch, so resume can replay it)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    if n < batch_size:
        return [perm]
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n // batch_size)]


def _batches(dataset: SegmentationDataset, cfg: PSPNetTrainConfig, start_step: int, pin: bool
             ) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches, positioned at ``start_step`` (same epoch and offset as an uninterrupted run)."""
    n = len(dataset)
    per_epoch = len(epoch_batches(n, cfg.batch_size, cfg.seed, 0))
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        batches = epoch_batches(n, cfg.batch_size, cfg.seed, epoch)[skip:]
        skip = 0
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)  # worker seeds, not the global RNG
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers, generator=gen,
                            pin_memory=pin)
        yield from loader
        epoch += 1


@dataclass
class TrainResult:
    """What a run did: the last step, per-step history (``step``, ``lr``, ``loss``...), validations, files."""

    step: int
    history: list[dict[str, float]]
    validations: list[dict[str, Any]]
    checkpoint: Path
    weights: Path | None
    stopped_early: bool


def collect_samples(cfg: PSPNetTrainConfig, split: str) -> list[Sample]:
    samples: list[Sample] = []
    for root in cfg.data:
        samples += find_samples(root, split, sequences=cfg.sequences, val_sequences=cfg.val_sequences,
                                val_fraction=cfg.val_fraction, frame_step=cfg.frame_step,
                                dev_sequences=cfg.dev_sequences, dev_fraction=cfg.dev_fraction)
    return samples


def warm_start(model: PSPNet, path: str | os.PathLike) -> None:
    """Copy the weights of a saved PSPNet into ``model``; its architecture must be the same (prediction settings -
    crop, base size, threshold - may differ)."""
    source = load(path)
    mine, theirs = model.config.to_dict(), source.config.to_dict()
    differ = sorted(k for k in mine if k not in INFERENCE_CONFIG_KEYS and mine[k] != theirs.get(k))
    if differ:
        raise ValueError(f"init: {path} is a different PSPNet ({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}"
                         f"; this run has {', '.join(f'{k}={mine[k]!r}' for k in differ)})")
    model.load_state_dict(source.state_dict())


@runfiles.stop_signals_interrupt()  # kill PID stops like Ctrl-C: checkpoint and step_N weights kept
def train(cfg: PSPNetTrainConfig) -> TrainResult:
    """Train (or resume from ``out_dir/ckpt_last.pt``) until ``iterations``, ``stop_at_step`` or ``max_minutes``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_samples = collect_samples(cfg, "train")
    val_samples = collect_samples(cfg, cfg.validate_on)
    backgrounds = load_backgrounds(cfg.backgrounds) if cfg.backgrounds else []
    dataset = SegmentationDataset(train_samples, cfg.crop_size, cfg.base_size, cfg.mask_mode, cfg.augment,
                                  cfg.composite_prob, backgrounds)

    model = PSPNet(config=cfg.model_config())
    if cfg.init:
        warm_start(model, cfg.init)
    elif cfg.pretrained and cfg.encoder_name in PRETRAINED_SOURCES:
        load_imagenet_encoder(model.encoder, cfg.encoder_name)
    model = model.to(device)
    optimizer = build_optimizer(model, cfg)
    ckpt_path = out / CHECKPOINT_NAME
    step = 0
    best = {}
    resume_from = ckpt_path if ckpt_path.is_file() else out / LEGACY_CHECKPOINT_NAME
    if cfg.resume and resume_from.is_file():
        blob = load_checkpoint(resume_from, model, optimizer)
        runfiles.check_resume(PSPNetTrainConfig.upgrade_keys(json.loads(blob["train_config"])), cfg.to_dict(),
                              RESUME_MUST_MATCH, RESUME_SHOULD_MATCH)
        step = int(blob["step"])
        best = blob["extra"].get("best", {})
    log = runfiles.CsvLog(out / runfiles.LOG_NAME, LOG_COLUMNS)
    use_amp = cfg.amp and device.type == "cuda"
    batches = _batches(dataset, cfg, start_step=step, pin=device.type == "cuda")
    history: list[dict[str, float]] = []
    validations: list[dict[str, Any]] = []
    start = time.monotonic()
    stopped_early = False

    def validate() -> None:
        result = evaluate(model, val_samples, cfg.mask_mode, cfg.val_max_items, progress=cfg.progress)
        result["step"] = step
        validations.append(result)
        log.write({"step": step, "time_s": round(time.monotonic() - start, 2),
                   **{f"val_{k}": result[k] for k in ("miou", "pixel_acc", "images")}})
        tqdm.write(f"step {step}: val mIoU {result['miou']:.4f} on {result['images']} images "
                   f"(IoU per class {result['iou']})")
        if not best or result["miou"] > best.get("miou", -1.0):
            best.update(miou=result["miou"], step=step)
            save(model, out / "best.safetensors", metadata=_weights_meta(cfg, step, result))

    write_atomic(out / "config.json", json.dumps({"config": cfg.to_dict(), "train_images": len(train_samples),
                                                  "val_images": len(val_samples)}, indent=1, default=str).encode())
    bar = tqdm(total=cfg.iterations, initial=step, desc="train", disable=not cfg.progress, dynamic_ncols=True)
    model.train()
    try:
        while step < cfg.iterations:
            if cfg.stop_at_step is not None and step >= cfg.stop_at_step:
                stopped_early = True
                break
            if cfg.max_minutes is not None and time.monotonic() - start > 60.0 * cfg.max_minutes:
                stopped_early = True
                break
            lr = set_poly_lr(optimizer, cfg, step)
            images, target = next(batches)
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                outputs = model(images)
            loss, parts = segmentation_loss(outputs, target, cfg.aux_weight)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            record = {"step": step, "lr": lr, "loss": loss_value, **parts}
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            log.write({"time_s": round(time.monotonic() - start, 2), **record})
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint(ckpt_path, model, optimizer, step, cfg, {"best": best})
            if cfg.keep_every and step % cfg.keep_every == 0 and step < cfg.iterations:
                save(model, out / f"step_{step}.safetensors", metadata=_weights_meta(cfg, step, None))
            if cfg.val_every and step % cfg.val_every == 0 and val_samples:
                validate()
                model.train()
    except KeyboardInterrupt:  # Ctrl-C or kill: keep what was learned, like --max-minutes
        stopped_early = True
        warnings.warn(f"interrupted at step {step}; saving a checkpoint", stacklevel=2)
    finally:
        bar.close()
    finished = step >= cfg.iterations
    if finished and cfg.val_at_end and val_samples and not (validations and validations[-1]["step"] == step):
        validate()
    save_checkpoint(ckpt_path, model, optimizer, step, cfg, {"best": best})
    weights = save(model, out / ("final.safetensors" if finished else f"step_{step}.safetensors"),
                   metadata=_weights_meta(cfg, step, validations[-1] if validations else None))
    return TrainResult(step, history, validations, ckpt_path, weights, stopped_early)


def _weights_meta(cfg: PSPNetTrainConfig, step: int, val: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"step": step, "iterations": cfg.iterations, "data": list(cfg.data), "mask_mode": cfg.mask_mode,
                            "trainer": "pspnet.train"}
    if val is not None:
        meta["validated_on"] = cfg.validate_on
        meta["val_miou"] = val["miou"]
        meta["val_images"] = val["images"]
    return meta
