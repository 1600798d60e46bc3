"""Find image + mask pairs in dataset folders, split them into train/val, and serve augmented crops.

Layouts (detected per root): DAVIS (``JPEGImages/<seq>/*.jpg`` + ``Annotations/<seq>/*.png``), the
``<name>_im.jpg`` + ``<name>_gt.png`` pairs of the CascadePSP test sets, and ``images/`` + ``masks/`` with
matching stems. The split is the refiner's (so neither model validates on the other's training images): DAVIS
holds out the last ``val_sequences`` sequences in sorted order (frames of one sequence are correlated); other
layouts use :func:`cascadepsp.data.split_by_name` (the ``val_fraction`` of names with the smallest hash).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from cascadepsp.data import split_by_name

from .augment import IGNORE_INDEX, AugmentConfig, augment_pair, normalize

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_MODES = ("binary", "labels")
SPLITS = ("train", "val", "all")


@dataclass(frozen=True)
class Sample:
    """One image with its mask; ``group`` is the DAVIS sequence or the pair name (the unit of the split)."""

    name: str
    image: Path
    mask: Path
    group: str


def detect_layout(root: Path) -> str:
    """``"davis"``, ``"pairs"`` (``_im``/``_gt``) or ``"folders"`` (``images/`` + ``masks/``)."""
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        return "davis"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folders"
    if any(root.glob("*_gt.png")):
        return "pairs"
    raise ValueError(f"data root {root}: expected DAVIS (JPEGImages/ + Annotations/), <name>_im.jpg + "
                     "<name>_gt.png pairs, or images/ + masks/ folders")


def _image_for(stem_path: Path) -> Path | None:
    for ext in IMAGE_EXTS:
        for candidate in (stem_path.with_name(stem_path.name + ext), stem_path.with_name(stem_path.name + ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def _davis_samples(root: Path, split: str, sequences: Sequence[str] | None, val_sequences: int,
                   frame_step: int) -> list[Sample]:
    all_seqs = sorted(p.name for p in (root / "Annotations").iterdir() if p.is_dir())
    val = set(all_seqs[len(all_seqs) - val_sequences:]) if val_sequences > 0 else set()
    chosen = [s for s in all_seqs if (split == "all" or (s in val) == (split == "val"))]
    if sequences is not None:
        unknown = set(sequences) - set(all_seqs)
        if unknown:
            raise ValueError(f"sequences: {sorted(unknown)} not found in {root / 'Annotations'}")
        chosen = [s for s in chosen if s in set(sequences)]
    samples = []
    for seq in chosen:
        masks = sorted((root / "Annotations" / seq).glob("*.png"))[::frame_step]
        for mask in masks:
            image = _image_for(root / "JPEGImages" / seq / mask.stem)
            if image is not None:
                samples.append(Sample(f"{seq}/{mask.stem}", image, mask, seq))
    return samples


def _named_samples(pairs: list[tuple[str, Path, Path]], split: str, val_fraction: float) -> list[Sample]:
    samples = [Sample(name, image, mask, name) for name, image, mask in sorted(pairs)]
    if split == "all":
        return samples
    train, val = split_by_name(samples, val_fraction)  # duck-typed: only ``.name`` is used
    return list(val if split == "val" else train)


def find_samples(root: str | Path, split: str = "train", *, sequences: Sequence[str] | None = None,
                 val_sequences: int = 3, val_fraction: float = 0.2, frame_step: int = 1) -> list[Sample]:
    """All (image, mask) pairs of ``split`` (``train``/``val``/``all``) under ``root``, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data root: {root} is not a directory")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if frame_step < 1:
        raise ValueError(f"frame_step: expected an integer >= 1, got {frame_step!r}")
    layout = detect_layout(root)
    if layout == "davis":
        return _davis_samples(root, split, sequences, val_sequences, frame_step)
    pairs = []
    if layout == "pairs":
        for mask in root.glob("*_gt.png"):
            name = mask.name[: -len("_gt.png")]
            image = _image_for(root / f"{name}_im")
            if image is not None:
                pairs.append((name, image, mask))
    else:
        for mask in (root / "masks").glob("*.png"):
            image = _image_for(root / "images" / mask.stem)
            if image is not None:
                pairs.append((mask.stem, image, mask))
    return _named_samples(pairs, split, val_fraction)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (``ValueError`` if unreadable)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"image: cannot read {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def load_mask(path: str | Path, mode: str = "binary") -> np.ndarray:
    """Read a mask as HxW uint8 class ids.

    ``binary``: foreground (>= 128, or 1 in a 0/1 mask) -> 1, else 0. ``labels``: palette indices or grey
    values are kept as class ids (255 stays the ignore index).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask_mode: expected one of {MASK_MODES}, got {mode!r}")
    with Image.open(path) as im:
        if mode == "labels" and im.mode == "P":
            arr = np.asarray(im)
        elif im.mode in ("RGB", "RGBA", "LA", "P"):
            arr = np.asarray(im.convert("L"))
        else:
            arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"mask: {path} is not a single-channel image (shape {arr.shape})")
    if mode == "binary":
        threshold = 1 if arr.max(initial=0) <= 1 else 128
        return (arr >= threshold).astype(np.uint8)
    if arr.max(initial=0) > IGNORE_INDEX or arr.min(initial=0) < 0:
        raise ValueError(f"mask: label ids in {path} must lie in 0..255")
    return arr.astype(np.uint8)


class SegmentationDataset(Dataset):
    """Augmented, normalised training crops: ``(3xSxS float32 image, SxS int64 labels)`` for S = crop."""

    def __init__(self, samples: Sequence[Sample], crop_size: int, base_size: int, mask_mode: str = "binary",
                 augment: AugmentConfig | None = None) -> None:
        if not samples:
            raise ValueError("samples: the training set is empty")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode: expected one of {MASK_MODES}, got {mask_mode!r}")
        self.samples = list(samples)
        self.crop_size = crop_size
        self.base_size = base_size
        self.mask_mode = mask_mode
        self.augment = augment or AugmentConfig()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        sample = self.samples[index]
        image = load_image(sample.image)
        mask = load_mask(sample.mask, self.mask_mode)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"mask: {sample.mask} is {mask.shape[::-1]} (WxH) but {sample.image} is "
                             f"{image.shape[1::-1]}")
        # torch's RNG is seeded per DataLoader worker (and by the loader's generator), so draws differ per worker.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        image, mask = augment_pair(image, mask, rng, self.crop_size, self.base_size, self.augment)
        return normalize(image), torch.from_numpy(mask.astype(np.int64))
