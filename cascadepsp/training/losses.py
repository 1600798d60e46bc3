"""Training losses of the refinement module, weighted per output exactly as the original CascadePSP trainer.

Cross-entropy (BCE with logits) is taken on the logits ``out_*`` against the binarised GT, L1 and L2 on the
sigmoids ``pred_*`` against the soft GT, plus a Sobel gradient-magnitude loss on the full-resolution output.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ..configs import JsonConfig


@dataclass(frozen=True)
class LossWeights(JsonConfig):
    """Per-slot weights; defaults are the original's (OS8: CE; OS4: 0.5 CE + 0.25 L1 + 0.25 L2; OS1: L1 + L2 + 5 grad)."""

    s0_l1: float = 1.0  # out_224 / pred_224
    s0_l2: float = 1.0
    s0_grad: float = 5.0
    s1_ce: float = 1.0  # out_28 (pass 1)
    s2_ce: float = 0.5  # out_56 / pred_56 (pass 2)
    s2_l1: float = 0.25
    s2_l2: float = 0.25
    s3_ce: float = 1.0  # out_28_2 (pass 2)
    s4_ce: float = 1.0  # out_28_3 (pass 3)
    s5_ce: float = 0.5  # out_56_2 / pred_56_2 (pass 3)
    s5_l1: float = 0.25
    s5_l2: float = 0.25



LOSS_PARTS: tuple[str, ...] = ("total", *(f.name for f in fields(LossWeights)))  # keys of refinement_loss parts

# (slot, output-key suffix): logits are out_<suffix>, sigmoids pred_<suffix>
_SLOTS: tuple[tuple[str, str], ...] = (
    ("s0", "224"), ("s1", "28"), ("s2", "56"), ("s3", "28_2"), ("s4", "28_3"), ("s5", "56_2"),
)


def _sobel_kernels(device: torch.device, dtype: torch.dtype) -> Tensor:
    gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=device, dtype=dtype) / 4
    return torch.stack([gx, gx.t()]).unsqueeze(1)  # 2x1x3x3


def gradient_magnitude(x: Tensor) -> Tensor:
    """3x3 average pool then Sobel magnitude sqrt(gx^2 + gy^2 + 1e-4) of a (B,1,H,W) map (the original's SobelComputer)."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"x: expected a (B,1,H,W) tensor, got shape {tuple(x.shape)}")
    x = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
    g = F.conv2d(x, _sobel_kernels(x.device, x.dtype), padding=1)
    return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2 + 1e-4)


def gradient_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean L1 distance between the gradient magnitudes of ``gt`` and ``pred``."""
    return F.l1_loss(gradient_magnitude(pred), gradient_magnitude(gt))


def boundary_band(gt_bin: Tensor, radius: int) -> Tensor:
    """1 where a pixel lies within ``radius`` pixels (Chebyshev) of the mask's boundary, else 0 (B,1,H,W)."""
    if radius < 1:
        raise ValueError(f"radius: expected >= 1, got {radius}")
    k = 2 * radius + 1
    dilated = F.max_pool2d(gt_bin, k, stride=1, padding=radius)
    eroded = -F.max_pool2d(-gt_bin, k, stride=1, padding=radius)
    return dilated - eroded


def _mean(x: Tensor, weight: Tensor | None) -> Tensor:
    return x.mean() if weight is None else (x * weight).sum() / weight.sum()


def keep_mask(coarse: Tensor, gt_bin: Tensor, radius: int) -> Tensor:
    """1 where the coarse mask already has the GT's label and lies within ``radius`` px of the coarse
    boundary (the pixels a refiner can get wrong by moving a right edge), else 0 (B,1,H,W)."""
    coarse_bin = (coarse > 0.5).float()
    return boundary_band(coarse_bin, radius) * (coarse_bin == gt_bin).float()


def good_coarse_samples(coarse: Tensor, gt_bin: Tensor, min_iou: float) -> Tensor:
    """(B,1,1,1) 1 for the samples whose binarised coarse mask has IoU >= ``min_iou`` with the GT, else 0: the
    inputs a refiner should leave (nearly) alone; an empty union counts as IoU 1."""
    coarse_bin = coarse > 0.5
    gt = gt_bin > 0.5
    inter = (coarse_bin & gt).flatten(1).sum(1).float()
    union = (coarse_bin | gt).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return (iou >= min_iou).float().view(-1, 1, 1, 1)


