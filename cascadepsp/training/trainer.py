"""Trainer of the refinement module: the original recipe (Adam, step LR, six-slot loss) with exact resume.

The data order is a pure function of the global step (see :func:`cascadepsp.training.data.batch_keys`) and every
sample's augmentation a pure function of (seed, epoch, index), so a checkpoint only needs the model,
optimizer, scheduler and step to continue exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..configs import JsonConfig
from ..devices import resolve_device
from ..evaluation.metrics import SegMetrics
from ..inference.reference import image_to_tensor, mask_to_tensor, refine_single_pass
from ..io.layouts import Sample, davis_sequences
from ..io.splits import (
    DAVIS_TRAIN_DEV_SEQUENCES,
    DEV_FRACTION,
    DEV_SALT,
    DUTS_DEV_COUNT,
    VAL_FRACTION,
    hold_out_by_name,
    split_by_name,
    split_davis,
    split_dev_sequences,
)
from ..models.config import DEFAULT_PRESET, PRESETS, RMConfig, get_config
from ..models.refinement import RefinementModule
from ..weights.files import load_state_tolerant, load_weights
from ..weights.imagenet import load_imagenet_encoder
from ..weights.registry import MODEL_FORMAT, save_model
from . import data as D
from . import runfiles
from .losses import LOSS_PARTS, LossWeights, refinement_loss

CHECKPOINT_NAME = runfiles.CHECKPOINT_NAME
SOURCES = ("davis", "human_seg", "duts", "davis_train")  # names of the training data sources
RESUME_MUST_MATCH = ("preset", "residual", "seed", "split_seed", "batch_size", "crop_size")  # data, shapes
RESUME_SHOULD_MATCH = ("iterations", "lr", "milestones", "augment", "human_seg", "davis", "duts", "davis_train")


@dataclass
class TrainConfig(JsonConfig):
    """Everything a training run depends on; saved in checkpoints and in the exported weights' metadata."""

    renamed_fields = {"num_workers": "workers", "ckpt_every": "checkpoint_every"}  # runs saved before 2026-12

    preset: str = DEFAULT_PRESET
    residual: float | None = None  # override of the preset's residual-output scale (0 = plain head)
    pretrained: bool = True  # ImageNet-initialise an smp-encoder backbone (needs the `train` extra)
    init: str | None = None  # warm start: one of our .safetensors refiners with the same architecture
    # data
    human_seg: str | None = None  # folder of <name>_im.jpg / <name>_gt.png
    davis: str | None = None  # DAVIS-layout folder
    backgrounds: str | None = None  # folder of background photos for copy-paste
    # DUTS-TR (DUTS-TR-Image/ + DUTS-TR-Mask/): DUTS_DEV_COUNT photos held back as dev by name hash
    duts: str | None = None
    duts_dev_count: int = DUTS_DEV_COUNT
    duts_repeat: int = 1
    duts_coarse_repeat: int = 1  # DUTS photos with a real coarse mask appear this many times (they are few)
    # a DAVIS-layout folder of training sequences only (the DAVIS-2016 train set): every sequence trains,
    # but davis_train_dev_sequences are held back as dev (it has no validation split of its own)
    davis_train: str | None = None
    davis_train_dev_sequences: tuple[str, ...] = DAVIS_TRAIN_DEV_SEQUENCES
    davis_val_sequences: tuple[str, ...] | None = None  # default: the last `davis_n_val` in sorted order
    davis_n_val: int = 3
    human_seg_val_fraction: float = VAL_FRACTION
    # Validation during training reads a part held back from the *training* split ("dev"): DAVIS's last
    # `davis_n_dev` training sequences and `human_seg_dev_fraction` of the human_seg training photos, so
    # design choices never see the validation split. "val" validates on the validation split instead.
    validate_on: str = "dev"
    davis_n_dev: int = 3  # libby, motocross-jump, paragliding-launch with the default val split
    human_seg_dev_fraction: float = DEV_FRACTION
    # Sources whose real segmenter masks may replace the synthetic coarse input in training. human_seg's
    # U2-Netp masks are systematically too small for its matting GT, which teaches the net to grow masks.
    real_coarse_sources: tuple[str, ...] = ("davis", "human_seg")
    human_seg_repeat: int = 3  # human_seg photos are independent, DAVIS frames are not: weight them up
    davis_repeat: int = 1  # weight of DAVIS frames (davis and davis_train) against the 10k DUTS-TR photos
    max_side: int = 640  # cap on the long side of cached training images
    background_max_side: int = 1024
    augment: D.AugmentConfig = field(default_factory=D.AugmentConfig)
    # optimisation (original: batch 12, Adam 2.25e-4, wd 1e-4, x0.1 at 22.5k and 37.5k of 45k)
    batch_size: int = 12
    iterations: int = 45000
    lr: float = 2.25e-4
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 37.5 / 45)  # fractions of `iterations`
    gamma: float = 0.1
    grad_clip: float = 5.0  # max global grad norm; 0 disables
    loss_weights: LossWeights = field(default_factory=LossWeights)
    boundary_weight: float = 0.0  # extra CE/L1/L2 weight of pixels near the GT boundary (0: the original's)
    boundary_radius: int = 5
    # do no harm: extra weight of pixels the coarse input had right within keep_radius of its edge (0: off)
    keep_weight: float = 0.0
    keep_radius: int = 12
    keep_min_iou: float = 0.0  # the keep weight applies only to samples whose coarse IoU >= this (0: all)
    # learning-rate multiplier of the guided output stage (its gate bias and regulariser start far from where
    # they end up, and Adam moves a parameter by about lr per step); 1 keeps one parameter group
    guided_lr_scale: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA (CPU always runs fp32)
    seed: int = 0  # training randomness (sample order, augmentation, init); never the splits
    # Splits (human_seg val / dev by name hash) and the fixed validation examples: a constant of the data, not
    # of the run, so runs with different seeds hold back the same images and report comparable dev scores.
    split_seed: int = 0
    # runtime
    device: str | None = None
    workers: int = 4  # data-loader processes
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    out_dir: str = "runs/refiner"
    val_every: int = 1000
    checkpoint_every: int = 500
    keep_every: int = 0  # also export the model as step_<N>.safetensors every N steps (dev selection, averaging)
    log_every: int = 20
    val_max_items: int = 64  # validation images per source (evenly spaced)
    val_max_side: int = 640
    val_L: int = 640  # long side of the single refinement pass in validation
    val_crop_batches: int = 4  # fixed augmented validation crops for a validation loss
    max_minutes: float | None = None  # stop cleanly (checkpoint saved) within this wall-clock budget
    resume: bool = True  # train() continues <out_dir>/ckpt_last.pt when present (as the PSPNet trainer)
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be >= 1")
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones: expected fractions in (0, 1], got {self.milestones}")
        unknown = set(self.real_coarse_sources) - set(SOURCES)
        if unknown:
            raise ValueError(f"real_coarse_sources: expected names among {SOURCES}, got {sorted(unknown)}")
        if self.validate_on not in ("dev", "val"):
            raise ValueError(f"validate_on: expected 'dev' or 'val', got {self.validate_on!r}")
        if not self.guided_lr_scale > 0:
            raise ValueError(f"guided_lr_scale: expected > 0, got {self.guided_lr_scale}")

    def milestone_steps(self) -> list[int]:
        return [int(round(self.iterations * m)) for m in self.milestones]




