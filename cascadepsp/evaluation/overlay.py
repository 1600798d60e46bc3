"""A before/after picture for judging a refinement at a glance: image | coarse mask | refined mask.

Masks are shown as a translucent tint with their outline drawn on top, so both the region and the exact
boundary are visible; label maps get one colour per id.
"""

from __future__ import annotations

import cv2
import numpy as np

TINT = np.array([30, 144, 255], np.float32)  # foreground tint (RGB)
OUTLINE = (255, 230, 0)  # boundary colour (RGB)
GAP = 6  # pixels between panels
TITLES = ("image", "coarse", "refined")


def label_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours; id 0 (background) is black."""
    hues = (np.arange(n) * 0.618034) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)[None]
    colors = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    colors[0] = 0
    return colors


def _tint_binary(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    alpha = (mask.astype(np.float32) / (255.0 if mask.dtype != np.bool_ else 1.0))[:, :, None] * 0.5
    out = image.astype(np.float32) * (1 - alpha) + TINT * alpha
    out = np.clip(out, 0, 255).astype(np.uint8)
    fg = (mask > 128) if mask.dtype != np.bool_ else mask
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    cv2.drawContours(out, contours, -1, OUTLINE, thickness)
    return out


def _tint_labels(image: np.ndarray, ids: np.ndarray) -> np.ndarray:
    uniq, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    colors = label_colors(max(len(uniq), 2)).astype(np.float32)
    if uniq[0] != 0:  # keep black for background only
        inverse = inverse + 1
        colors = label_colors(len(uniq) + 1).astype(np.float32)
    alpha = np.where(ids != 0, 0.5, 0.0).astype(np.float32)[:, :, None]
    out = np.clip(image.astype(np.float32) * (1 - alpha) + colors[inverse] * alpha, 0, 255).astype(np.uint8)
    edge = np.zeros(ids.shape, bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    out[edge] = OUTLINE
    return out


def _title(panel: np.ndarray, text: str) -> None:
    scale = max(0.35, panel.shape[1] / 900)
    org = (int(6 * scale) + 2, int(22 * scale) + 2)
    cv2.putText(panel, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(2, int(4 * scale)), cv2.LINE_AA)
    cv2.putText(panel, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(1.5 * scale)),
                cv2.LINE_AA)


def make_overlay(image: np.ndarray, coarse: np.ndarray, refined: np.ndarray, labels: bool = False,
                 max_width: int = 2048) -> np.ndarray:
    """Side-by-side RGB picture (image | coarse | refined), scaled down so its width is at most ``max_width``.

    Binary masks: bool or 0-255 uint8 (soft values shown as partial tint). ``labels=True``: integer id maps.
    """
    h, w = image.shape[:2]
    if coarse.shape[:2] != (h, w) or refined.shape[:2] != (h, w):
        raise ValueError(f"coarse/refined: expected masks of size {w}x{h}, got {coarse.shape} and {refined.shape}")
    if max_width < 3 * 16 + 2 * GAP:
        raise ValueError(f"max_width: expected at least {3 * 16 + 2 * GAP}, got {max_width}")
    pw = min(w, (max_width - 2 * GAP) // 3)
    ph = max(1, round(h * pw / w))
    if pw != w:
        image = cv2.resize(image, (pw, ph), interpolation=cv2.INTER_AREA)
        if labels:
            coarse = cv2.resize(coarse.astype(np.int32), (pw, ph), interpolation=cv2.INTER_NEAREST)
            refined = cv2.resize(refined.astype(np.int32), (pw, ph), interpolation=cv2.INTER_NEAREST)
        else:
            coarse = cv2.resize(coarse.astype(np.uint8) * (255 if coarse.dtype == np.bool_ else 1), (pw, ph),
                                interpolation=cv2.INTER_AREA)
            refined = cv2.resize(refined.astype(np.uint8) * (255 if refined.dtype == np.bool_ else 1), (pw, ph),
                                 interpolation=cv2.INTER_AREA)
    tint = _tint_labels if labels else _tint_binary
    panels = [image.copy(), tint(image, coarse), tint(image, refined)]
    canvas = np.full((ph, 3 * pw + 2 * GAP, 3), 255, np.uint8)
    for i, (panel, title) in enumerate(zip(panels, TITLES, strict=True)):
        _title(panel, title)
        canvas[:, i * (pw + GAP): i * (pw + GAP) + pw] = panel
    return canvas
