"""Bilinear upsampling of a small map evaluated only on a requested crop of the full-size output.

It follows ``F.interpolate(mode="bilinear", align_corners=False)`` coordinate rules, so the fast path never
has to hold full-resolution copies of the global result: each window (and each output strip) computes just
the pixels it needs. Values agree with ``F.interpolate`` to ~1e-5.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _axis(in_size: int, out_size: int, start: int, stop: int, device: torch.device
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    dst = torch.arange(start, stop, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale.to(device) - 0.5).clamp_min(0)
    i0 = src.to(torch.int64)
    w1 = src - i0.to(torch.float32)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, 1.0 - w1, w1


def bilinear_crop(small: Tensor, out_h: int, out_w: int, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    """Rows ``y0:y1`` and columns ``x0:x1`` of ``small`` (an h x w map) bilinearly resized to out_h x out_w."""
    h, w = small.shape[-2:]
    r0, r1, a0, a1 = _axis(h, out_h, y0, y1, small.device)
    c0, c1, b0, b1 = _axis(w, out_w, x0, x1, small.device)
    top, bottom = small[..., r0, :], small[..., r1, :]
    a0, a1 = a0[:, None], a1[:, None]
    return a0 * (b0 * top[..., c0] + b1 * top[..., c1]) + a1 * (b0 * bottom[..., c0] + b1 * bottom[..., c1])