@dataclass
class DataBundle:
    """Training dataset, fixed validation examples per source, and a description for metadata."""

    train: D.RefineTrainDataset
    val_examples: dict[str, list[D.ValExample]]
    val_crops: D.RefineTrainDataset | None
    summary: dict[str, Any]


def _without_real_coarse(samples: list[Sample], drop: bool) -> list[Sample]:
    """``samples`` with their real coarse masks removed when ``drop`` (training then perturbs the GT instead)."""
    return [dataclasses.replace(s, mask=None) for s in samples] if drop else samples


def build_data(cfg: TrainConfig, preload_threads: int = 4) -> DataBundle:
    """Sources from ``cfg``: DAVIS split by sequence, human_seg split by name hash; preloads the train cache."""
    train_items: list[Sample] = []
    val_items: dict[str, list[Sample]] = {}
    summary: dict[str, Any] = {}
    dev = cfg.validate_on == "dev"
    if cfg.human_seg:
        hs_train, hs_val = split_by_name(D.list_im_gt(cfg.human_seg), cfg.human_seg_val_fraction,
                                         cfg.split_seed)
        hs_dev: list[Sample] = []
        if dev:
            hs_train, hs_dev = split_by_name(hs_train, cfg.human_seg_dev_fraction, cfg.split_seed + 1)
        train_items += _without_real_coarse(hs_train, "human_seg" not in cfg.real_coarse_sources) \
            * max(1, cfg.human_seg_repeat)
        val_items["human_seg"] = hs_dev if dev else hs_val
        summary["human_seg"] = {"path": cfg.human_seg, "train": len(hs_train), "dev": len(hs_dev),
                                "val": len(hs_val), "repeat": cfg.human_seg_repeat}
    if cfg.davis:
        tr_seq, va_seq = split_davis(cfg.davis, cfg.davis_val_sequences, cfg.davis_n_val)
        tr_seq, dev_seq = split_dev_sequences(tr_seq, cfg.davis_n_dev if dev else 0, "davis_n_dev")
        dv_train = D.list_davis(cfg.davis, tr_seq)
        train_items += _without_real_coarse(dv_train, "davis" not in cfg.real_coarse_sources) \
            * max(1, cfg.davis_repeat)
        held = dev_seq if dev else va_seq
        # Only every 5th DAVIS frame has a real (U2-Netp) mask: validate on those, so every example scores both.
        held_items = D.list_davis(cfg.davis, held) if held else []
        val_items["davis"] = [s for s in held_items if s.mask is not None] or held_items
        summary["davis"] = {"path": cfg.davis, "train_sequences": tr_seq, "dev_sequences": dev_seq,
                            "val_sequences": va_seq, "train": len(dv_train), "repeat": cfg.davis_repeat}
    if cfg.duts:
        du_train, du_dev = hold_out_by_name(D.list_duts(cfg.duts), cfg.duts_dev_count if dev else 0, DEV_SALT)
        du_train = _without_real_coarse(du_train, "duts" not in cfg.real_coarse_sources)
        du_coarse = [s for s in du_train if s.mask is not None]
        train_items += du_train * max(1, cfg.duts_repeat) + du_coarse * (max(1, cfg.duts_coarse_repeat) - 1)
        if du_dev:
            val_items["duts"] = du_dev
        summary["duts"] = {"path": cfg.duts, "train": len(du_train), "dev": len(du_dev), "repeat": cfg.duts_repeat,
                           "with_coarse": len(du_coarse), "coarse_repeat": cfg.duts_coarse_repeat}
    if cfg.davis_train:
        seqs = davis_sequences(cfg.davis_train)
        held = [q for q in cfg.davis_train_dev_sequences if q in seqs] if dev else []
        missing = sorted(set(cfg.davis_train_dev_sequences) - set(seqs)) if dev else []
        if missing:
            raise ValueError(f"davis_train_dev_sequences: {missing} not in {cfg.davis_train}")
        dt_train = D.list_davis(cfg.davis_train, [q for q in seqs if q not in held])
        train_items += _without_real_coarse(dt_train, "davis_train" not in cfg.real_coarse_sources) \
            * max(1, cfg.davis_repeat)
        if held:
            held_items = D.list_davis(cfg.davis_train, held)
            val_items["davis_train"] = [s for s in held_items if s.mask is not None] or held_items[::5]
        summary["davis_train"] = {"path": cfg.davis_train, "train_sequences": len(seqs) - len(held),
                                  "dev_sequences": held, "train": len(dt_train),
                                  "repeat": cfg.davis_repeat}
    summary["validate_on"] = cfg.validate_on
    if not train_items:
        raise ValueError("TrainConfig: give at least one data source (human_seg, davis, duts or davis_train)")
    t0 = time.perf_counter()
    store = D.ImageStore(train_items, cfg.max_side)
    store.preload(preload_threads)
    backgrounds = D.load_backgrounds(cfg.backgrounds, cfg.background_max_side) if cfg.backgrounds else []
    summary["cache_mib"] = round(store.nbytes() / 2**20, 1)
    summary["load_seconds"] = round(time.perf_counter() - t0, 1)
    summary["backgrounds"] = {"path": cfg.backgrounds, "count": len(backgrounds)}
    summary["train_items"] = len(train_items)
    train = D.RefineTrainDataset(store, backgrounds, cfg.augment, cfg.seed)
    val_examples = {name: D.build_val_examples(items, cfg.val_max_side, cfg.val_max_items, cfg.split_seed,
                                               cfg.augment.perturb)
                    for name, items in val_items.items() if items}
    all_val = [it for items in val_items.values() for it in items]
    val_crops = None
    if all_val and cfg.val_crop_batches > 0:
        val_crops = D.RefineTrainDataset(D.ImageStore(all_val, cfg.max_side), backgrounds, cfg.augment,
                                         cfg.split_seed + 1)
    return DataBundle(train, val_examples, val_crops, summary)


