"""Evaluate refiners and baselines on (image, coarse mask, GT) triplets: IoU, mBA, time, CSV and a figure.

The coarse input is always scored as method ``"coarse"`` so every other method is compared on the same inputs.
Dataset layouts: ``<name>_im.jpg|png / <name>_seg.png / <name>_gt.png`` in one folder (recursive), three
folders matched by relative path and stem, or DAVIS (``coarse_u2netp/<seq>/<frame>.png`` with
``JPEGImages/<seq>/<frame>.jpg`` and ``Annotations/<seq>/<frame>.png``).
"""

from __future__ import annotations

import csv
import heapq
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .baselines import BASELINES
from .metrics import SegMetrics

__all__ = ["COARSE", "REFINER", "EvalResults", "Sample", "build_methods", "davis_triplets", "evaluate_pairs",
           "find_triplets", "format_table", "load_sample", "match_folders", "save_figure", "write_csv"]

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]
COARSE = "coarse"  # the unmodified coarse input, always evaluated
REFINER = "cascadepsp"  # the learned refiner's method name
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    """One evaluation triplet: a display name and the paths of image, coarse mask and ground truth."""

    name: str
    image: Path
    seg: Path
    gt: Path


# ---------------------------------------------------------------- dataset discovery

def find_triplets(directory: str | os.PathLike) -> list[Sample]:
    """All ``<name>_gt.png`` under ``directory`` (recursive) with a sibling ``<name>_seg.png`` and ``<name>_im.*``."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"directory: not a folder: {root}")
    samples = []
    for gt in sorted(root.rglob("*_gt.png")):
        stem = gt.name[: -len("_gt.png")]
        seg = gt.with_name(f"{stem}_seg.png")
        ims = [gt.with_name(f"{stem}_im{ext}") for ext in (".jpg", ".png", ".jpeg")]
        im = next((p for p in ims if p.is_file()), None)
        if im is None or not seg.is_file():
            continue  # GT without an input (e.g. a results folder): not a triplet
        samples.append(Sample(str(gt.parent.relative_to(root) / stem), im, seg, gt))
    if not samples:
        raise ValueError(f"directory: no <name>_im.jpg|png / <name>_seg.png / <name>_gt.png triplets in {root}")
    return samples


def _index_by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"{what}: not a folder: {folder}")
    index: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            key = str(p.relative_to(folder).with_suffix(""))
            if key in index:
                raise ValueError(f"{what}: two files share the stem {key!r}: {index[key].name}, {p.name}")
            index[key] = p
    return index


def match_folders(image_dir: str | os.PathLike, seg_dir: str | os.PathLike,
                  gt_dir: str | os.PathLike) -> list[Sample]:
    """Triplets from three folders, matched by relative path without extension (recursive)."""
    ims = _index_by_stem(Path(image_dir), "image_dir")
    segs = _index_by_stem(Path(seg_dir), "seg_dir")
    gts = _index_by_stem(Path(gt_dir), "gt_dir")
    keys = sorted(set(ims) & set(segs) & set(gts))
    if not keys:
        raise ValueError(f"seg_dir: no file stems common to {image_dir}, {seg_dir} and {gt_dir}")
    return [Sample(k, ims[k], segs[k], gts[k]) for k in keys]


def davis_triplets(root: str | os.PathLike, sequences: Sequence[str] | None = None,
                   coarse_dir: str = "coarse_u2netp") -> list[Sample]:
    """DAVIS-2016 triplets for every coarse mask ``<root>/<coarse_dir>/<seq>/<frame>.png`` of ``sequences``."""
    root = Path(root)
    coarse = root / coarse_dir
    if not coarse.is_dir():
        raise ValueError(f"davis: no coarse-mask folder {coarse}")
    available = sorted(p.name for p in coarse.iterdir() if p.is_dir())
    seqs = list(sequences) if sequences else available
    unknown = [s for s in seqs if s not in available]
    if unknown:
        raise ValueError(f"sequences: unknown {unknown}; available: {', '.join(available)}")
    samples = []
    for seq in seqs:
        for seg in sorted((coarse / seq).glob("*.png")):
            im = root / "JPEGImages" / seq / f"{seg.stem}.jpg"
            gt = root / "Annotations" / seq / f"{seg.stem}.png"
            for p in (im, gt):
                if not p.is_file():
                    raise ValueError(f"davis: missing {p} for coarse mask {seg}")
            samples.append(Sample(f"{seq}/{seg.stem}", im, seg, gt))
    return samples


def select_samples(directory: str | os.PathLike | None = None, *, davis: str | os.PathLike | None = None,
                   sequences: str | None = None, split: str = "all") -> list[Sample]:
    """Triplets of a DAVIS root (``sequences``: comma-separated) or of a flat folder, optionally restricted to
    the training or validation part of the refiner's name-hash split (``split``: all / train / val)."""
    if davis:
        return davis_triplets(davis, [s for s in sequences.split(",") if s] if sequences else None)
    if directory is None:
        raise ValueError("directory: give a folder of triplets or a DAVIS root")
    samples = find_triplets(directory)
    if split == "all":
        return samples
    if split not in ("train", "val"):
        raise ValueError(f"split: expected all, train or val, got {split!r}")
    from .data import split_by_name

    train, val = split_by_name(samples)
    return val if split == "val" else train


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HxWx3 uint8 RGB image, HxW uint8 coarse mask, HxW uint8 GT); a coarse mask of another size is resized."""
    with Image.open(sample.image) as f:
        image = np.asarray(f.convert("RGB"))
    with Image.open(sample.gt) as f:
        gt = np.asarray(f.convert("L"))
    with Image.open(sample.seg) as f:
        seg_im = f.convert("L")
        if seg_im.size != (gt.shape[1], gt.shape[0]):  # as the original eval: bilinear to the GT size
            seg_im = seg_im.resize((gt.shape[1], gt.shape[0]), Image.BILINEAR)
        seg = np.asarray(seg_im)
    if image.shape[:2] != gt.shape:
        raise ValueError(f"image: {sample.image} is {image.shape[1]}x{image.shape[0]} but its GT {sample.gt} is "
                         f"{gt.shape[1]}x{gt.shape[0]}")
    return image, seg, gt


# ---------------------------------------------------------------- methods

def build_methods(names: Iterable[str], *, weights: Any = "default", device: Any = None, fast: bool = False,
                  L: int = 900) -> dict[str, Method]:
    """Methods by name: ``cascadepsp`` (a :class:`Refiner` with ``weights``, which may be an ``nn.Module``) or a
    baseline from :data:`cascadepsp.baselines.BASELINES`. ``coarse`` is skipped: it is always evaluated."""
    methods: dict[str, Method] = {}
    for name in names:
        name = name.strip()
        if not name or name == COARSE or name in methods:
            continue
        if name == REFINER:
            from .refiner import Refiner  # torch model import only when the refiner is asked for

            refiner = Refiner(device=device, weights=weights)

            def run(image: np.ndarray, mask: np.ndarray, _r: Refiner = refiner) -> np.ndarray:
                return _r.refine(image, mask, fast=fast, L=L)

            methods[name] = run
        elif name in BASELINES:
            methods[name] = BASELINES[name]
        else:
            raise ValueError(f"methods: unknown method {name!r}; expected {COARSE}, {REFINER} or one of "
                             f"{sorted(BASELINES)}")
    return methods


# ---------------------------------------------------------------- evaluation

@dataclass
class Extreme:
    """A kept worst/best case for the figure: sample, its gain and the masks to show."""

    gain: float
    sample: Sample
    coarse: np.ndarray
    refined: np.ndarray


@dataclass
class EvalResults:
    """Per-image rows, per-method summaries, and the worst/best cases of ``figure_method`` by BA gain."""

    methods: list[str]
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    figure_method: str | None = None
    worst: list[Extreme] = field(default_factory=list)
    best: list[Extreme] = field(default_factory=list)


def _gain(ba_new: float, ba_old: float) -> float:
    return ba_new - ba_old if not (math.isnan(ba_new) or math.isnan(ba_old)) else math.nan


def evaluate_pairs(samples: Sequence[Sample], methods: dict[str, Method], *, limit: int | None = None,
                   figure_method: str | None = None, keep_extremes: int = 2, progress: bool = False
                   ) -> EvalResults:
    """Score the coarse input and every method on ``samples``; keep the ``keep_extremes`` worst and best
    images by BA gain of ``figure_method`` (default: the refiner if present, else the first method)."""
    if COARSE in methods:
        raise ValueError(f"methods: {COARSE!r} is evaluated automatically; do not pass it")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit: expected a positive integer, got {limit!r}")
        samples = list(samples)[:limit]
    if not samples:
        raise ValueError("samples: nothing to evaluate")
    names = [COARSE, *methods]
    if figure_method is None and methods:
        figure_method = REFINER if REFINER in methods else next(iter(methods))
    if figure_method is not None and figure_method not in methods:
        raise ValueError(f"figure_method: {figure_method!r} is not one of the evaluated methods {list(methods)}")

    meters = {n: SegMetrics() for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    rows: list[dict[str, Any]] = []
    worst: list[tuple[float, int, Extreme]] = []  # max-heap of the most negative gains via negated keys
    best: list[tuple[float, int, Extreme]] = []
    iterator: Iterable[Sample] = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc="evaluate", unit="img")
    for idx, sample in enumerate(iterator):
        image, seg, gt = load_sample(sample)
        row: dict[str, Any] = {"name": sample.name, "height": gt.shape[0], "width": gt.shape[1]}
        outputs = {COARSE: seg}
        for name in names:
            if name != COARSE:
                t0 = time.perf_counter()
                out = methods[name](image, seg)
                times[name].append(time.perf_counter() - t0)
                if out.shape != gt.shape:
                    raise ValueError(f"methods: {name!r} returned shape {out.shape} for {sample.name}, "
                                     f"expected {gt.shape}")
                outputs[name] = out
            else:
                times[name].append(0.0)
            rec = meters[name].update(outputs[name], gt)
            row[f"{name}_iou"] = rec["iou"]
            row[f"{name}_ba"] = rec["ba"]
            row[f"{name}_time_s"] = times[name][-1]
        rows.append(row)
        if figure_method is not None and keep_extremes > 0:
            gain = _gain(row[f"{figure_method}_ba"], row[f"{COARSE}_ba"])
            if not math.isnan(gain):
                ext = Extreme(gain, sample, seg, outputs[figure_method])
                _push(best, (gain, -idx, ext), keep_extremes)
                _push(worst, (-gain, -idx, ext), keep_extremes)
    summary = {}
    for name in names:
        s = meters[name].summary()
        s["mean_time_s"] = float(np.mean(times[name]))
        summary[name] = s
    return EvalResults(
        methods=names, rows=rows, summary=summary, figure_method=figure_method,
        worst=[e for _, _, e in sorted(worst, key=lambda t: t[0], reverse=True)],
        best=[e for _, _, e in sorted(best, key=lambda t: t[0], reverse=True)],
    )


def _push(heap: list, item: tuple, k: int) -> None:
    """Keep the k largest items by key (a min-heap of size k)."""
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


# ---------------------------------------------------------------- reporting

def format_table(results: EvalResults) -> str:
    """A plain-text table: dataset IoU, mBA (in %), mean per-image IoU, deltas vs coarse, ms per image."""
    base = results.summary[COARSE]
    head = f"{'method':<12} {'IoU':>7} {'mBA':>7} {'dIoU':>7} {'dmBA':>7} {'mIoU/img':>9} {'ms/img':>9}"
    lines = [head, "-" * len(head)]
    for name in results.methods:
        s = results.summary[name]
        lines.append(f"{name:<12} {100 * s['iou']:7.2f} {100 * s['mba']:7.2f} "
                     f"{100 * (s['iou'] - base['iou']):+7.2f} {100 * (s['mba'] - base['mba']):+7.2f} "
                     f"{100 * s['miou_per_image']:9.2f} {1000 * s['mean_time_s']:9.1f}")
    n, nb = base["n_images"], base["n_no_boundary"]
    lines.append(f"{n} images" + (f" ({nb} with an empty GT boundary left out of mBA)" if nb else ""))
    return "\n".join(lines)


def write_csv(results: EvalResults, path: str | os.PathLike) -> Path:
    """One row per image: name, size, and IoU / BA / seconds for every method."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["name", "height", "width"] + [f"{m}_{k}" for m in results.methods for k in ("iou", "ba", "time_s")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in results.rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def save_figure(results: EvalResults, path: str | os.PathLike, max_side: int = 480) -> Path:
    """PNG of the worst then best cases by BA gain: image, coarse, refined, GT per row (matplotlib, Agg)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # optional dependency
        raise ImportError("save_figure needs matplotlib: pip install 'cascadepsp[plot]'") from exc
    cases = [("worst", e) for e in results.worst] + [("best", e) for e in results.best]
    if not cases:
        raise ValueError("results: no cases to plot (no refined method, or no image with a GT boundary)")
    fig = Figure(figsize=(12, 3 * len(cases)))
    FigureCanvasAgg(fig)
    titles = ["image", COARSE, results.figure_method or "refined", "GT"]
    for r, (kind, ext) in enumerate(cases):
        image, _, gt = load_sample(ext.sample)
        scale = min(1.0, max_side / max(gt.shape))
        panels = [image, ext.coarse, ext.refined, gt]
        for c, panel in enumerate(panels):
            ax = fig.add_subplot(len(cases), 4, 4 * r + c + 1)
            if scale < 1.0:
                size = (max(1, round(panel.shape[1] * scale)), max(1, round(panel.shape[0] * scale)))
                panel = np.asarray(Image.fromarray(panel).resize(size, Image.BILINEAR))
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{kind}: {ext.sample.name}\nBA gain {100 * ext.gain:+.1f}", fontsize=8)
            if r == 0:
                ax.set_title(titles[c])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
