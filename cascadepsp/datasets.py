"""Data sets in one place: the :class:`Sample` type, every folder layout, the train/val split rules and reading.

Layouts:

* original: ``<name>_im.<ext>`` + ``<name>_seg.<ext>`` (coarse mask) + ``<name>_gt.<ext>`` in every folder
  under a root (:func:`find_original`);
* two or three folders (images, masks, ground truth) matched by relative path and file stem
  (:func:`find_by_stem`);
* DAVIS: ``JPEGImages/<seq>/<frame>.jpg``, ``Annotations/<seq>/<frame>.png`` (ground truth) and
  ``coarse_u2netp/<seq>/<frame>.png`` (a real segmenter's coarse mask) (:func:`find_davis`);
* ``images/`` + ``masks/`` folders, the masks being ground truth (:func:`find_images_masks`);
* DUTS: ``DUTS-TR-Image/<stem>.jpg`` + ``DUTS-TR-Mask/<stem>.png`` ground truth (:func:`find_duts`).

Every file is decoded through :mod:`cascadepsp.imageio`, so the folder tool, the evaluation and both trainers
read a palette, 16-bit or RGBA mask the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from . import imageio

PathLike = str | os.PathLike
_IM_RE = re.compile(r"^(?P<name>.+)_im$", re.IGNORECASE)
_SEG_RE = re.compile(r"^(?P<name>.+)_seg$", re.IGNORECASE)
DAVIS_COARSE = "coarse_u2netp"


@dataclass(frozen=True)
class Sample:
    """One image with its optional coarse mask and ground truth; ``problem`` says why pairing failed."""

    name: str  # relative name used in logs, reports and the split, e.g. "street/0001" or "bear/00012"
    image: Path | None
    mask: Path | None = None  # coarse mask (the refiner's input)
    gt: Path | None = None  # ground truth
    group: str = ""  # sub-folder or DAVIS sequence
    problem: str | None = None  # missing or ambiguous files: the sample cannot be used


@dataclass
class Found:
    """What a layout finder found: the samples (sorted by name) and masks that have no image."""

    samples: list[Sample]
    orphans: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ walking

def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def _walk(root: Path, exclude: Sequence[Path]) -> Iterator[Path]:
    """Relative paths of the non-hidden files under ``root``, sorted, skipping excluded sub-trees."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not any(inside((here / d).resolve(), e) for e in exclude))
        for f in sorted(filenames):
            if not f.startswith(".") and not imageio.is_temp_file(f):
                yield (here / f).relative_to(root)


def _index(root: Path, exts: Sequence[str], exclude: Sequence[Path]) -> dict[tuple[str, str], list[Path]]:
    """(relative parent, stem) -> files with one of ``exts`` (in ``exts`` order)."""
    idx: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for rel in _walk(root, exclude):
        if rel.suffix.lower() in exts:
            idx[(rel.parent.as_posix(), rel.stem)].append(root / rel)
    for files in idx.values():
        files.sort(key=lambda p: exts.index(p.suffix.lower()))
    return idx


def _nested(root: Path, others: Sequence[Path]) -> list[Path]:
    """The other input folders that lie below ``root``: not read as part of it."""
    return [o for o in others if o != root and inside(o, root)]


def _one(files: list[Path], what: str) -> tuple[Path | None, str | None]:
    if not files:
        return None, f"missing {what}"
    if len(files) > 1:
        return None, f"ambiguous {what}: " + ", ".join(p.name for p in files)
    return files[0], None


def _name(parent: str, stem: str) -> str:
    return stem if parent == "." else f"{parent}/{stem}"


def _find_gt(gt_idx: dict[tuple[str, str], list[Path]] | None, parent: str, *stems: str
             ) -> tuple[Path | None, str | None]:
    if gt_idx is None:
        return None, None
    for stem in stems:
        if (parent, stem) in gt_idx:
            return _one(gt_idx[(parent, stem)], "ground truth")
    return None, None


def _require_dir(path: PathLike, what: str) -> Path:
    if not Path(path).is_dir():
        raise ValueError(f"{what}: {path} is not a folder")
    return _resolved(path)


# ------------------------------------------------------------------------------------------------ layouts

