"""Find image + mask pairs in dataset folders, split them into train/val, and serve augmented crops.

Layouts (detected per root): DAVIS (``JPEGImages/<seq>/*.jpg`` + ``Annotations/<seq>/*.png``), the
``<name>_im.jpg`` + ``<name>_gt.png`` pairs of the CascadePSP test sets, and ``images/`` + ``masks/`` with
matching stems. The split is the refiner's (so neither model validates on the other's training images): DAVIS
holds out the last ``val_sequences`` sequences in sorted order (frames of one sequence are correlated); other
layouts use :func:`cascadepsp.io.splits.split_by_name` (the ``val_fraction`` of names with the smallest hash).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cascadepsp.io import images, layouts, splits
from cascadepsp.io import images as imageio
from cascadepsp.io.layouts import Sample

from .augment import IGNORE_INDEX, SegAugmentConfig, augment_pair, composite_pair, normalize

MASK_MODES = ("binary", "labels")
SPLITS = ("train", "dev", "val", "all")
DEV_SEED = 1  # the refiner trainer's human_seg dev split seed (its split_seed + 1): both models hold back the same


def detect_layout(root: Path) -> str:
    """``"davis"``, ``"pairs"`` (``_im``/``_gt``) or ``"folders"`` (``images/`` + ``masks/``)."""
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        return "davis"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folders"
    if any(root.glob("*_gt.*")):
        return "pairs"
    raise ValueError(f"data root {root}: expected DAVIS (JPEGImages/ + Annotations/), <name>_im.jpg + "
                     "<name>_gt.png pairs, or images/ + masks/ folders")


def _davis_samples(root: Path, split: str, sequences: Sequence[str] | None, val_sequences: int,
                   frame_step: int, dev_sequences: int) -> list[Sample]:
    all_seqs = layouts.davis_sequences(root, "Annotations")
    val = all_seqs[len(all_seqs) - val_sequences:] if val_sequences > 0 else []
    train, dev = splits.split_dev_sequences([s for s in all_seqs if s not in val], dev_sequences, "dev_sequences",
                                              f" in {root}")
    parts = {"train": train, "dev": dev, "val": val, "all": all_seqs}
    chosen = parts[split]
    if sequences is not None:
        unknown = set(sequences) - set(all_seqs)
        if unknown:
            raise ValueError(f"sequences: {sorted(unknown)} not found in {root / 'Annotations'}")
        chosen = [s for s in chosen if s in set(sequences)]
    frames = [s for s in layouts.find_davis(root, chosen) if s.gt is not None]
    return [s for seq in chosen for s in [f for f in frames if f.group == seq][::frame_step]]


def find_samples(root: str | Path, split: str = "train", *, sequences: Sequence[str] | None = None,
                 val_sequences: int = 3, val_fraction: float = 0.2, frame_step: int = 1, dev_sequences: int = 0,
                 dev_fraction: float = 0.0) -> list[Sample]:
    """All (image, ground truth) samples of ``split`` (``train``/``dev``/``val``/``all``) under ``root``, in a
    stable order. ``dev`` is held back from the training part for model selection: the last ``dev_sequences``
    DAVIS training sequences, or ``dev_fraction`` of the other layouts' training names (the refiner's dev)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data root: {root} is not a directory")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if frame_step < 1:
        raise ValueError(f"frame_step: expected an integer >= 1, got {frame_step!r}")
    layout = detect_layout(root)
    if layout == "davis":
        return _davis_samples(root, split, sequences, val_sequences, frame_step, dev_sequences)
    if layout == "pairs":
        samples = [s for s in layouts.find_original(root).samples if s.image is not None and s.gt is not None]
    else:
        samples = layouts.find_images_masks(root)
    if split == "all":
        return samples
    train, val = splits.split_by_name(samples, val_fraction)
    train, dev = splits.split_by_name(train, dev_fraction, DEV_SEED) if dev_fraction > 0 else (train, [])
    return list({"train": train, "dev": dev, "val": val}[split])


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as upright HxWx3 uint8 RGB (``ImageReadError``, a ``ValueError``, if unreadable)."""
    return images.read_rgb(path)[0]


def load_mask(path: str | Path, mode: str = "binary", image: str | Path | None = None) -> np.ndarray:
    """Read a mask as HxW uint8 class ids, in the frame of ``image`` (its upright photo) when given.

    ``binary``: foreground by :meth:`cascadepsp.io.images.MaskFile.binary` -> 1, else 0. ``labels``: palette
    indices, grey values or colours as class ids (255 stays the ignore index).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask_mode: expected one of {MASK_MODES}, got {mode!r}")
    header = imageio.read_image_header(image) if image is not None else None
    if mode == "binary":
        return images.read_binary(path, header).astype(np.uint8)
    ids = images.read_label_ids(path, header)
    if ids.max(initial=0) > IGNORE_INDEX or ids.min(initial=0) < 0:
        raise ValueError(f"mask: label ids in {path} must lie in 0..255")
    return ids.astype(np.uint8)


class SegmentationDataset(Dataset):
    """Augmented, normalised training crops: ``(3xSxS float32 image, SxS int64 labels)`` for S = crop."""

    def __init__(self, samples: Sequence[Sample], crop_size: int, base_size: int, mask_mode: str = "binary",
                 augment: SegAugmentConfig | None = None, composite_prob: float = 0.0,
                 backgrounds: Sequence[np.ndarray] = ()) -> None:
        if not samples:
            raise ValueError("samples: the training set is empty")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode: expected one of {MASK_MODES}, got {mask_mode!r}")
        if not 0.0 <= composite_prob <= 1.0:
            raise ValueError(f"composite_prob: expected a probability in [0, 1], got {composite_prob}")
        if composite_prob and mask_mode != "binary":
            raise ValueError("composite_prob: copy-paste compositing needs mask_mode='binary'")
        self.composite_prob = composite_prob
        self.backgrounds = list(backgrounds)  # object-free photos (label 0 everywhere)
        self.samples = list(samples)
        self.crop_size = crop_size
        self.base_size = base_size
        self.mask_mode = mask_mode
        self.augment = augment or SegAugmentConfig()

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        return load_image(sample.image), load_mask(sample.gt, self.mask_mode, sample.image)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self._load(index)
        # torch's RNG is seeded per DataLoader worker (and by the loader's generator), so draws differ per worker.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        if self.composite_prob and rng.random() < self.composite_prob:
            # onto a background photo (half the time, when there are any) or another training image with its labels
            if self.backgrounds and (len(self.samples) < 2 or rng.random() < 0.5):
                bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
                bg_mask = np.zeros(bg.shape[:2], np.uint8)
            else:
                other = (index + 1 + int(rng.integers(max(1, len(self.samples) - 1)))) % len(self.samples)
                bg, bg_mask = self._load(other)
            pasted = composite_pair(image, mask, bg, bg_mask, rng)
            if pasted is not None:
                image, mask = pasted
        image, mask = augment_pair(image, mask, rng, self.crop_size, self.base_size, self.augment)
        return normalize(image), torch.from_numpy(mask.astype(np.int64))
