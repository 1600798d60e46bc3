"""Non-learned refinement baselines with the refiner call shape ``(image_rgb_uint8, mask) -> HxW uint8 0/255``.

They give the learned refiner something honest to beat on the same inputs:

* ``identity``: the coarse mask itself.
* ``guided``: He et al.'s guided filter (colour guide) applied to the coarse mask, then thresholded at 0.5,
  which snaps the mask edge towards nearby image edges.
* ``morph``: an opening then a closing with an elliptical kernel, which removes specks / fills pinholes and
  rounds the contour, with no use of the image.

Default radii scale with the image (``(H + W) / 2`` times a fraction) so the same call works from thumbnails to
multi-megapixel photos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from ..io.inputs import check_same_size, to_binary_mask, to_rgb_uint8

__all__ = ["BASELINES", "get_baseline", "guided_filter", "guided_refine", "identity", "morph_smooth"]

Baseline = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _prepare(image: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    rgb = to_rgb_uint8(image)
    fg = to_binary_mask(mask)
    check_same_size(rgb, fg)
    return rgb, fg


def _scaled_radius(shape: tuple[int, ...], fraction: float, minimum: int = 1) -> int:
    return max(minimum, int(round(fraction * (shape[0] + shape[1]) / 2)))


def _to_u8(fg: np.ndarray) -> np.ndarray:
    return np.where(fg, 255, 0).astype(np.uint8)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, cv2.CV_64F, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter (He et al., TPAMI 2013) of ``src`` (HxW float) with an HxW or HxWx3 guide in [0, 1].

    Fits ``q = a . I + b`` in each (2r+1)^2 window by ridge regression (``eps`` = regulariser) and averages
    the overlapping fits; box filters make it O(N) whatever the radius.
    """
    if radius < 1 or eps <= 0:
        raise ValueError(f"radius/eps: expected radius >= 1 and eps > 0, got {radius!r}, {eps!r}")
    p = src.astype(np.float64)
    I = guide.astype(np.float64)  # noqa: E741 - the paper's name for the guide
    mean_p = _box(p, radius)
    if I.ndim == 2:
        mean_I = _box(I, radius)
        var_I = _box(I * I, radius) - mean_I * mean_I
        cov_Ip = _box(I * p, radius) - mean_I * mean_p
        a = cov_Ip / (var_I + eps)
        b = mean_p - a * mean_I
        return _box(a, radius) * I + _box(b, radius)
    if I.ndim != 3 or I.shape[2] != 3:
        raise ValueError(f"guide: expected HxW or HxWx3, got shape {I.shape}")
    mean_I = np.stack([_box(I[..., c], radius) for c in range(3)], axis=-1)
    cov_Ip = np.stack([_box(I[..., c] * p, radius) for c in range(3)], axis=-1) - mean_I * mean_p[..., None]
    sigma = np.empty(I.shape[:2] + (3, 3), np.float64)
    for i in range(3):
        for j in range(i, 3):
            v = _box(I[..., i] * I[..., j], radius) - mean_I[..., i] * mean_I[..., j]
            sigma[..., i, j] = sigma[..., j, i] = v
    sigma += eps * np.eye(3)
    a = np.linalg.solve(sigma, cov_Ip[..., None])[..., 0]  # HxWx3
    b = mean_p - np.einsum("hwc,hwc->hw", a, mean_I)
    mean_a = np.stack([_box(a[..., c], radius) for c in range(3)], axis=-1)
    return np.einsum("hwc,hwc->hw", mean_a, I) + _box(b, radius)


def guided_refine(image: Any, mask: Any, radius: int | None = None, eps: float = 1e-3,
                  radius_fraction: float = 0.01) -> np.ndarray:
    """Guided-filter the coarse mask with the colour image as guide, threshold at 0.5; HxW uint8 0/255.

    ``radius`` defaults to ``radius_fraction`` of the mean side (at least 2 px); ``eps`` is for intensities in [0, 1].
    """
    rgb, fg = _prepare(image, mask)
    r = radius if radius is not None else _scaled_radius(fg.shape, radius_fraction, minimum=2)
    q = guided_filter(rgb.astype(np.float64) / 255.0, fg.astype(np.float64), int(r), eps)
    return _to_u8(q >= 0.5)


def morph_smooth(image: Any, mask: Any, radius: int | None = None, radius_fraction: float = 0.004) -> np.ndarray:
    """Open then close the mask with an elliptical (2r+1)^2 kernel; the image is only checked for size.

    ``radius`` defaults to ``radius_fraction`` of the mean side (at least 1 px).
    """
    _, fg = _prepare(image, mask)
    r = radius if radius is not None else _scaled_radius(fg.shape, radius_fraction, minimum=1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(r) + 1, 2 * int(r) + 1))
    m = _to_u8(fg)
    # OpenCV's default morphology border acts as -inf for dilation and +inf for erosion,
    # so objects touching the image border are neither grown nor eaten there.
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    return cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)


def identity(image: Any, mask: Any) -> np.ndarray:
    """The coarse mask itself, as HxW uint8 0/255 (the 'do nothing' baseline)."""
    _, fg = _prepare(image, mask)
    return _to_u8(fg)


BASELINES: dict[str, Baseline] = {"identity": identity, "guided": guided_refine, "morph": morph_smooth}


def get_baseline(name: str) -> Baseline:
    """Look up a baseline by name (``identity``, ``guided``, ``morph``)."""
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"baseline: unknown name {name!r}; expected one of {sorted(BASELINES)}") from None