def find_original(root: PathLike, gt: PathLike | None = None, exclude: Sequence[PathLike] = ()) -> Found:
    """``<name>_im`` + ``<name>_seg`` (+ ``<name>_gt``, or ``<gt>/<name>[_gt]``) in every folder under ``root``.

    A missing coarse mask or two files for one role become a :attr:`Sample.problem`; ``exclude``d folders
    (e.g. an output folder inside the input) are not read.
    """
    root = _require_dir(root, "root")
    gt_root = _require_dir(gt, "gt") if gt is not None else None
    skip = [_resolved(e) for e in exclude]
    images, masks, gts = defaultdict(list), defaultdict(list), defaultdict(list)
    for rel in _walk(root, [*skip, *([gt_root] if gt_root else [])]):
        ext, parent = rel.suffix.lower(), rel.parent.as_posix()
        if (m := _IM_RE.match(rel.stem)) and ext in imageio.IMAGE_EXTS:
            images[(parent, m.group("name"))].append(root / rel)
        elif (m := _SEG_RE.match(rel.stem)) and ext in imageio.MASK_EXTS:
            masks[(parent, m.group("name"))].append(root / rel)
        elif rel.stem.lower().endswith("_gt") and ext in imageio.MASK_EXTS:
            gts[(parent, rel.stem[:-3])].append(root / rel)
    # --gt DIR holds <name>.<ext> or <name>_gt.<ext>; otherwise the <name>_gt files beside the images are used
    gt_idx = _index(gt_root, imageio.MASK_EXTS, [*skip, *_nested(gt_root, [root])]) if gt_root is not None else gts
    samples = []
    for key in sorted(images):
        parent, name = key
        image, problem = _one(images[key], "image")
        mask, mask_problem = _one(masks.get(key, []), "mask")
        gt_path, gt_problem = _find_gt(gt_idx, parent, name, f"{name}_gt")
        group = root.name if parent == "." else parent
        samples.append(Sample(_name(parent, name), image, mask, gt_path, group,
                              problem or mask_problem or gt_problem))
    return Found(samples, [_name(*k) for k in sorted(masks) if k not in images])


def find_by_stem(images: PathLike, masks: PathLike, gt: PathLike | None = None,
                 exclude: Sequence[PathLike] = ()) -> Found:
    """``<images>/<sub>/<stem>.<ext>`` with ``<masks>/<sub>/<stem>.<ext>`` (and the same in ``gt``), recursive."""
    im_root, mask_root = _require_dir(images, "images"), _require_dir(masks, "masks")
    gt_root = _require_dir(gt, "gt") if gt is not None else None
    if im_root == mask_root:
        raise ValueError(f"masks: {masks} is the image folder; for one folder use the original layout "
                         "(<name>_im.jpg + <name>_seg.png) and pass only that folder")
    skip = [_resolved(e) for e in exclude]
    roots = [r for r in (im_root, mask_root, gt_root) if r is not None]
    im_idx = _index(im_root, imageio.IMAGE_EXTS, [*skip, *_nested(im_root, roots)])
    mask_idx = _index(mask_root, imageio.MASK_EXTS, [*skip, *_nested(mask_root, roots)])
    gt_idx = _index(gt_root, imageio.MASK_EXTS, [*skip, *_nested(gt_root, roots)]) if gt_root else None
    samples = []
    for key in sorted(im_idx):
        parent, stem = key
        image, problem = _one(im_idx[key], "image")
        if problem:
            problem = "several images share this name: " + ", ".join(p.name for p in im_idx[key])
        mask, mask_problem = _one(mask_idx.get(key, []), "mask")
        gt_path, gt_problem = _find_gt(gt_idx, parent, stem)
        samples.append(Sample(_name(parent, stem), image, mask, gt_path, im_root.name if parent == "." else parent,
                              problem or mask_problem or gt_problem))
    return Found(samples, [_name(*k) for k in sorted(mask_idx) if k not in im_idx])


def find_images_masks(root: PathLike) -> list[Sample]:
    """``<root>/images`` + ``<root>/masks`` matched by stem; the masks are ground truth (segmenter training)."""
    root = Path(root)
    found = find_by_stem(root / "images", root / "masks")
    return [replace(s, mask=None, gt=s.mask, group=s.name) for s in found.samples if s.problem is None]


DUTS_IMAGES, DUTS_MASKS = "DUTS-TR-Image", "DUTS-TR-Mask"


