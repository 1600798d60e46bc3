"""The batched engine: the reference algorithm with batched windows, mixed precision and bounded memory.

Same global step, window grid, skip rule and blending as :mod:`cascadepsp.inference.reference`, but
(1) windows that need refining run in batches; (2) optional bf16/fp16 autocast and channels_last;
(3) nothing full-resolution is held in float32 except the final output: the image stays uint8, the
binarised global result is one byte per pixel (built in strips), the soft OS4 global result is upsampled
per window on demand (:mod:`cascadepsp.inference.resize`), and the accumulators are float16 (sum) and
uint8 (count). The global step and the windows cannot share a model call: the windows take the global
result as input.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .reference import (
    Window,
    iter_windows_to_refine,
    local_band,
    normalise_u8,
    resize_max_side,
    safe_forward,
    single_pass_to_input_size,
)
from .resize import bilinear_crop, bilinear_rows

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STRIP_ROWS = 256  # rows per output strip when assembling the final map


@dataclass(frozen=True)
class BatchedOptions:
    """Knobs of the batched engine; ``None`` / ``"auto"`` mean automatic, per device (see each field)."""

    batch_size: int | None = None  # windows per model call; auto: from free GPU memory, 1 on CPU
    precision: str = "auto"  # "auto" (bf16 on CUDA with bf16 support, else fp32), "fp32", "bf16", "fp16"
    channels_last: bool | None = None  # auto: on (measured 1.4x faster on CPU, the usual gain on GPU)
    max_batch: int = 16
    compile: bool = False  # torch.compile the window calls (fixed shape: one compile, then faster)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"precision: expected one of auto/fp32/bf16/fp16, got {self.precision!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer or None, got {self.batch_size!r}")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return PRECISIONS[precision]


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _read_only_view(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory without a copy, also when it is read-only (a PIL image through
    ``np.asarray``, a memory map): the engine only reads its inputs, so torch's warning does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _global_inputs(image_u8: Tensor, mask: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """Image/mask at long side L, normalising and area-pooling one channel at a time to bound memory."""
    side = max(mask.shape)
    seg = mask.float().mul_(2).sub_(1)[None, None]
    if side > L:
        channels = []
        for c in range(3):
            ch = normalise_u8(image_u8[..., c:c + 1], slice(c, c + 1))
            channels.append(resize_max_side(ch[None], L, "area"))
            del ch
        return torch.cat(channels, dim=1), resize_max_side(seg, L, "area")
    im = normalise_u8(image_u8)[None]
    if side < L:
        return resize_max_side(im, L, "bicubic"), resize_max_side(seg, L, "bilinear")
    return im, seg


class BatchedRunner:
    """Runs the refinement pipeline for one model/device with the fast-path options."""

    def __init__(self, model: nn.Module, device: torch.device, options: BatchedOptions = BatchedOptions()) -> None:
        self.device = device
        self.options = options
        self.dtype = resolve_precision(options.precision, device)
        self.channels_last = True if options.channels_last is None else options.channels_last
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        # Only the windows are compiled: they all share one shape, while the global step's shape varies.
        self.window_model = torch.compile(self.model, dynamic=False) if options.compile else self.model
        self._auto_batch: dict[tuple[int, int], int] = {}

    # -- model calls ------------------------------------------------------------------------------------
    def _forward(self, im: Tensor, seg: Tensor, inter_s8: Tensor | None, keys: tuple[str, ...]) -> dict[str, Tensor]:
        if self.channels_last:
            im = im.contiguous(memory_format=torch.channels_last)
        model = self.model if inter_s8 is None else self.window_model
        with _autocast(self.device, self.dtype):
            out = safe_forward(model, im, seg, inter_s8, keys=keys)
        return {k: v.float() for k, v in out.items()}

    def _batch_size(self, win_h: int, win_w: int) -> int:
        if self.options.batch_size is not None:
            return self.options.batch_size
        if self.device.type != "cuda":
            return 1  # measured: batching windows gives no throughput gain on CPU
        key = (win_h, win_w)
        if key not in self._auto_batch:
            self._auto_batch[key] = self._probe_batch(win_h, win_w)
        return self._auto_batch[key]

    def _probe_batch(self, win_h: int, win_w: int) -> int:
        """Measure one window's peak memory and fit as many as 70% of the free memory allows."""
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        im = torch.zeros(1, 3, win_h, win_w, device=self.device)
        seg = torch.zeros(1, 1, win_h, win_w, device=self.device)
        self._forward(im, seg, seg, ("pred_224",))
        per_window = max(torch.cuda.max_memory_allocated(self.device) - base, 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(self.options.max_batch, 0.7 * free // per_window)))

    # -- pipeline ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def refine(self, image: np.ndarray, mask: np.ndarray, L: int = 900, fast: bool = False) -> np.ndarray:
        """HxWx3 uint8 RGB + HxW bool -> HxW float32 foreground probability."""
        h, w = mask.shape
        image_u8 = _read_only_view(image).to(self.device)
        mask_t = _read_only_view(mask).to(self.device)
        small_im, small_seg = _global_inputs(image_u8, mask_t, L)
        del mask_t
        glob = self._forward(small_im, small_seg, None, ("pred_224", "pred_56_2"))
        del small_im, small_seg
        if fast:
            return single_pass_to_input_size(glob["pred_224"], h, w, L)[0, 0].cpu().numpy()
        p224, p56 = glob["pred_224"][0, 0], glob["pred_56_2"][0, 0]
        # The binarised global result at full size, 1 byte per pixel: the skip rule, the windows' mask input
        # and the pixels no window covers all read it.
        binary_full = torch.empty(h, w, dtype=torch.bool, device=self.device)
        for r0, r1, strip in bilinear_rows(p224, h, w, STRIP_ROWS):
            binary_full[r0:r1] = strip > 0.5
        total = torch.zeros(h, w, dtype=torch.float16, device=self.device)
        count = torch.zeros(h, w, dtype=torch.uint8, device=self.device)
        pending: list[tuple[Window, Tensor, Tensor]] = []
        batch = self._batch_size(min(L, h), min(L, w))  # every window has this size
        for win in iter_windows_to_refine(binary_full, L, local_band(self.model)):
            binary = binary_full[win.y0:win.y1, win.x0:win.x1]
            soft4 = bilinear_crop(p56, h, w, win.y0, win.y1, win.x0, win.x1) * 2 - 1
            pending.append((win, binary.float() * 2 - 1, soft4))
            if len(pending) == batch:
                self._run_windows(image_u8, pending, total, count)
                pending = []
        if pending:
            self._run_windows(image_u8, pending, total, count)
        return self._assemble(binary_full, total, count)

    def _run_windows(self, image_u8: Tensor, pending: list[tuple[Window, Tensor, Tensor]], total: Tensor,
                     count: Tensor) -> None:
        h, w = total.shape
        im = normalise_u8(torch.stack([image_u8[win.y0:win.y1, win.x0:win.x1] for win, _, _ in pending]))
        seg = torch.stack([b for _, b, _ in pending])[:, None]
        s8 = torch.stack([s for _, _, s in pending])[:, None]
        pred = self._forward(im, seg, s8, ("pred_224",))["pred_224"][:, 0]
        for (win, _, _), p in zip(pending, pred, strict=True):
            iy, ix, py, px = win.kept(h, w)
            region = total[iy, ix]
            total[iy, ix] = (region.float() + p[py, px]).half()
            count[iy, ix] += 1

    def _assemble(self, binary_full: Tensor, total: Tensor, count: Tensor) -> np.ndarray:
        """Average where windows were refined, binarised global result elsewhere; built in row strips."""
        h, w = total.shape
        out = np.empty((h, w), np.float32)
        for r0 in range(0, h, STRIP_ROWS):
            r1 = min(h, r0 + STRIP_ROWS)
            binary = binary_full[r0:r1].float()
            c = count[r0:r1].float()
            strip = torch.where(c == 0, binary, total[r0:r1].float() / c.clamp_min(1))
            out[r0:r1] = strip.cpu().numpy()
        return out