def model_config(cfg: TrainConfig) -> RMConfig:
    """The architecture a run trains: its preset, with the residual scale overridden when given."""
    rm = get_config(cfg.preset)
    return rm if cfg.residual is None else dataclasses.replace(rm, residual=cfg.residual)


def build_model(cfg: TrainConfig) -> RefinementModule:
    """A fresh model for ``cfg``: warm-started from ``cfg.init``, else ImageNet-initialised when its backbone
    is an smp encoder and ``cfg.pretrained``, else randomly initialised."""
    rm = model_config(cfg)
    model = RefinementModule(rm)
    if cfg.init:
        state, config, _ = load_weights(cfg.init, expected_format=MODEL_FORMAT)
        held = RMConfig.from_dict(config)
        if held == rm:
            load_state_tolerant(model, state)
        elif dataclasses.replace(held, guided_radius=rm.guided_radius) == rm and not held.guided_radius:
            # a network without the guided output stage: everything but the new stage comes from the file
            load_state_tolerant(model, {**{k: v for k, v in model.state_dict().items() if k.startswith("guided.")},
                                        **state})
        else:
            raise ValueError(f"init: {cfg.init} holds a {held} network, the run trains {rm}")
    elif cfg.pretrained and rm.is_encoder:
        load_imagenet_encoder(model.feats.encoder, model.feats.encoder_name)
    return model