def find_duts(root: PathLike) -> list[Sample]:
    """DUTS-TR photos with their ground-truth masks (``<root>/DUTS-TR-Image`` + ``<root>/DUTS-TR-Mask`` by stem).

    Only the training part exists in our copies; DUTS-TE is the project's reserved final test.
    """
    root = Path(root)
    for sub in (DUTS_IMAGES, DUTS_MASKS):
        if not (root / sub).is_dir():
            raise ValueError(f"duts: {root} has no {sub}/ folder (expected the DUTS-TR layout)")
    found = find_by_stem(root / DUTS_IMAGES, root / DUTS_MASKS)
    return [replace(s, mask=None, gt=s.mask, group="duts") for s in found.samples if s.problem is None]


def davis_sequences(root: PathLike, folder: str = "JPEGImages") -> list[str]:
    """Sorted sequence names of a DAVIS-layout folder (the sub-folders of ``<root>/<folder>``)."""
    base = Path(root) / folder
    if not base.is_dir():
        raise ValueError(f"root: {root} has no {folder}/ folder (expected the DAVIS layout)")
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def find_davis(root: PathLike, sequences: Sequence[str] | None = None, coarse_dir: str = DAVIS_COARSE
               ) -> list[Sample]:
    """Frames of ``JPEGImages/<seq>`` with their ``Annotations`` ground truth and ``coarse_dir`` mask (each
    ``None`` where absent), for ``sequences`` (default: all, sorted)."""
    root = Path(root)
    known = davis_sequences(root)
    seqs = known if sequences is None else sorted(sequences)
    unknown = sorted(set(seqs) - set(known))
    if unknown:
        raise ValueError(f"sequences: unknown DAVIS sequences {unknown}; available: {', '.join(known)}")
    samples = []
    for seq in seqs:
        for im in sorted((root / "JPEGImages" / seq).iterdir()):
            if im.suffix.lower() not in imageio.IMAGE_EXTS or im.name.startswith("."):
                continue
            gt = root / "Annotations" / seq / f"{im.stem}.png"
            coarse = root / coarse_dir / seq / f"{im.stem}.png"
            samples.append(Sample(f"{seq}/{im.stem}", im, coarse if coarse.is_file() else None,
                                  gt if gt.is_file() else None, seq))
    return samples


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted; in the original layout only the ``<name>_im`` photos."""
    files = [f for f in sorted(Path(folder).iterdir()) if f.is_file() and f.suffix.lower() in imageio.IMAGE_EXTS
             and not f.name.startswith(".") and not imageio.is_temp_file(f)]
    if any(_IM_RE.match(f.stem) for f in files):
        files = [f for f in files if _IM_RE.match(f.stem)]
    return files


def usable(samples: Sequence[Sample], *roles: str) -> list[Sample]:
    """The samples without a problem that have a file for every role (``"mask"``, ``"gt"``)."""
    return [s for s in samples if s.problem is None and s.image is not None
            and all(getattr(s, r) is not None for r in roles)]


# ------------------------------------------------------------------------------------------------- splits

T = TypeVar("T")


VAL_FRACTION = 0.2  # share of a flat folder held out for validation (split_by_name, seed 0)
DEV_FRACTION = 0.1  # share of the rest held back as the dev part (split_by_name, seed 1), as the trainers do
SPLITS = ("all", "train", "val", "dev")  # the parts select_samples can return


# The dev parts of the larger training sets, carved before anything was trained on them (issue 26): the
# DUTS_DEV_COUNT DUTS-TR photos and the 3 DAVIS-2016 training sequences with the smallest sha1 of
# "dev:<name>" (hold_out_by_name). Every design choice and comparison between runs is made on them.
DEV_SALT = "dev"
DUTS_DEV_COUNT = 500
DAVIS_TRAIN_DEV_SEQUENCES = ("bmx-bumps", "surf", "train")  # = hold_out_names(<the 30 sequences>, 3)


def _hash_rank(names: Sequence[str], salt: str | int) -> list[str]:
    return sorted(names, key=lambda n: hashlib.sha1(f"{salt}:{n}".encode()).hexdigest())


def hold_out_names(names: Sequence[str], count: int, salt: str | int = DEV_SALT) -> list[str]:
    """The ``count`` names with the smallest sha1 of ``salt:name``, sorted (stable under reordering)."""
    if not 0 <= count <= len(names):
        raise ValueError(f"count: expected 0..{len(names)}, got {count}")
    return sorted(_hash_rank(names, salt)[:count])


def hold_out_by_name(items: Sequence[T], count: int, salt: str | int = DEV_SALT) -> tuple[list[T], list[T]]:
    """(rest, held): the ``count`` items whose name has the smallest sha1 of ``salt:name`` are held out."""
    held = set(hold_out_names([it.name for it in items], count, salt))
    return [it for it in items if it.name not in held], [it for it in items if it.name in held]


def split_by_name(items: Sequence[T], val_fraction: float = VAL_FRACTION, seed: int = 0) -> tuple[list[T], list[T]]:
    """Deterministic (train, val) split of independent images: the ``val_fraction`` with the smallest sha1 of
    ``seed:name`` go to validation (stable under reordering; adding images moves few others)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")
    return hold_out_by_name(items, int(round(len(items) * val_fraction)), seed)


