"""Bilinear upsampling of a small map evaluated only on a requested crop of the full-size output.

It reproduces ``F.interpolate(mode="bilinear", align_corners=False)`` on CPU bit for bit (source
coordinates and blends use fused multiply-adds, emulated here in float64, horizontal pass first), so the
fast path need not hold full-resolution copies of the global result: each window and each output strip
computes just the pixels it needs. On CUDA the results agree to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _axis(in_size: int, out_size: int, start: int, stop: int, device: torch.device
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    scale = (torch.tensor(in_size, dtype=torch.float32) / out_size).double()
    dst = torch.arange(start, stop, dtype=torch.float64, device=device)
    src = (scale.to(device) * (dst + 0.5) - 0.5).clamp_min(0).float()
    i0 = src.floor().long().clamp_max(in_size - 1)
    w1 = (src - i0.float()).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, 1 - w1, w1


def _lerp(x0: Tensor, x1: Tensor, w0: Tensor, w1: Tensor) -> Tensor:
    """x0 * w0 + x1 * w1 with the first product fused into the addition, as PyTorch's CPU kernel does."""
    return (x0.double() * w0.double() + (x1 * w1).double()).float()


def bilinear_crop(small: Tensor, out_h: int, out_w: int, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    """Rows ``y0:y1`` and columns ``x0:x1`` of the 2-D map ``small`` bilinearly resized to out_h x out_w."""
    h, w = small.shape[-2:]
    c0, c1, b0, b1 = _axis(w, out_w, x0, x1, small.device)
    return _vertical(_lerp(small[:, c0], small[:, c1], b0, b1), out_h, y0, y1)


def _vertical(rows: Tensor, out_h: int, y0: int, y1: int) -> Tensor:
    r0, r1, a0, a1 = _axis(rows.shape[0], out_h, y0, y1, rows.device)
    return _lerp(rows[r0], rows[r1], a0[:, None], a1[:, None])


def bilinear_rows(small: Tensor, out_h: int, out_w: int, strip: int = 256):
    """Yield ``(y0, y1, rows)`` full-width strips of ``small`` resized to out_h x out_w (horizontal pass done once)."""
    c0, c1, b0, b1 = _axis(small.shape[-1], out_w, 0, out_w, small.device)
    rows = _lerp(small[:, c0], small[:, c1], b0, b1)
    for y0 in range(0, out_h, strip):
        y1 = min(out_h, y0 + strip)
        yield y0, y1, _vertical(rows, out_h, y0, y1)
