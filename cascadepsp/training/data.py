"""Training data for the refinement module: sources, splits, augmented crops and fixed validation examples.

Every random choice of a training sample comes from a ``numpy`` Generator seeded by
``(seed, epoch, index)``, so a sample (and hence a whole run) does not depend on the number of
DataLoader workers and a resumed run sees exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..configs import JsonConfig
from ..inference.reference import normalise_u8
from ..io.images import IMAGE_EXTS, fit_size, read_rgb, read_soft_mask
from ..io.layouts import Sample, find_davis, find_duts, find_original
from ..io.splits import evenly_spaced
from .perturb import LowResConfig, PerturbConfig, lowres_mask, perturb_mask

# ---------------------------------------------------------------------------------------------- sources


def list_im_gt(root: str | os.PathLike) -> list[Sample]:
    """Training samples of an original-layout folder: ``<name>_im`` with ``<name>_gt`` (``_seg`` kept as mask)."""
    if not Path(root).is_dir():
        raise ValueError(f"root: no such folder {root}")
    samples = [s for s in find_original(root).samples if s.image is not None and s.gt is not None]
    if not samples:
        raise ValueError(f"root: no <name>_im.jpg / <name>_gt.png pairs in {root}")
    return samples


def list_davis(root: str | os.PathLike, sequences: Sequence[str] | None = None) -> list[Sample]:
    """Training samples of DAVIS ``sequences``: frames with a ground truth (the ``coarse_u2netp`` mask attached)."""
    return [s for s in find_davis(root, sequences) if s.gt is not None]


def list_duts(root: str | os.PathLike) -> list[Sample]:
    """Training samples of a DUTS-TR folder (``DUTS-TR-Image`` + ``DUTS-TR-Mask``), with the bundled PSPNet's
    coarse masks (``coarse_pspnet/``) attached where they were written."""
    samples = find_duts(root)
    if not samples:
        raise ValueError(f"duts: no DUTS-TR-Image / DUTS-TR-Mask pairs in {root}")
    return samples


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class Decoded:
    """Decoded arrays of one sample, all the same size: RGB image, GT 0-255 and optional real coarse mask."""

    image: np.ndarray
    gt: np.ndarray
    coarse: np.ndarray | None = None


class ImageStore:
    """Decoded, size-capped arrays of a list of items, cached on first use (or all at once with ``preload``).

    Samples repeated in the list (to weight a source up) share one cache entry. Preload in the main process
    before DataLoader workers fork, so they share the cache instead of each decoding their own copy.
    """

    def __init__(self, items: Sequence[Sample], max_side: int | None = 640) -> None:
        self.items = list(items)
        self.max_side = max_side
        self._cache: dict[Sample, Decoded] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, it: Sample) -> Decoded:
        image, header = read_rgb(it.image, self.max_side)
        size = image.shape[:2]
        gt = read_soft_mask(it.gt, header, size, "ground truth")
        coarse = read_soft_mask(it.mask, header, size) if it.mask is not None else None
        return Decoded(image, gt, coarse)

    def get(self, i: int) -> Decoded:
        it = self.items[i]
        got = self._cache.get(it)
        if got is None:
            got = self._cache[it] = self._load(it)
        return got

    def preload(self, threads: int = 4) -> None:
        """Decode every item now (decoders release the GIL, so a few threads help)."""
        todo = list(dict.fromkeys(it for it in self.items if it not in self._cache))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for it, loaded in zip(todo, pool.map(self._load, todo), strict=True):
                self._cache[it] = loaded

    def nbytes(self) -> int:
        return sum(x.image.nbytes + x.gt.nbytes + (0 if x.coarse is None else x.coarse.nbytes)
                   for x in self._cache.values())


def load_backgrounds(folder: str | os.PathLike | None, max_side: int = 1024) -> list[np.ndarray]:
    """Every image of ``folder`` as RGB, downscaled to long side ``max_side`` (the source photos are huge)."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"backgrounds: no such folder {folder}")
    paths = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
    if not paths:
        raise ValueError(f"backgrounds: no images in {folder}")
    out = []
    for p in paths:
        # IMREAD_REDUCED_* decodes big JPEGs at 1/2, 1/4 or 1/8 size directly, which is much faster.
        full = max(cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_8).shape[:2]) * 8
        flag = cv2.IMREAD_COLOR
        for f, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                           (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if full // f >= max_side:
                flag = reduced
                break
        bgr = cv2.imread(str(p), flag)
        h, w = fit_size(*bgr.shape[:2], max_side)
        if (h, w) != bgr.shape[:2]:
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


# ---------------------------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentConfig(JsonConfig):
    """Knobs of the training-sample pipeline. Colour defaults are the original's; the rest is ours."""

    crop_size: int = 224
    scale_range: tuple[float, float] = (0.5, 1.5)  # log-uniform zoom of the (size-capped) source; never pads
    crop_tries: int = 5  # random windows tried before centring one on a boundary pixel
    keep_uniform_prob: float = 0.05  # chance to accept an all-foreground / all-background crop
    min_fg_fraction: float = 0.02  # a crop counts as mixed when its foreground share is in [min, 1 - min]
    hflip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.05
    saturation: float = 0.05
    grayscale_prob: float = 0.1
    composite_prob: float = 0.5  # copy-paste the object onto another picture
    background_photo_prob: float = 0.5  # ... a background photo (else another item's image)
    paste_scale: tuple[float, float] = (0.4, 1.1)
    paste_rotation: float = 30.0  # degrees, uniform in +-
    paste_brightness: float = 0.2  # extra brightness jitter of the pasted object alone
    feather_prob: float = 0.3  # blur the pasted alpha a little (sigma in feather_sigma)
    feather_sigma: tuple[float, float] = (0.3, 1.0)
    real_coarse_prob: float = 0.2  # use the source's real coarse mask when present and not too wrong
    real_coarse_min_iou: float = 0.7
    lowres_prob: float = 0.0  # synthetic coarse masks made by lowres_mask (else the original's perturbation)
    # Share of crops cut from the photo as the global step sees it: the whole (composited) photo and its coarse
    # mask resized to long side global_L (bicubic / bilinear up, area down, as cascadepsp.inference.reference), cropped
    # at that scale, the mask soft where interpolation made it so. Small photos are upsampled 2x or more there.
    global_view_prob: float = 0.0
    global_L: int = 900
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    lowres: LowResConfig = field(default_factory=LowResConfig)

    def __post_init__(self) -> None:
        if self.crop_size < 8 or self.crop_size % 8:
            raise ValueError(f"crop_size: expected a multiple of 8 >= 8, got {self.crop_size}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < lo <= hi, got {self.scale_range}")
        for name in ("keep_uniform_prob", "hflip_prob", "grayscale_prob", "composite_prob",
                     "background_photo_prob", "feather_prob", "real_coarse_prob", "lowres_prob",
                     "global_view_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {v}")



def _gray(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def color_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness / contrast / saturation in random order, then random grayscale (as torchvision's, hue 0)."""
    x = img.astype(np.float32)
    ops = []
    if cfg.brightness:
        ops.append(("b", rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)))
    if cfg.contrast:
        ops.append(("c", rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)))
    if cfg.saturation:
        ops.append(("s", rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)))
    for k in rng.permutation(len(ops)):
        kind, f = ops[k]
        if kind == "b":
            x = x * f
        elif kind == "c":
            m = float(_gray(x).mean())
            x = (x - m) * f + m
        else:
            g = _gray(x)[..., None]
            x = (x - g) * f + g
        np.clip(x, 0, 255, out=x)
    if rng.random() < cfg.grayscale_prob:
        x = np.repeat(_gray(x)[..., None], 3, axis=2)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def boundary_pixels(mask: np.ndarray) -> np.ndarray:
    """(N, 2) array of (y, x) of foreground pixels touching background (the inner boundary)."""
    fg = (mask > 127).astype(np.uint8)
    inner = fg - cv2.erode(fg, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return np.argwhere(inner > 0)


def _is_mixed(window: np.ndarray, min_fraction: float) -> bool:
    share = np.count_nonzero(window > 127) / window.size
    return 0 < share and share < 1 and min_fraction <= share <= 1 - min_fraction


def random_crop(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                extra: np.ndarray | None = None, scale: float | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random-scale square crop resized to ``crop_size``, then a random horizontal flip.

    (Nearly) all-foreground / all-background windows are rejected (kept with ``keep_uniform_prob``); after
    ``crop_tries`` failures the window is centred on a random boundary pixel. ``extra`` (a second mask)
    gets the same geometry. ``scale`` fixes the zoom (default: log-uniform in ``cfg.scale_range``).
    """
    h, w = gt.shape
    c = cfg.crop_size
    lo, hi = cfg.scale_range
    if scale is None:
        scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    side = min(h, w, max(1, round(c / scale)))  # window side in source pixels; clamps so it never pads
    keep_uniform = rng.random() < cfg.keep_uniform_prob
    y0 = x0 = 0
    found = False
    for _ in range(max(1, cfg.crop_tries)):
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        if keep_uniform or _is_mixed(gt[y0:y0 + side, x0:x0 + side], cfg.min_fg_fraction):
            found = True
            break
    if not found:
        edge = boundary_pixels(gt)
        if len(edge):
            cy, cx = edge[int(rng.integers(len(edge)))]
            y0 = int(np.clip(cy - side // 2, 0, h - side))
            x0 = int(np.clip(cx - side // 2, 0, w - side))
    interp = cv2.INTER_AREA if side > c else cv2.INTER_LINEAR

    def cut(a: np.ndarray) -> np.ndarray:
        return cv2.resize(np.ascontiguousarray(a[y0:y0 + side, x0:x0 + side]), (c, c), interpolation=interp)

    out_im, out_gt = cut(image), cut(gt)
    out_extra = cut(extra) if extra is not None else None
    if rng.random() < cfg.hflip_prob:
        out_im, out_gt = out_im[:, ::-1], out_gt[:, ::-1]
        out_extra = out_extra[:, ::-1] if out_extra is not None else None
    return out_im, out_gt, out_extra


def random_background(source: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random region of ``source`` with aspect h:w (30-100 % of the largest such), resized to (h, w)."""
    sh, sw = source.shape[:2]
    full = min(sh / h, sw / w)  # largest region of aspect h:w is (h*full, w*full)
    f = full * rng.uniform(0.3, 1.0)
    rh, rw = max(1, min(sh, round(h * f))), max(1, min(sw, round(w * f)))
    y0, x0 = int(rng.integers(sh - rh + 1)), int(rng.integers(sw - rw + 1))
    region = np.ascontiguousarray(source[y0:y0 + rh, x0:x0 + rw])
    interp = cv2.INTER_AREA if rh > h else cv2.INTER_LINEAR
    out = cv2.resize(region, (w, h), interpolation=interp)
    return out[:, ::-1] if rng.random() < 0.5 else out


def paste_object(image: np.ndarray, gt: np.ndarray, background: np.ndarray, rng: np.random.Generator,
                 cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """Alpha-composite the GT object of ``image`` onto ``background`` (same size) with a random similarity
    transform; returns (composite, new GT = the warped alpha) or None when the object leaves the frame."""
    h, w = gt.shape
    alpha = gt.astype(np.float32) / 255.0
    mass = float(alpha.sum())
    if mass < 16:
        return None
    ys, xs = np.nonzero(alpha > 0.5)
    if len(ys) == 0:
        return None
    cy, cx = float(ys.mean()), float(xs.mean())
    scale = rng.uniform(*cfg.paste_scale)
    angle = rng.uniform(-cfg.paste_rotation, cfg.paste_rotation)
    ty, tx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[0, 2] += tx - cx
    m[1, 2] += ty - cy
    fg = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < cfg.feather_prob:
        a = cv2.GaussianBlur(a, (0, 0), rng.uniform(*cfg.feather_sigma))
    a = np.clip(a, 0.0, 1.0)
    if np.count_nonzero(a > 0.5) < 16:
        return None
    fg = fg.astype(np.float32)
    if cfg.paste_brightness:
        fg *= rng.uniform(1 - cfg.paste_brightness, 1 + cfg.paste_brightness)
    a3 = a[..., None]
    comp = a3 * fg + (1.0 - a3) * background.astype(np.float32)
    # The GT is the alpha itself, quantised like every other mask, so image and GT agree at soft edges.
    return (np.clip(np.rint(comp), 0, 255).astype(np.uint8),
            np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a > 127, b > 127
    union = np.count_nonzero(fa | fb)
    return 1.0 if union == 0 else np.count_nonzero(fa & fb) / union




def to_model_tensors(image: np.ndarray, gt: np.ndarray, coarse: np.ndarray) -> dict[str, torch.Tensor]:
    """uint8 RGB / GT 0-255 / coarse 0-255 -> ``image`` 3xHxW normalised, ``gt`` 1xHxW [0,1], ``seg`` [-1,1]."""
    return {
        "image": normalise_u8(torch.from_numpy(np.ascontiguousarray(image))),
        "gt": torch.from_numpy(gt.astype(np.float32)[None] / 255.0),
        "seg": torch.from_numpy(coarse.astype(np.float32)[None] / 127.5 - 1.0),
    }


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator of one training sample; depends only on (seed, epoch, index)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class RefineTrainDataset(Dataset):
    """Augmented training crops: ``ds[(epoch, index)]`` (or ``ds[index]`` for epoch 0) ->
    dict(image, gt, seg) tensors, a deterministic function of (seed, epoch, index)."""

    def __init__(self, store: ImageStore, backgrounds: Sequence[np.ndarray] = (),
                 config: AugmentConfig = AugmentConfig(), seed: int = 0) -> None:
        if len(store) == 0:
            raise ValueError("store: no training items")
        self.store = store
        self.backgrounds = list(backgrounds)
        self.config = config
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, gt, coarse = self.make_sample(int(epoch), int(index))
        return to_model_tensors(image, gt, coarse)

    def make_sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image uint8 HxWx3, GT uint8 0-255, coarse uint8 0/255) crops of sample ``index`` in ``epoch``."""
        if not 0 <= index < len(self.store):
            raise IndexError(f"index: {index} out of range for {len(self.store)} items")
        cfg = self.config
        rng = sample_rng(self.seed, epoch, index)
        src = self.store.get(index)
        image, gt, real = src.image, src.gt, src.coarse
        composite = rng.random() < cfg.composite_prob
        if composite:
            h, w = gt.shape
            if self.backgrounds and rng.random() < cfg.background_photo_prob:
                bg_src = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            else:
                other = int(rng.integers(len(self.store) - 1)) if len(self.store) > 1 else 0
                other += int(other >= index and len(self.store) > 1)  # any item but this one
                bg_src = self.store.get(other).image
            pasted = paste_object(image, gt, random_background(bg_src, h, w, rng), rng, cfg)
            if pasted is not None:
                image, gt, real = pasted[0], pasted[1], None
        use_real = real is not None and rng.random() < cfg.real_coarse_prob
        # rng is only drawn from when global_view_prob > 0, so runs without it keep their exact samples
        if cfg.global_view_prob > 0 and rng.random() < cfg.global_view_prob:
            return self._global_view_sample(image, gt, real if use_real else None, rng)
        image, gt, real = random_crop(image, gt, rng, cfg, extra=real if use_real else None)
        image = color_jitter(image, rng, cfg)
        coarse = self._coarse(real, gt, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(gt), coarse

    def _coarse(self, real: np.ndarray | None, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The real coarse mask binarised when given and close enough to the GT, else a synthetic one
        (rng is only drawn from when lowres_prob > 0, so runs without it keep their exact samples)."""
        cfg = self.config
        if real is not None and _mask_iou(real, gt) >= cfg.real_coarse_min_iou:
            return np.where(real > 127, 255, 0).astype(np.uint8)
        if cfg.lowres_prob > 0 and rng.random() < cfg.lowres_prob:
            return lowres_mask(gt > 127, rng, cfg.lowres)
        return perturb_mask(gt > 127, rng, cfg.perturb)

    def _global_view_sample(self, image: np.ndarray, gt: np.ndarray, real: np.ndarray | None,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A crop of the photo at the global step's scale: the coarse mask is made at the photo's own
        resolution (a real one when usable), then photo, GT and mask are resized as inference resizes them."""
        cfg = self.config
        coarse = self._coarse(real, gt, rng)
        image, gt, coarse = global_view(image, gt, coarse, cfg.global_L)
        image, gt, coarse = random_crop(image, gt, rng, cfg, extra=coarse, scale=1.0)
        image = color_jitter(image, rng, cfg)
        return np.ascontiguousarray(image), np.ascontiguousarray(gt), np.ascontiguousarray(coarse)


def global_view(image: np.ndarray, gt: np.ndarray, coarse: np.ndarray, L: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photo, GT and coarse mask resized to long side ``L`` the way the global step resizes its inputs
    (:func:`cascadepsp.inference.reference.global_inputs`: bicubic photo / bilinear masks up, area down)."""
    h, w = gt.shape
    size = (max(1, round(h * L / max(h, w))), max(1, round(w * L / max(h, w))))
    if size == (h, w):
        return image, gt, coarse
    up = L > max(h, w)
    dsize = (size[1], size[0])
    im_interp = cv2.INTER_CUBIC if up else cv2.INTER_AREA
    mask_interp = cv2.INTER_LINEAR if up else cv2.INTER_AREA
    return (cv2.resize(np.ascontiguousarray(image), dsize, interpolation=im_interp),
            cv2.resize(np.ascontiguousarray(gt), dsize, interpolation=mask_interp),
            cv2.resize(np.ascontiguousarray(coarse), dsize, interpolation=mask_interp))


# ---------------------------------------------------------------------------------------------- ordering


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    if batch_size < 1 or n_items < batch_size:
        raise ValueError(f"batch_size: expected 1..{n_items} (the number of training items), got {batch_size}")
    return n_items // batch_size


def batch_keys(step: int, n_items: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """The (epoch, index) keys of the batch of global step ``step``: a seeded permutation per epoch, drop-last."""
    spe = steps_per_epoch(n_items, batch_size)
    epoch, pos = divmod(int(step), spe)
    perm = np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n_items)
    return [(epoch, int(i)) for i in perm[pos * batch_size:(pos + 1) * batch_size]]


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys for global steps ``start .. stop-1``: resuming at step k just starts at k."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        steps_per_epoch(n_items, batch_size)  # validates
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start, self.stop = int(start), int(stop)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield batch_keys(step, self.n_items, self.batch_size, self.seed)


# Note: DataLoader workers must not call cv2.setNumThreads(): after a fork from a parent whose OpenCV thread
# pool has run (e.g. the preload), reconfiguring the pool waits forever on threads that did not survive the fork.


# ---------------------------------------------------------------------------------------------- validation


@dataclass
class ValExample:
    """A fixed validation image with its GT and coarse inputs (synthetic perturbation, and real if available)."""

    name: str
    image: np.ndarray  # HxWx3 uint8 RGB
    gt: np.ndarray  # HxW bool
    coarse_synthetic: np.ndarray  # HxW bool
    coarse_real: np.ndarray | None = None


def build_val_examples(items: Sequence[Sample], max_side: int = 640, max_items: int | None = 64, seed: int = 0,
                       perturb: PerturbConfig | None = None) -> list[ValExample]:
    """Evenly spaced ``max_items`` of ``items`` (all if None or 0), size-capped, each with a seeded synthetic
    coarse mask (perturbed at the validation size) and the source's real coarse mask where present."""
    perturb = perturb if perturb is not None else PerturbConfig()
    items = evenly_spaced(items, max_items)
    store = ImageStore(items, max_side)
    out = []
    for i, it in enumerate(items):
        x = store.get(i)
        gt = x.gt > 127
        synth = perturb_mask(gt, np.random.default_rng([int(seed), 0xEA1, i]), perturb) > 127
        real = x.coarse > 127 if x.coarse is not None else None
        out.append(ValExample(it.name, x.image, gt, synth, real))
    return out