def split_sequences(seqs: Sequence[str], val_sequences: Sequence[str] | None = None, n_val: int = 3
                    ) -> tuple[list[str], list[str]]:
    """(train, val) of sorted sequence names: ``val_sequences`` if given, else the last ``n_val``."""
    seqs = sorted(seqs)
    if val_sequences is None:
        if not 0 <= n_val < len(seqs):
            raise ValueError(f"n_val: expected 0..{len(seqs) - 1} for {len(seqs)} sequences, got {n_val}")
        val = seqs[len(seqs) - n_val:]
    else:
        unknown = sorted(set(val_sequences) - set(seqs))
        if unknown:
            raise ValueError(f"val_sequences: unknown DAVIS sequences {unknown}; available: {seqs}")
        val = sorted(val_sequences)
    return [s for s in seqs if s not in val], list(val)


def split_dev_sequences(train: Sequence[str], n_dev: int, what: str = "n_dev", where: str = ""
                        ) -> tuple[list[str], list[str]]:
    """(train, dev): the last ``n_dev`` training sequences held back for model selection (both trainers' rule)."""
    train = list(train)
    if n_dev <= 0:
        return train, []
    if n_dev >= len(train):
        raise ValueError(f"{what}: {n_dev} leaves no DAVIS training sequence{where}")
    return train[:-n_dev], train[-n_dev:]


def split_davis(root: PathLike, val_sequences: Sequence[str] | None = None, n_val: int = 3
                ) -> tuple[list[str], list[str]]:
    """(train, val) DAVIS sequence names: ``val_sequences`` if given, else the last ``n_val`` in sorted order."""
    return split_sequences(davis_sequences(root), val_sequences, n_val)


