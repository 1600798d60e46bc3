"""Generated image + mask folders (coloured shapes on textured backgrounds) for smoke tests and demos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def shape_pair(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image with a warm-coloured random polygon or ellipse on a cool noisy background, and its 0/255 mask."""
    base = np.array([rng.uniform(20, 90), rng.uniform(60, 140), rng.uniform(140, 230)], np.float32)
    image = base + rng.normal(0, 18, (height, width, 3)).astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    r = rng.uniform(0.15, 0.35) * min(height, width)
    if rng.random() < 0.5:
        axes = (int(r), int(r * rng.uniform(0.4, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    else:
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.5, 1.0, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 255)
    fg = np.array([rng.uniform(190, 250), rng.uniform(60, 160), rng.uniform(10, 70)], np.float32)
    image = np.where(mask[:, :, None] > 0, fg + rng.normal(0, 18, (height, width, 3)), image)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _write(path: Path, rgb_or_grey: np.ndarray) -> None:
    arr = rgb_or_grey[:, :, ::-1] if rgb_or_grey.ndim == 3 else rgb_or_grey
    if not cv2.imwrite(str(path), arr):
        raise OSError(f"cannot write {path}")


def write_shapes_dataset(root: str | Path, count: int = 10, size: tuple[int, int] = (72, 96), layout: str = "pairs",
                         seed: int = 0, sequences: int = 4) -> Path:
    """Write ``count`` generated pairs under ``root`` as ``pairs`` (``<name>_im.png`` + ``_gt.png``) or ``davis``
    (``JPEGImages/<seq>/`` + ``Annotations/<seq>/``, spread over ``sequences`` sequences)."""
    if layout not in ("pairs", "davis"):
        raise ValueError(f"layout: expected 'pairs' or 'davis', got {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = shape_pair(rng, *size)
        if layout == "pairs":
            root.mkdir(parents=True, exist_ok=True)
            _write(root / f"s{i:03d}_im.png", image)
            _write(root / f"s{i:03d}_gt.png", mask)
        else:
            seq = f"seq{i % sequences}"
            (root / "JPEGImages" / seq).mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / seq).mkdir(parents=True, exist_ok=True)
            _write(root / "JPEGImages" / seq / f"{i:05d}.jpg", image)
            _write(root / "Annotations" / seq / f"{i:05d}.png", mask)
    return root