def parameter_groups(model: RefinementModule, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer groups: everything at ``cfg.lr``, and the guided output stage at ``guided_lr_scale`` x that
    (a second group only when the scale is not 1, so older runs' optimizer states still resume)."""
    if cfg.guided_lr_scale == 1.0 or model.guided is None:
        return [{"params": list(model.parameters())}]
    guided = list(model.guided.parameters())
    ids = {id(p) for p in guided}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]},
            {"params": guided, "lr": cfg.lr * cfg.guided_lr_scale}]


def git_commit(path: str | os.PathLike | None = None) -> str:
    try:
        cwd = Path(path) if path is not None else Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Trainer:
    """Runs, checkpoints, resumes, validates and exports one training run described by a :class:`TrainConfig`.

    ``data`` may be given directly (tests, custom sources); otherwise it is built from the config's folders.
    """

    def __init__(self, cfg: TrainConfig, data: DataBundle | None = None) -> None:
        self._t_created = time.perf_counter()  # the time budget counts from here (data loading included)
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.data = data if data is not None else build_data(cfg)
        D.steps_per_epoch(len(self.data.train), cfg.batch_size)  # validates batch size vs data
        torch.manual_seed(cfg.seed)
        # channels_last: measured 1.5x faster training steps on CPU (oneDNN) and the usual gain on GPUs.
        self.model = build_model(cfg).to(self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(parameter_groups(self.model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.milestone_steps(), cfg.gamma)
        self.step = 0
        self.elapsed = 0.0  # training seconds over all invocations
        self.best: dict[str, Any] = {}
        self.last_val: dict[str, float] = {}
        self._tb = None
        self._log_file: runfiles.CsvLog | None = None

    # ------------------------------------------------------------------ checkpoints

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def state(self) -> dict[str, Any]:
        return {
            "format": "cascadepsp-train-ckpt-1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "last_val": self.last_val,
            "config": self.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write model, optimizer, scheduler, step and RNG states atomically (``ckpt_last.pt`` by default)."""
        path = Path(path) if path is not None else self.ckpt_path
        return runfiles.save_checkpoint(self.state(), path)

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load a checkpoint (default ``out_dir/ckpt_last.pt``); returns False when there is none."""
        path = Path(path) if path is not None else self.ckpt_path
        if not path.is_file():
            return False
        # Our own file (optimizer/scheduler state holds plain Python objects), hence weights_only=False.
        ck = runfiles.load_checkpoint(path, weights_only=False)
        runfiles.check_resume(TrainConfig.upgrade_keys(ck.get("config", {})), self.cfg.to_dict(), RESUME_MUST_MATCH, RESUME_SHOULD_MATCH)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scheduler.milestones = type(self.scheduler.milestones)(self.cfg.milestone_steps())
        self.step = int(ck["step"])
        self.elapsed = float(ck.get("elapsed", 0.0))
        self.best = dict(ck.get("best", {}))
        self.last_val = dict(ck.get("last_val", {}))
        torch.set_rng_state(ck["torch_rng"])
        if ck.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        return True

    # ------------------------------------------------------------------ training

    def loader(self, start: int, stop: int) -> DataLoader:
        """Batches for global steps ``start .. stop-1``, in order, independent of ``workers``."""
        cfg = self.cfg
        sampler = D.StepBatchSampler(len(self.data.train), cfg.batch_size, cfg.seed, start, stop)
        kw: dict[str, Any] = {}
        if cfg.workers > 0:
            # timeout: a wedged worker becomes an error instead of a silent hang
            kw = {"prefetch_factor": 4, "persistent_workers": False, "timeout": 300}
        return DataLoader(self.data.train, batch_sampler=sampler, num_workers=cfg.workers,
                          pin_memory=self.device.type == "cuda", **kw)

    def loss(self, out: dict[str, torch.Tensor], gt: torch.Tensor, seg: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The run's training loss (slot weights, boundary and keep weighting of its config); ``seg`` is the
        model's coarse input in [-1, 1]."""
        c = self.cfg
        return refinement_loss(out, gt, c.loss_weights, c.boundary_weight, c.boundary_radius,
                               coarse=(seg + 1) / 2, keep_weight=c.keep_weight, keep_radius=c.keep_radius,
                               keep_min_iou=c.keep_min_iou)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss parts, grad norm and lr used."""
        self.model.train()
        im = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        gt = batch["gt"].to(self.device, non_blocking=True)
        seg = batch["seg"].to(self.device, non_blocking=True)
        lr = self.optimizer.param_groups[0]["lr"]
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            out = self.model(im, seg)
        loss, parts = self.loss(out, gt, seg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        keys = list(parts)
        numbers = torch.stack([*(parts[k].float() for k in keys), grad_norm.float()]).tolist()  # one sync
        values = dict(zip(keys, numbers[:-1], strict=True))
        grad_norm = numbers[-1]
        finite = math.isfinite(values["total"]) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        values.update(grad_norm=grad_norm, lr=lr, skipped=float(not finite))
        return values

    def _log(self, row: dict[str, Any]) -> None:
        if self._log_file is None:
            self._log_file = runfiles.CsvLog(self.out_dir / runfiles.LOG_NAME, list(self._log_columns()))
        self._log_file.write(row)
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(float(v)):
                    self._tb.add_scalar(k, v, row["step"])

    def _log_columns(self) -> dict[str, Any]:
        """An empty row with every column, so the CSV header is fixed from the first write."""
        gated = ["keep_share"] if self.cfg.keep_weight and self.cfg.keep_min_iou > 0 else []
        cols: dict[str, Any] = dict.fromkeys(["step", "epoch", "lr", *LOSS_PARTS, *gated, "grad_norm", "skipped",
                                              "sec_per_it", "data_sec_per_it", "elapsed"], "")
        for name in self.data.val_examples:
            for kind in ("synthetic", "real"):
                for stage in ("coarse", "refined"):
                    for m in ("iou", "mba"):
                        cols[f"val_{name}_{kind}_{stage}_{m}"] = ""
        cols["val_loss"] = ""
        return cols

    def _open_tensorboard(self) -> None:
        if not self.cfg.tensorboard or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # the tensorboard package is optional
            warnings.warn(f"tensorboard logging skipped: {e}", stacklevel=2)
            return
        self._tb = SummaryWriter(str(self.out_dir / "tb"))

    @runfiles.stop_signals_interrupt()  # kill PID stops like Ctrl-C: checkpoint kept
    def run(self, max_steps: int | None = None, max_minutes: float | None = None) -> dict[str, Any]:
        """Train from the current step to ``cfg.iterations`` (or ``max_steps`` more steps, or until the time
        budget, counted from this Trainer's construction, would be exceeded), checkpointing, validating and
        logging on the way. A checkpoint is always saved on return; the final model is exported when done.

        Returns ``{"step", "finished", "losses" (total per step run), "sec_per_it", "data_sec_per_it"}``.
        """
        cfg = self.cfg
        budget = max_minutes if max_minutes is not None else cfg.max_minutes
        deadline = self._t_created + budget * 60 if budget else math.inf
        stop = cfg.iterations if max_steps is None else min(cfg.iterations, self.step + max_steps)
        self._open_tensorboard()
        template = self._log_columns()
        losses: list[float] = []
        est_step, est_save, est_val = 0.0, 5.0, 0.0
        data_time = step_time = 0.0
        n_timed = 0
        acc: dict[str, float] = {}
        n_acc = 0
        bar = tqdm(total=cfg.iterations, initial=self.step, disable=not cfg.progress, dynamic_ncols=True,
                   desc="train")
        stopped_early = False
        first = True
        try:
            it = iter(self.loader(self.step, stop)) if self.step < stop else iter(())
            while self.step < stop:
                val_due = cfg.val_every > 0 and (self.step + 1) % cfg.val_every == 0
                need = est_step + est_save + (est_val if val_due else 0.0)
                if time.perf_counter() + need > deadline:
                    stopped_early = True
                    break
                t0 = time.perf_counter()
                batch = next(it)
                t1 = time.perf_counter()
                values = self.train_step(batch)
                t2 = time.perf_counter()
                losses.append(values["total"])
                self.elapsed += t2 - t0
                if not first:  # the first step of an invocation includes worker start-up
                    data_time += t1 - t0
                    step_time += t2 - t0
                    n_timed += 1
                # Step-time estimate for the budget: the first step (start-up) only until a steady one is seen.
                dt = t2 - t0
                est_step = dt if first or n_timed == 1 else max(est_step * 0.9 + dt * 0.1, dt)
                first = False
                for k, v in values.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                bar.update(1)
                bar.set_postfix(loss=f"{values['total']:.4f}", lr=f"{values['lr']:.2e}")
                row: dict[str, Any] | None = None
                if self.step % cfg.log_every == 0 or self.step == stop:
                    row = dict(template)
                    row.update({k: v / n_acc for k, v in acc.items()})
                    row.update(step=self.step, epoch=(self.step - 1) // D.steps_per_epoch(
                        len(self.data.train), cfg.batch_size), elapsed=round(self.elapsed, 1),
                        sec_per_it=step_time / max(1, n_timed), data_sec_per_it=data_time / max(1, n_timed))
                    acc, n_acc = {}, 0
                if cfg.val_every > 0 and self.step % cfg.val_every == 0:
                    tv = time.perf_counter()
                    val = self.validate()
                    est_val = time.perf_counter() - tv
                    self.elapsed += est_val
                    row = row if row is not None else {**template, "step": self.step}
                    row.update(val)
                    self._maybe_export_best(val)
                    if cfg.progress:
                        tqdm.write(self._format_val(val))
                if row is not None:
                    self._log(row)
                if cfg.keep_every > 0 and self.step % cfg.keep_every == 0:
                    self.export(self.out_dir / f"step_{self.step}.safetensors")
                if cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0 and self.step < stop:
                    ts = time.perf_counter()
                    self.save_checkpoint()
                    est_save = time.perf_counter() - ts
        except KeyboardInterrupt:
            stopped_early = True
            warnings.warn(f"interrupted at step {self.step}; saving a checkpoint", stacklevel=2)
        finally:
            bar.close()
        self.save_checkpoint()
        finished = self.step >= cfg.iterations
        # the weights where the run stopped, loadable like any refiner file (a run stopped early by
        # --max-minutes or Ctrl-C has no model_final; resuming from the checkpoint overwrites this file)
        self.export(self.out_dir / "model_last.safetensors")
        if finished:
            self.export(self.out_dir / "model_final.safetensors")
        if self._tb is not None:
            self._tb.flush()
        return {"step": self.step, "finished": finished, "stopped_early": stopped_early, "losses": losses,
                "sec_per_it": step_time / max(1, n_timed), "data_sec_per_it": data_time / max(1, n_timed)}

    # ------------------------------------------------------------------ validation and export

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """IoU / mBA of coarse vs refined masks on the fixed validation images (one refinement pass at
        ``val_L``), per source and per coarse kind (synthetic perturbation, real segmenter), plus the
        training loss on fixed validation crops."""
        self.model.eval()
        result: dict[str, float] = {}
        for name, examples in self.data.val_examples.items():
            meters = {(k, s): SegMetrics() for k in ("synthetic", "real") for s in ("coarse", "refined")}
            for ex in examples:
                im = image_to_tensor(ex.image, self.device)
                for kind, coarse in (("synthetic", ex.coarse_synthetic), ("real", ex.coarse_real)):
                    if coarse is None:
                        continue
                    prob = refine_single_pass(self.model, im, mask_to_tensor(coarse, self.device), self.cfg.val_L)
                    refined = (prob[0, 0] > 0.5).cpu().numpy()
                    meters[(kind, "coarse")].update(coarse, ex.gt)
                    meters[(kind, "refined")].update(refined, ex.gt)
            for (kind, stage), m in meters.items():
                if len(m):
                    s = m.summary()
                    result[f"val_{name}_{kind}_{stage}_iou"] = s["iou"]
                    result[f"val_{name}_{kind}_{stage}_mba"] = s["mba"]
        if self.data.val_crops is not None and self.cfg.val_crop_batches > 0:
            ds, b = self.data.val_crops, self.cfg.batch_size
            n = min(len(ds), b * self.cfg.val_crop_batches)
            total = 0.0
            for start in range(0, n, b):
                batch = [ds[(0, i)] for i in range(start, min(n, start + b))]
                im = torch.stack([x["image"] for x in batch]).to(self.device)
                gt = torch.stack([x["gt"] for x in batch]).to(self.device)
                seg = torch.stack([x["seg"] for x in batch]).to(self.device)
                loss, _ = self.loss(self.model(im, seg), gt, seg)
                total += float(loss) * len(batch)
            result["val_loss"] = total / max(1, n)
        self.model.train()
        self.last_val = dict(result)
        return result

    @staticmethod
    def _format_val(val: dict[str, float]) -> str:
        parts = []
        for key in sorted(val):
            if key.endswith("_refined_iou") or key.endswith("_refined_mba"):
                coarse = val.get(key.replace("_refined_", "_coarse_"), math.nan)
                parts.append(f"{key[4:]}: {coarse:.4f}->{val[key]:.4f}")
        if "val_loss" in val:
            parts.append(f"val_loss {val['val_loss']:.4f}")
        return " | ".join(parts)

    @staticmethod
    def score(val: dict[str, float]) -> float:
        """Model-selection score: mean refined mBA + IoU over every validation source and coarse kind."""
        vals = [v for k, v in val.items() if "_refined_" in k and math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    def _maybe_export_best(self, val: dict[str, float]) -> None:
        s = self.score(val)
        if math.isfinite(s) and s > self.best.get("score", -math.inf):
            self.best = {"score": s, "step": self.step, "val": val}
            self.export(self.out_dir / "model_best.safetensors")

    def metadata(self) -> dict[str, Any]:
        return {
            "train_config": self.cfg.to_dict(),
            "data": self.data.summary,
            "steps": self.step,
            "val": self.last_val,
            "best": self.best,
            "git_commit": git_commit(),
            "trainer": "cascadepsp.training.trainer",
        }

    def export(self, path: str | os.PathLike) -> Path:
        """Save the current model as fp16 safetensors with the run's config, data, steps and scores."""
        return save_model(self.model, path, metadata=self.metadata(), half=True)


def config_replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with some fields changed (``augment`` fields may be given as ``augment__<name>``)."""
    aug = {k[len("augment__"):]: v for k, v in changes.items() if k.startswith("augment__")}
    rest = {k: v for k, v in changes.items() if not k.startswith("augment__")}
    if aug:
        rest["augment"] = dataclasses.replace(cfg.augment, **aug)
    return dataclasses.replace(cfg, **rest)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run (continuing ``<out_dir>/ckpt_last.pt`` when ``cfg.resume`` and it exists); the PSPNet
    trainer's entry point has the same shape (:func:`pspnet.train.train`)."""
    trainer = Trainer(cfg)
    if cfg.resume:
        trainer.resume()
    return trainer.run()