def select_samples(directory: PathLike | None = None, *, davis: PathLike | None = None,
                   sequences: str | None = None, split: str = "all") -> list[Sample]:
    """Evaluation samples (image, coarse mask, ground truth) of a DAVIS root (``sequences``: comma-separated)
    or of a folder in the original layout, optionally its train / val part by :func:`split_by_name`, or the
    dev part the trainers hold back from train (``split="dev"``)."""
    if davis:
        seqs = [s for s in sequences.split(",") if s] if sequences else davis_sequences(davis, DAVIS_COARSE)
        return davis_eval_samples(davis, seqs)
    if directory is None:
        raise ValueError("directory: give a folder of triplets or a DAVIS root")
    samples = original_eval_samples(directory)
    if split == "all":
        return samples
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    train, val = split_by_name(samples)
    if split == "dev":
        return split_by_name(train, DEV_FRACTION, 1)[1]
    return val if split == "val" else train


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The sample-selection options of the data scripts: a flat folder (``dir`` and ``--split``) or DAVIS."""
    parser.add_argument("dir", nargs="?", help="flat folder of <name>_im / _seg / _gt (recursive)")
    parser.add_argument("--split", choices=SPLITS, default="all")
    parser.add_argument("--davis", help="DAVIS-2016 root (JPEGImages/, Annotations/, coarse_u2netp/)")
    parser.add_argument("--sequences", help="comma-separated DAVIS sequences")


def selected_samples(args: argparse.Namespace) -> list[Sample]:
    """:func:`select_samples` for options added by :func:`add_selection_arguments`."""
    return select_samples(args.dir, davis=args.davis, sequences=args.sequences, split=args.split)


def original_eval_samples(directory: PathLike) -> list[Sample]:
    """Samples of an original-layout folder (recursive) that have an image, a coarse mask and a ground truth."""
    if not Path(directory).is_dir():
        raise ValueError(f"directory: not a folder: {directory}")
    samples = [s for s in find_original(directory).samples if s.gt is not None and s.mask is not None]
    _refuse_problems(samples)
    if not samples:
        raise ValueError(f"directory: no <name>_im.jpg|png / <name>_seg.png / <name>_gt.png triplets in "
                         f"{directory}")
    return samples


def davis_eval_samples(root: PathLike, sequences: Sequence[str] | None = None,
                       coarse_dir: str = DAVIS_COARSE) -> list[Sample]:
    """DAVIS frames of ``sequences`` that have a ``coarse_dir`` mask; each must have its ground truth."""
    if not (Path(root) / coarse_dir).is_dir():
        raise ValueError(f"davis: no coarse-mask folder {Path(root) / coarse_dir}")
    available = davis_sequences(root, coarse_dir)
    unknown = [s for s in (sequences or []) if s not in available]
    if unknown:
        raise ValueError(f"sequences: unknown {unknown}; available: {', '.join(available)}")
    samples = [s for s in find_davis(root, sequences or available, coarse_dir) if s.mask is not None]
    for s in samples:
        if s.gt is None:
            raise ValueError(f"davis: missing ground truth Annotations/{s.name}.png for coarse mask {s.mask}")
    return samples


def _refuse_problems(samples: Sequence[Sample]) -> None:
    bad = [s for s in samples if s.problem is not None]
    if bad:
        raise ValueError(f"{bad[0].name}: {bad[0].problem}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))


# ------------------------------------------------------------------------------------------------ reading

def align_to_image(arr: np.ndarray, header: imageio.ImageHeader, what: str) -> tuple[np.ndarray, bool]:
    """A mask matching the upright photo is used as is; one matching the stored (raw) photo is rotated too."""
    size = (arr.shape[1], arr.shape[0])
    if size == header.size:
        return arr, False
    if size == header.stored_size:
        return imageio.orient(arr, header.orientation), True
    raise ValueError(f"{what} size {size[0]}x{size[1]} does not match image size {header.size[0]}x{header.size[1]}")


def fit_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) scaled down so the long side is at most ``max_side`` (unchanged when it already fits)."""
    if not max_side or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize_to(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``arr`` resized to ``size`` (h, w): area averaging when shrinking, bilinear when growing."""
    if arr.shape[:2] == tuple(size):
        return arr
    interp = cv2.INTER_AREA if size[0] < arr.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(arr), (size[1], size[0]), interpolation=interp)


def read_rgb(path: PathLike, max_side: int | None = None) -> tuple[np.ndarray, imageio.ImageHeader]:
    """Upright HxWx3 uint8 RGB (area-downscaled to long side ``max_side`` when given) and the photo's header."""
    try:
        rgb, header = imageio.read_image(path)
    except imageio.ImageReadError as e:
        raise imageio.ImageReadError(f"{path}: {e}") from e
    return resize_to(rgb, fit_size(*rgb.shape[:2], max_side)), header


def read_soft_mask(path: PathLike, header: imageio.ImageHeader, size: tuple[int, int] | None = None,
                   what: str = "mask") -> np.ndarray:
    """HxW uint8 0-255 mask in the photo's upright frame (see :meth:`MaskFile.soft`), resized to ``size``."""
    mf = _read_mask(path)
    soft, _ = align_to_image(mf.soft(), header, f"{what} {path}")
    return soft if size is None else resize_to(soft, size)


def read_label_ids(path: PathLike, header: imageio.ImageHeader | None = None) -> np.ndarray:
    """HxW int32 label ids (palette indices, grey values, colours numbered) in the photo's upright frame."""
    ids = _read_mask(path).label_ids()
    return ids if header is None else align_to_image(ids, header, f"mask {path}")[0]


def read_binary(path: PathLike, header: imageio.ImageHeader | None = None) -> np.ndarray:
    """HxW bool foreground (see :meth:`MaskFile.binary`) in the photo's upright frame."""
    fg = _read_mask(path).binary()
    return fg if header is None else align_to_image(fg, header, f"mask {path}")[0]


def _read_mask(path: PathLike) -> imageio.MaskFile:
    try:
        return imageio.read_mask(path)
    except imageio.ImageReadError as e:
        raise imageio.ImageReadError(f"{path}: {e}") from e
