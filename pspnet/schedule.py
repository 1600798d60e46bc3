"""PSPNet's optimiser and learning-rate schedule: SGD with the heads at 10x, and the poly decay of the paper."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .model import PSPNet

if TYPE_CHECKING:
    from .train import PSPNetTrainConfig


def poly_lr(base_lr: float, step: int, max_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / max_steps) ** power`` (0 at and beyond ``max_steps``)."""
    if max_steps <= 0:
        raise ValueError(f"max_steps: expected a positive integer, got {max_steps!r}")
    frac = min(max(step, 0), max_steps) / max_steps
    return base_lr * (1.0 - frac) ** power


def build_optimizer(model: PSPNet, cfg: PSPNetTrainConfig) -> torch.optim.SGD:
    """SGD with two groups: the encoder at ``lr`` and the heads (PPM, classifier, aux) at ``head_lr_mult x lr``."""
    groups = [{"params": list(model.encoder_parameters()), "lr_mult": 1.0, "name": "encoder"},
              {"params": list(model.head_parameters()), "lr_mult": cfg.head_lr_mult, "name": "head"}]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_poly_lr(optimizer: torch.optim.Optimizer, cfg: PSPNetTrainConfig, step: int) -> float:
    """Apply the poly schedule for ``step`` to every group; returns the base (encoder) lr."""
    lr = poly_lr(cfg.lr, step, cfg.iterations, cfg.poly_power)
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    return lr