def refinement_loss(out: dict[str, Tensor], gt: Tensor, weights: LossWeights = LossWeights(),
                    boundary_weight: float = 0.0, boundary_radius: int = 5,
                    coarse: Tensor | None = None, keep_weight: float = 0.0, keep_radius: int = 12,
                    keep_min_iou: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Total weighted loss over the six output slots, and a dict of its unweighted parts (detached
    0-d tensors, so logging costs no device sync until read) for logging.

    ``out`` is the model's output dict; ``gt`` the soft ground truth (B,1,H,W) in [0, 1]. Slots whose
    outputs are absent (passes skipped with ``inter_s8``/``inter_s4``) contribute nothing.
    ``boundary_weight`` > 0 weights the CE / L1 / L2 terms of pixels within ``boundary_radius`` of the GT
    boundary by ``1 + boundary_weight`` (a weighted mean, so the loss keeps its scale): the interior of a
    residual-output network's prediction is already right, the boundary is where the work is.
    ``keep_weight`` > 0 adds that weight to the pixels the ``coarse`` mask had right near its edge (do no
    harm), only in the samples whose coarse IoU with the GT is at least ``keep_min_iou`` (0: every sample):
    a good mask's right edge should stay, a bad mask's may need a bold move.
    """
    if gt.dim() != 4 or gt.shape[1] != 1:
        raise ValueError(f"gt: expected a (B,1,H,W) tensor, got shape {tuple(gt.shape)}")
    if boundary_weight < 0:
        raise ValueError(f"boundary_weight: expected >= 0, got {boundary_weight}")
    if keep_weight < 0:
        raise ValueError(f"keep_weight: expected >= 0, got {keep_weight}")
    if not 0.0 <= keep_min_iou <= 1.0:
        raise ValueError(f"keep_min_iou: expected a value in [0, 1], got {keep_min_iou}")
    if keep_weight and (coarse is None or coarse.shape != gt.shape):
        raise ValueError(f"coarse: keep_weight needs a coarse mask of the GT's shape {tuple(gt.shape)}, got "
                         f"{None if coarse is None else tuple(coarse.shape)}")
    gt = gt.float()
    gt_bin = (gt > 0.5).float()
    pix_w = None
    if boundary_weight:
        pix_w = 1.0 + boundary_weight * boundary_band(gt_bin, boundary_radius)
    parts: dict[str, Tensor] = {}
    if keep_weight:
        keep = keep_mask(coarse.float(), gt_bin, keep_radius)
        if keep_min_iou > 0:
            gate = good_coarse_samples(coarse.float(), gt_bin, keep_min_iou)
            keep = keep * gate
            parts["keep_share"] = gate.mean().detach()  # share of the batch the keep term applied to
        pix_w = (1.0 if pix_w is None else pix_w) + keep_weight * keep
    w = weights.to_dict()
    total = gt.new_zeros(())
    for slot, key in _SLOTS:
        logits_key, pred_key = "out_" + key, "pred_" + key
        if logits_key not in out:
            continue
        logits = out[logits_key].float()
        pred = out[pred_key].float() if pred_key in out else torch.sigmoid(logits)
        terms: dict[str, Tensor] = {}
        if w.get(f"{slot}_ce", 0.0):
            terms["ce"] = _mean(F.binary_cross_entropy_with_logits(logits, gt_bin, reduction="none"), pix_w)
        if w.get(f"{slot}_l1", 0.0):
            terms["l1"] = _mean((pred - gt).abs(), pix_w)
        if w.get(f"{slot}_l2", 0.0):
            terms["l2"] = _mean((pred - gt) ** 2, pix_w)
        if w.get(f"{slot}_grad", 0.0):
            terms["grad"] = gradient_loss(pred, gt)
        for name, value in terms.items():
            total = total + w[f"{slot}_{name}"] * value
            parts[f"{slot}_{name}"] = value.detach()
    parts["total"] = total.detach()
    return total, parts
