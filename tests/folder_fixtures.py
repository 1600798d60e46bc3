"""Generated folders and a deterministic stand-in refiner for the folder-tool tests (jobs, Ray, CLI, properties)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np

from cascadepsp.io import atomic


class ImageRefiner:
    """A deterministic stand-in for the network: 'refines' to the bright pixels near the coarse mask.

    The generated photos are bright exactly on the object, so a correctly aligned run must reproduce the
    ground truth. ``fail_on`` raises ``KeyboardInterrupt`` on that call (a kill in the middle of a run).
    """

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def refine_probability(self, image, mask, fast=False, L=900, bgr=False):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt("injected")
        assert image.shape[:2] == mask.shape and image.dtype == np.uint8 and image.shape[2] == 3
        near = cv2.dilate(np.asarray(mask, np.uint8), np.ones((7, 7), np.uint8)) > 0
        return ((image.mean(axis=2) > 128) & near).astype(np.float32) * 0.9 + 0.05

    def refine(self, image, mask, fast=False, L=900, threshold=None, bgr=False):
        prob = self.refine_probability(image, mask, fast, L, bgr)
        if threshold is not None:
            return np.where(prob >= threshold, 255, 0).astype(np.uint8)
        return (prob * 255).astype(np.uint8)


def scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo, ground truth 0/255, coarse mask 0/255): a bright rectangle on a dark background."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.uint8)
    gt[h // 5: h - h // 4, w // 4: w - w // 5] = 255
    photo = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    photo[gt > 0] = rng.integers(200, 255, (int((gt > 0).sum()), 3), dtype=np.uint8)
    coarse = cv2.dilate(gt, np.ones((5, 5), np.uint8))  # a too-fat coarse mask
    return photo, gt, coarse


SIZES = [(48, 64), (56, 72), (64, 48), (72, 96), (50, 50)]


def original_layout(root: Path, n: int = 5) -> dict[str, tuple[int, int]]:
    """``<name>_im.png`` + ``<name>_seg.png`` + ``<name>_gt.png``; the fifth one in a sub-folder."""
    sizes = {}
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        photo, gt, coarse = scene(h, w, i)
        sub = root / ("part2" if i == 4 else "")
        sub.mkdir(parents=True, exist_ok=True)
        name = f"img{i:02d}"
        cv2.imwrite(str(sub / f"{name}_im.png"), photo[:, :, ::-1])
        cv2.imwrite(str(sub / f"{name}_seg.png"), coarse)
        cv2.imwrite(str(sub / f"{name}_gt.png"), gt)
        sizes[name if i != 4 else f"part2/{name}"] = (w, h)
    return sizes


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def no_temp_files(root: Path) -> bool:
    return not any(atomic.is_temp_file(p) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------------- end to end
