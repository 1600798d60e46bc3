"""Turn user inputs (numpy, PIL, torch) into validated arrays: an HxWx3 uint8 RGB image and an HxW bool mask.

Every rejection is a ``ValueError`` whose message names the argument and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:  # Pillow is a dependency, but keep the import local to this module's job.
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover
    _PILImage = None


def _is_pil(obj: Any) -> bool:
    return _PILImage is not None and isinstance(obj, _PILImage.Image)


def _torch_to_numpy_image(t: torch.Tensor, size: tuple[int, int] | None) -> np.ndarray:
    t = t.detach().cpu()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"image: expected a single image, got a batch of {t.shape[0]} (shape {tuple(t.shape)})")
        t = t[0]
    if t.ndim == 3 and t.shape[0] in (1, 3):
        chw = t.shape[-1] not in (1, 3) or (size is not None and tuple(t.shape[1:]) == tuple(size))
        if chw:
            t = t.permute(1, 2, 0)  # CHW -> HWC
    return t.numpy()


def _mask_hw(shape: tuple[int, ...], size: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """H, W of a 3-D mask shape read as 1xHxW or HxWx1 (a 1xNx1 one is HxWx1 unless ``size`` says Nx1), or
    None when it is neither: the one layout rule of :func:`to_binary_mask` and :func:`mask_size`."""
    if len(shape) != 3:
        return None
    if shape[0] == 1 and (shape[2] != 1 or (size is not None and tuple(shape[1:]) == tuple(size))):
        return int(shape[1]), int(shape[2])
    if shape[2] == 1:
        return int(shape[0]), int(shape[1])
    return None


def mask_size(mask: Any) -> tuple[int, int] | None:
    """The (H, W) a mask will have after :func:`to_binary_mask`'s layout rules, or None if its shape alone
    cannot tell (a 1xNx1 array) or it is not a mask; reads only the shape."""
    if _is_pil(mask):
        return mask.size[1], mask.size[0]
    if isinstance(mask, torch.Tensor):
        shape = list(mask.shape)
        while len(shape) > 2 and shape[0] == 1:
            shape = shape[1:]
    elif isinstance(mask, np.ndarray):
        shape = list(mask.shape)
        if len(shape) == 3:
            if shape[0] == 1 and shape[2] == 1:
                return None
            return _mask_hw(tuple(shape))
    else:
        return None
    return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None


def to_rgb_uint8(image: Any, bgr: bool = False, size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate ``image`` and return it as a contiguous HxWx3 uint8 RGB array.

    Accepts numpy HxWx3 / HxW (grayscale) arrays in uint8, uint16, or float in [0, 1]; PIL images;
    torch tensors (3xHxW, 1x3xHxW or HxWx3; uint8 or float in [0, 1]). ``bgr=True`` flips channel
    order for arrays read with OpenCV. ``size`` (the mask's H, W) settles a tensor whose layout its shape
    leaves open (3xHx3 or 3xHx1: CHW or HWC?); without it HWC wins.
    """
    if _is_pil(image):
        arr = np.asarray(image.convert("RGB"))
        bgr = False
    elif isinstance(image, torch.Tensor):
        arr = _torch_to_numpy_image(image, size)
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise ValueError(f"image: expected a numpy array, PIL image or torch tensor, got {type(image).__name__}")

    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
        bgr = False
    if arr.ndim != 3:
        raise ValueError(f"image: expected shape HxWx3 (or HxW grayscale), got {arr.shape}")
    if arr.shape[2] != 3:
        hint = " (drop the alpha channel first)" if arr.shape[2] == 4 else ""
        raise ValueError(f"image: expected 3 colour channels, got {arr.shape[2]}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image: empty image of shape {arr.shape}")

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.uint32) * 255 + 32767) // 65535
    elif arr.dtype == np.bool_:
        raise ValueError("image: got a boolean array; did you swap image and mask?")
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("image: contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"image: float images must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
        out = np.rint(arr * 255.0)
    else:
        raise ValueError(f"image: unsupported dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]")
    out = out.astype(np.uint8, copy=False)
    if bgr:
        out = out[:, :, ::-1]
    out = np.ascontiguousarray(out)
    return out if out.flags.writeable else out.copy()  # PIL hands out read-only buffers


def _torch_to_numpy_mask(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    return t.numpy()


def to_binary_mask(mask: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate ``mask`` and return an HxW bool foreground array.

    Accepts bool, {0, 1} integers, 0-255 integers (foreground is >= 128, as the original's ``> 127``),
    and floats in [0, 1] (foreground is >= 0.5); shapes HxW, HxWx1, 1xHxW, 1x1xHxW; PIL mode 1/L/P/I images.
    ``size`` (the image's H, W) settles a 1xNx1 array, which is both a 1xN HxWx1 mask and an Nx1 1xHxW one.
    """
    if _is_pil(mask):
        arr = np.asarray(mask.convert("L") if mask.mode in ("RGB", "RGBA", "LA") else mask)
    elif isinstance(mask, torch.Tensor):
        arr = _torch_to_numpy_mask(mask)
    elif isinstance(mask, np.ndarray):
        arr = mask
    else:
        raise ValueError(f"mask: expected a numpy array, PIL image or torch tensor, got {type(mask).__name__}")
    hw = _mask_hw(arr.shape, size)
    if hw is not None:
        arr = arr.reshape(hw)  # dropping a size-1 axis keeps the pixel order
    if arr.ndim != 2:
        raise ValueError(f"mask: expected shape HxW (single channel), got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"mask: empty mask of shape {arr.shape}")

    if arr.dtype == np.bool_:
        return arr.copy()
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any():
            raise ValueError("mask: contains NaN values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"mask: float masks must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
        return arr >= 0.5
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"mask: integer masks must hold 0/1 or 0-255 values, got range [{lo}, {hi}]")
        return arr > 0 if hi <= 1 else arr >= 128
    raise ValueError(f"mask: unsupported dtype {arr.dtype}")


def mask_max(mask: Any) -> float:
    """The largest value of a mask given as a numpy array, torch tensor or PIL image (0 for unknown types)."""
    if isinstance(mask, torch.Tensor):
        return float(mask.detach().max()) if mask.numel() else 0.0
    arr = np.asarray(mask) if _is_pil(mask) or isinstance(mask, np.ndarray) else None
    return float(arr.max()) if arr is not None and arr.size else 0.0


def check_same_size(image: np.ndarray, mask: np.ndarray) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"mask: size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match image size "
                         f"{image.shape[1]}x{image.shape[0]}")
