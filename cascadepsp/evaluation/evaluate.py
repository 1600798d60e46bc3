"""Evaluate refiners and baselines on (image, coarse mask, GT) triplets: IoU, mBA, time, CSV and a figure.

The coarse input is always scored as method ``"coarse"`` so every other method is compared on the same inputs.
Dataset layouts: ``<name>_im.jpg|png / <name>_seg.png / <name>_gt.png`` in one folder (recursive), three
folders matched by relative path and stem, or DAVIS (``coarse_u2netp/<seq>/<frame>.png`` with
``JPEGImages/<seq>/<frame>.jpg`` and ``Annotations/<seq>/<frame>.png``).
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io import atomic, images, layouts, splits
from ..io import images as imageio
from ..io.layouts import Sample
from ..io.splits import select_samples
from .baselines import BASELINES
from .metrics import SegMetrics

__all__ = ["COARSE", "REFINER", "EvalResults", "Sample", "build_methods", "davis_triplets", "evaluate_pairs",
           "evaluate_sets", "format_sets_table",
           "find_triplets", "format_table", "load_sample", "match_folders", "report", "save_figure", "select_samples",
           "write_csv", "write_summary_json"]

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]
COARSE = "coarse"  # the unmodified coarse input, always evaluated
REFINER = "cascadepsp"  # the learned refiner's method name


# ---------------------------------------------------------------- dataset discovery

def find_triplets(directory: str | os.PathLike) -> list[Sample]:
    """Every ``<name>_im`` with a ``<name>_seg`` and a ``<name>_gt`` under ``directory`` (recursive)."""
    return splits.original_eval_samples(directory)


def match_folders(image_dir: str | os.PathLike, seg_dir: str | os.PathLike,
                  gt_dir: str | os.PathLike) -> list[Sample]:
    """Triplets from three folders, matched by relative path without extension (recursive)."""
    for what, folder in (("image_dir", image_dir), ("seg_dir", seg_dir), ("gt_dir", gt_dir)):
        if not Path(folder).is_dir():
            raise ValueError(f"{what}: not a folder: {folder}")
    found = layouts.find_by_stem(image_dir, seg_dir, gt_dir).samples
    ambiguous = [s for s in found if s.problem and not s.problem.startswith("missing")]
    if ambiguous:
        raise ValueError(f"{ambiguous[0].name}: {ambiguous[0].problem}")
    samples = layouts.usable(found, "mask", "gt")
    if not samples:
        raise ValueError(f"seg_dir: no file stems common to {image_dir}, {seg_dir} and {gt_dir}")
    return samples


def davis_triplets(root: str | os.PathLike, sequences: Sequence[str] | None = None,
                   coarse_dir: str = layouts.DAVIS_COARSE) -> list[Sample]:
    """DAVIS-2016 triplets for every coarse mask ``<root>/<coarse_dir>/<seq>/<frame>.png`` of ``sequences``."""
    return splits.davis_eval_samples(root, sequences, coarse_dir)


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HxWx3 uint8 RGB image, HxW uint8 coarse mask, HxW uint8 GT), masks read by :mod:`cascadepsp.io.images`
    rules; a coarse mask of another size is resized to the GT's (bilinear, as the original eval)."""
    image, header = images.read_rgb(sample.image)
    gt = images.read_soft_mask(sample.gt, header, what="ground truth")
    soft = imageio.read_mask(sample.mask).soft()
    try:
        seg, _ = images.align_to_image(soft, header, "mask")
    except ValueError:  # another size: resized as the original eval does
        seg = np.asarray(Image.fromarray(soft).resize((gt.shape[1], gt.shape[0]), Image.BILINEAR))
    return image, seg, gt


# ---------------------------------------------------------------- methods

def build_methods(names: Iterable[str], *, weights: Any = "default", device: Any = None, fast: bool = False,
                  L: int = 900) -> dict[str, Method]:
    """Methods by name: ``cascadepsp`` (a :class:`Refiner` with ``weights``, which may be an ``nn.Module``) or a
    baseline from :data:`cascadepsp.evaluation.baselines.BASELINES`. ``coarse`` is skipped: it is always evaluated."""
    methods: dict[str, Method] = {}
    for name in names:
        name = name.strip()
        if not name or name == COARSE or name in methods:
            continue
        if name == REFINER:
            from ..inference.refiner import Refiner  # torch model import only when the refiner is asked for

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


SMALL_SIDE = 500  # photos with a long side under this many px form each set's "small" subset


def evaluate_sets(sets: dict[str, Sequence[Sample]], methods: dict[str, Method], *, small_side: int = SMALL_SIDE,
                  progress: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """Score the coarse input and every method on several sets of triplets at once.

    Returns ``{group: {method: SegMetrics summary}}`` for each set, each set's photos with a long side under
    ``small_side`` (``"<set>/small"``), and the union of the sets that share a kind of coarse mask (the part
    of the set name after its first ``_``, as ``"all_<kind>"``; e.g. ``human_u2netp`` + ``davis_u2netp``).
    """
    names = [COARSE, *methods]
    meters: dict[str, dict[str, SegMetrics]] = {}

    def add(group: str, name: str, pred: np.ndarray, gt: np.ndarray) -> None:
        meters.setdefault(group, {n: SegMetrics() for n in names})[name].update(pred, gt)

    for set_name, samples in sets.items():
        kind = set_name.split("_", 1)[1] if "_" in set_name else set_name
        iterator: Iterable[Sample] = samples
        if progress:
            from tqdm import tqdm

            iterator = tqdm(samples, desc=set_name, unit="img")
        for sample in iterator:
            image, seg, gt = load_sample(sample)
            groups = [set_name, f"all_{kind}"] + ([f"{set_name}/small"] if max(gt.shape) < small_side else [])
            for name in names:
                pred = seg if name == COARSE else methods[name](image, seg)
                for group in groups:
                    add(group, name, pred, gt)
    return {g: {n: m.summary() for n, m in ms.items()} for g, ms in meters.items()}


def format_sets_table(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: per group, the coarse IoU / mBA and every method's change of both (points, in %)."""
    methods = [n for n in next(iter(scores.values())) if n != COARSE]
    head = "| set | n | coarse IoU | coarse mBA | " + " | ".join(f"{m} dIoU / dmBA" for m in methods) + " |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    for group in sorted(scores, key=lambda g: (g.startswith("all_"), g)):
        base = scores[group][COARSE]
        cells = [f"{100 * (scores[group][m]['iou'] - base['iou']):+.2f} / {100 * (scores[group][m]['mba'] - base['mba']):+.2f}"
                 for m in methods]
        lines.append(f"| {group} | {base['n_images']} | {100 * base['iou']:.2f} | {100 * base['mba']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def write_summary_json(results: EvalResults, path: str | os.PathLike, command: str = "") -> Path:
    """The per-method summaries (dataset IoU, mBA, mean time, counts) and the command that made them, as JSON."""
    doc = {"command": command, "methods": results.methods, "summary": results.summary}
    return atomic.write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode())


def report(results: EvalResults, out_csv: str | os.PathLike | None = None,
           out_json: str | os.PathLike | None = None, command: str = "") -> None:
    """Print the table and write the optional per-image CSV and summary JSON (the evaluation scripts' output)."""
    print(format_table(results))
    if out_csv:
        print(f"per-image CSV: {write_csv(results, out_csv)}")
    if out_json:
        print(f"summary JSON: {write_summary_json(results, out_json, command=command)}")


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
