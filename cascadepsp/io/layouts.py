"""Folder layouts of data sets: the :class:`Sample` type and how each layout's photos and masks are found.

Layouts:

* original: ``<name>_im.<ext>`` + ``<name>_seg.<ext>`` (coarse mask) + ``<name>_gt.<ext>`` in every folder
  under a root (:func:`find_original`);
* two or three folders (images, masks, ground truth) matched by relative path and file stem
  (:func:`find_by_stem`);
* DAVIS: ``JPEGImages/<seq>/<frame>.jpg``, ``Annotations/<seq>/<frame>.png`` (ground truth) and
  ``coarse_u2netp/<seq>/<frame>.png`` (a real segmenter's coarse mask) (:func:`find_davis`);
* ``images/`` + ``masks/`` folders, the masks being ground truth (:func:`find_images_masks`);
* DUTS: ``DUTS-TR-Image/<stem>.jpg`` + ``DUTS-TR-Mask/<stem>.png`` ground truth and, where written,
  ``coarse_pspnet/<stem>.png`` (the bundled PSPNet's coarse mask) (:func:`find_duts`).

Every file is decoded through :mod:`cascadepsp.io.images`, so the folder tool, the evaluation and both trainers
read a palette, 16-bit or RGBA mask the same way.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .atomic import is_temp_file
from .images import IMAGE_EXTS, MASK_EXTS, PathLike

_IM_RE = re.compile(r"^(?P<name>.+)_im$", re.IGNORECASE)
_SEG_RE = re.compile(r"^(?P<name>.+)_seg$", re.IGNORECASE)
DAVIS_COARSE = "coarse_u2netp"
DUTS_COARSE = "coarse_pspnet"  # PSPNet never saw DUTS-TR; U2-Netp did, so its DUTS-TR masks are too good


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

def resolved(path: PathLike) -> Path:
    """``path`` absolute, with ``~`` expanded and links followed: how folders are compared for containment."""
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
            if not f.startswith(".") and not is_temp_file(f):
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
    return resolved(path)


# ------------------------------------------------------------------------------------------------ layouts

def find_original(root: PathLike, gt: PathLike | None = None, exclude: Sequence[PathLike] = ()) -> Found:
    """``<name>_im`` + ``<name>_seg`` (+ ``<name>_gt``, or ``<gt>/<name>[_gt]``) in every folder under ``root``.

    A missing coarse mask or two files for one role become a :attr:`Sample.problem`; ``exclude``d folders
    (e.g. an output folder inside the input) are not read.
    """
    root = _require_dir(root, "root")
    gt_root = _require_dir(gt, "gt") if gt is not None else None
    skip = [resolved(e) for e in exclude]
    images, masks, gts = defaultdict(list), defaultdict(list), defaultdict(list)
    for rel in _walk(root, [*skip, *([gt_root] if gt_root else [])]):
        ext, parent = rel.suffix.lower(), rel.parent.as_posix()
        if (m := _IM_RE.match(rel.stem)) and ext in IMAGE_EXTS:
            images[(parent, m.group("name"))].append(root / rel)
        elif (m := _SEG_RE.match(rel.stem)) and ext in MASK_EXTS:
            masks[(parent, m.group("name"))].append(root / rel)
        elif rel.stem.lower().endswith("_gt") and ext in MASK_EXTS:
            gts[(parent, rel.stem[:-3])].append(root / rel)
    # --gt DIR holds <name>.<ext> or <name>_gt.<ext>; otherwise the <name>_gt files beside the images are used
    gt_idx = _index(gt_root, MASK_EXTS, [*skip, *_nested(gt_root, [root])]) if gt_root is not None else gts
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
    skip = [resolved(e) for e in exclude]
    roots = [r for r in (im_root, mask_root, gt_root) if r is not None]
    im_idx = _index(im_root, IMAGE_EXTS, [*skip, *_nested(im_root, roots)])
    mask_idx = _index(mask_root, MASK_EXTS, [*skip, *_nested(mask_root, roots)])
    gt_idx = _index(gt_root, MASK_EXTS, [*skip, *_nested(gt_root, roots)]) if gt_root else None
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
    """DUTS-TR photos with their ground-truth masks (``<root>/DUTS-TR-Image`` + ``<root>/DUTS-TR-Mask`` by stem)
    and, where present, a real coarse mask ``<root>/coarse_pspnet/<stem>.png`` (see make_pspnet_masks.py).

    Only the training part exists in our copies; DUTS-TE is the project's reserved final test.
    """
    root = Path(root)
    for sub in (DUTS_IMAGES, DUTS_MASKS):
        if not (root / sub).is_dir():
            raise ValueError(f"duts: {root} has no {sub}/ folder (expected the DUTS-TR layout)")
    found = find_by_stem(root / DUTS_IMAGES, root / DUTS_MASKS)
    coarse = root / DUTS_COARSE
    return [replace(s, mask=_present(coarse / f"{s.image.stem}.png"), gt=s.mask, group="duts")
            for s in found.samples if s.problem is None]


def _present(path: Path) -> Path | None:
    """``path`` if it is a file, else ``None``."""
    return path if path.is_file() else None


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
            if im.suffix.lower() not in IMAGE_EXTS or im.name.startswith("."):
                continue
            gt = root / "Annotations" / seq / f"{im.stem}.png"
            coarse = root / coarse_dir / seq / f"{im.stem}.png"
            samples.append(Sample(f"{seq}/{im.stem}", im, _present(coarse), _present(gt), seq))
    return samples


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted; in the original layout only the ``<name>_im`` photos."""
    files = [f for f in sorted(Path(folder).iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_EXTS
             and not f.name.startswith(".") and not is_temp_file(f)]
    if any(_IM_RE.match(f.stem) for f in files):
        files = [f for f in files if _IM_RE.match(f.stem)]
    return files


def usable(samples: Sequence[Sample], *roles: str) -> list[Sample]:
    """The samples without a problem that have a file for every role (``"mask"``, ``"gt"``)."""
    return [s for s in samples if s.problem is None and s.image is not None
            and all(getattr(s, r) is not None for r in roles)]
