"""Refine every mask in a folder, safely: pairing, resume, atomic writes, per-image failures, a report.

Two input layouts: one folder in the original CascadePSP layout (``<name>_im.jpg|png`` + ``<name>_seg.png``,
optional ``<name>_gt.png``), or an image folder plus a mask folder matched by relative path and file stem
(recursive; sub-folders are kept in the output). Inputs are never written: the output folder may not be, or
lie inside, an input folder, and every output path is checked again before writing.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..evaluation.metrics import SegMetrics, boundary_accuracy, mask_iou
from ..evaluation.overlay import make_overlay
from ..inference.labels import refine_label_map
from ..inference.refiner import Refiner, check_L, check_L_fits
from ..io import atomic, images, layouts
from ..io.images import PathLike
from ..io.layouts import resolved
from .pairing import Job, Pairing, find_jobs
from .report import Row, Summary, write_report

LOG = logging.getLogger("cascadepsp.jobs.folder")
MAX_LABELS = 255  # more distinct ids than this in --labels mode is almost surely a soft mask, not a label map


# --------------------------------------------------------------------------------------------- processing

@dataclass
class Options:
    fast: bool = False
    L: int = 900
    threshold: float | None = None
    labels: bool = False
    overlay: bool = False
    resume: bool = True
    metrics: bool = False  # compute changed_fraction / IoU / mBA (also for skipped items)


@dataclass
class JobInputs:
    """An item's inputs in the upright frame of the photo, plus how to map results back to the mask's frame."""

    rgb: np.ndarray | None
    header: images.ImageHeader
    mask_file: images.MaskFile
    coarse: np.ndarray  # HxW bool (binary mode) or int32 ids (labels mode), upright
    gt: np.ndarray | None
    mask_rotated: bool  # the mask was stored in the photo's un-rotated (raw EXIF) frame
    note: str = ""


def _mask_values(mf: images.MaskFile, labels: bool, what: str,
                 reference: images.MaskFile | None = None) -> np.ndarray:
    """Binary foreground, or object ids (numbered like ``reference`` for colour label maps)."""
    if not labels:
        return mf.binary()
    ids = mf.label_ids() if reference is None else mf.label_ids_like(reference)
    n = len(np.unique(ids))
    if n - 1 > MAX_LABELS:
        raise ValueError(f"{what} has {n - 1} distinct ids (more than {MAX_LABELS}): a soft mask, not a label map?")
    return ids


def _binary_note(mf: images.MaskFile, coarse: np.ndarray) -> str:
    if not coarse.any() and mf.values.any():
        return (f"mask has values up to {int(mf.values.max())} but none counts as foreground "
                "(a label map? use --labels)")
    return ""


def _load(job: Job, opts: Options, need_image: bool = True) -> JobInputs:
    if need_image:
        rgb, header = images.read_image(job.sample.image)
    else:
        rgb, header = None, images.read_image_header(job.sample.image)
    mf = images.read_mask(job.sample.mask)
    coarse, rotated = images.align_to_image(_mask_values(mf, opts.labels, "mask"), header, "mask")
    note = "" if opts.labels else _binary_note(mf, coarse)
    gt = None
    if job.sample.gt is not None and opts.metrics:
        gt, _ = images.align_to_image(_mask_values(images.read_mask(job.sample.gt), opts.labels, "ground truth", mf), header,
                            "ground truth")
    if rotated:
        note = "; ".join(filter(None, [note, f"mask matched the un-rotated photo (EXIF orientation "
                                             f"{header.orientation}); output kept in the mask's frame"]))
    return JobInputs(rgb, header, mf, coarse, gt, rotated, note)


def _object_metrics(coarse: np.ndarray, refined: np.ndarray, gt: np.ndarray, labels: bool
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(coarse, refined, gt) bool triples to score: the image itself, or one per GT object id in labels mode."""
    if not labels:
        return [(coarse, refined > 128, gt)]
    return [(coarse == i, refined == i, gt == i) for i in np.unique(gt) if i != 0]


def _score(row: Row, loaded: JobInputs, refined: np.ndarray, opts: Options, acc: dict[str, SegMetrics]) -> None:
    """Fill changed_fraction and, with a GT, IoU / boundary accuracy (mean over objects in labels mode)."""
    ref_bin = refined if opts.labels else refined > 128
    row.changed_fraction = float(np.mean(loaded.coarse != ref_bin))
    if loaded.gt is None:
        return
    triples = _object_metrics(loaded.coarse, refined, loaded.gt, opts.labels)
    if not triples:
        row.note = "; ".join(filter(None, [row.note, "ground truth has no objects"]))
        return
    ious_c, ious_r, bas_c, bas_r = [], [], [], []
    for c, r, g in triples:
        ious_c.append(mask_iou(c, g))
        ious_r.append(mask_iou(r, g))
        bas_c.append(boundary_accuracy(c, g))
        bas_r.append(boundary_accuracy(r, g))
        acc["coarse"].update(c, g)
        acc["refined"].update(r, g)
    row.iou_coarse, row.iou_refined = float(np.mean(ious_c)), float(np.mean(ious_r))
    row.mba_coarse, row.mba_refined = _nanmean(bas_c), _nanmean(bas_r)


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _refine(refiner: Any, loaded: JobInputs, opts: Options) -> np.ndarray:
    """Upright result: uint8 0-255 (soft, or 0/255 with a threshold) or an id map in labels mode."""
    if opts.labels:
        return refine_label_map(refiner, loaded.rgb, loaded.coarse, fast=opts.fast, L=opts.L)
    return refiner.refine(loaded.rgb, loaded.coarse, fast=opts.fast, L=opts.L, threshold=opts.threshold)


def _encode(refined_stored: np.ndarray, loaded: JobInputs, opts: Options) -> bytes:
    if opts.labels:
        return loaded.mask_file.encode_labels(refined_stored)
    return images.encode_png(refined_stored)


def _read_existing(job: Job, loaded: JobInputs, opts: Options) -> np.ndarray:
    """A previous run's output, in the upright frame."""
    mf = images.read_mask(job.output)
    values = mf.label_ids_like(loaded.mask_file) if opts.labels else mf.values
    if not opts.labels and values.dtype != np.uint8:
        values = np.clip(values, 0, 255).astype(np.uint8)
    return images.orient(values, loaded.header.orientation) if loaded.mask_rotated else values


class _Guard:
    """Checks, right before each write, that the path is outside every input folder."""

    def __init__(self, input_dirs: Sequence[Path]) -> None:
        self.input_dirs = [resolved(d) for d in input_dirs]

    def write(self, path: Path, data: bytes) -> None:
        target = resolved(path)
        for d in self.input_dirs:
            if layouts.inside(target, d):
                raise RuntimeError(f"refusing to write {path}: it is inside the input folder {d}")
        atomic.write_atomic(target, data)


def _is_complete(job: Job, opts: Options) -> bool:
    if not job.output.exists():
        return False
    size = images.read_mask_size(job.sample.mask)
    if not images.is_valid_image(job.output, size):
        return False
    return not opts.overlay or images.is_valid_image(job.overlay)


def job_row(job: Job, error: str = "") -> Row:
    """A report row of ``job`` (status failed until the job succeeds)."""
    return Row(job.sample.name, image=str(job.sample.image or ""), mask=str(job.sample.mask or ""),
               output=str(job.output), error=error)


def process_job(job: Job, refiner: Any, opts: Options, guard: _Guard, acc: dict[str, SegMetrics],
                 prefetched: JobInputs | BaseException | None = None) -> Row:
    """Refine one job (or skip it when its outputs are complete). Per-item errors end up in the row."""
    row = job_row(job)
    if job.sample.problem:
        row.error = job.sample.problem
        return row
    t0 = time.perf_counter()
    try:
        if opts.resume and _is_complete(job, opts):
            row.status = "skipped"
            if opts.metrics:
                loaded = _load(job, opts, need_image=False)
                row.width, row.height = loaded.header.size
                _score(row, loaded, _read_existing(job, loaded, opts), opts, acc)
            return row
        if isinstance(prefetched, BaseException):
            raise prefetched
        loaded = prefetched if prefetched is not None else _load(job, opts)
        row.width, row.height = loaded.header.size
        row.note = loaded.note
        refined = _refine(refiner, loaded, opts)
        stored = images.unorient(refined, loaded.header.orientation) if loaded.mask_rotated else refined
        data = _encode(stored, loaded, opts)
        if opts.overlay:  # overlay first: a complete mask output then implies a complete overlay
            pic = make_overlay(loaded.rgb, loaded.coarse, refined, labels=opts.labels)
            guard.write(job.overlay, images.encode_jpeg(pic))
        guard.write(job.output, data)
        if opts.metrics:
            _score(row, loaded, refined, opts, acc)
        row.status = "done"
    except Exception as e:  # one bad item must not stop a run over thousands
        row.status, row.error = "failed", _describe(e)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise
        _free_accelerator_memory(e)
    finally:
        row.seconds = round(time.perf_counter() - t0, 4)
    return row


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if type(e).__name__ == "OutOfMemoryError":
        return f"out of memory ({text}); try a smaller --L or --device cpu"
    if isinstance(e, (ValueError, images.ImageReadError)):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _free_accelerator_memory(e: BaseException) -> None:
    if type(e).__name__ == "OutOfMemoryError":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- run

@dataclass
class RunPlan:
    """A checked folder run before any refinement: its jobs, options and the guard of its input folders."""

    pairing: Pairing
    jobs: list[Job]
    opts: Options
    guard: _Guard
    out: Path
    report: PathLike | None
    labels: bool

    @property
    def with_gt(self) -> bool:
        return any(j.sample.gt is not None for j in self.jobs)


def plan_run(inputs: Sequence[PathLike], out: PathLike, *, gt: PathLike | None = None, fast: bool = False,
             L: int = 900, threshold: float | None = None, labels: bool = False, overlay: bool = False,
             resume: bool = True, limit: int | None = None, report: PathLike | None = None) -> RunPlan:
    """Check the options and folders, pair the inputs and prepare ``out`` (stale temporary files removed).

    Shared by :func:`refine_folder` and :func:`cascadepsp.jobs.distributed.refine_dataset`, so both find, name and
    guard the same files.
    """
    if threshold is not None and labels:
        raise ValueError("threshold: not used with labels (a refined label map is always hard)")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
    L = check_L(L)
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive integer, got {limit}")
    if report is not None and Path(report).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"report: expected a path ending in .csv or .json, got {report}")
    pairing = find_jobs(inputs, out, gt)
    out_r = resolved(out)
    guard = _Guard(pairing.input_dirs)
    if report is not None:
        report_r = resolved(report)
        for d in guard.input_dirs:
            if layouts.inside(report_r, d):
                raise ValueError(f"report: {report} lies inside the input folder {d}")
    jobs = pairing.jobs[:limit] if limit is not None else pairing.jobs
    want_metrics = report is not None or any(j.sample.gt is not None for j in jobs)
    opts = Options(fast=fast, L=L, threshold=threshold, labels=labels, overlay=overlay, resume=resume,
                   metrics=want_metrics)
    out_r.mkdir(parents=True, exist_ok=True)
    clean_temps(out_r)
    if pairing.orphans:
        LOG.warning("%d mask(s) have no image and are ignored, e.g. %s", len(pairing.orphans),
                    ", ".join(pairing.orphans[:5]))
    return RunPlan(pairing, jobs, opts, guard, out_r, report, labels)


def clean_temps(out: Path) -> None:
    """Remove temporary files that writers which are no longer running left in ``out``."""
    for stale in atomic.remove_stale_temps(out):
        LOG.info("removed a temporary file left by an interrupted run: %s", stale)


def new_accumulators() -> dict[str, SegMetrics]:
    return {"coarse": SegMetrics(), "refined": SegMetrics()}


def finish_run(plan: RunPlan, rows: list[Row], acc: dict[str, SegMetrics], seconds: float, interrupted: bool,
               finished: bool) -> Summary:
    """The run's summary, and its report when one was asked for (a failed report write is raised only when
    the run itself finished; otherwise it is logged so the original error stays visible)."""
    summary = Summary(rows, seconds, plan.pairing.orphans, interrupted)
    if acc["coarse"].ious:
        summary.metrics = {k: {**v.summary(), "objects": plan.labels} for k, v in acc.items()}
    if plan.report is not None:
        try:
            write_report(plan.report, summary, with_gt=plan.with_gt)
        except Exception as e:
            if finished:
                raise
            LOG.error("could not write the report %s: %s", plan.report, e)
    return summary


def log_failure(row: Row, job: Job) -> None:
    if row.status == "failed":
        LOG.warning("%s: %s [%s]", row.name, row.error, job.sample.image or job.sample.mask)


def refine_folder(inputs: Sequence[PathLike], out: PathLike, *, refiner: Any = None,
                  device: str | None = None, weights: Any = None, gt: PathLike | None = None,
                  fast: bool = False, L: int = 900, threshold: float | None = None, labels: bool = False,
                  overlay: bool = False, resume: bool = True, limit: int | None = None,
                  report: PathLike | None = None, progress: bool = True,
                  on_row: Callable[[Row], None] | None = None) -> Summary:
    """Refine every job found in ``inputs`` (see :func:`find_jobs`), writing into ``out``.

    ``refiner``: an object with ``refine``/``refine_probability`` (a :class:`~cascadepsp.Refiner`); when
    ``None`` one is built from ``device`` and ``weights``. Failures are logged and counted, never raised;
    a ``KeyboardInterrupt`` stops the run after writing the report of what was finished.
    """
    plan = plan_run(inputs, out, gt=gt, fast=fast, L=L, threshold=threshold, labels=labels, overlay=overlay,
                    resume=resume, limit=limit, report=report)
    if refiner is None:
        refiner = Refiner(device=device, weights=weights)
    check_L_fits(plan.opts.L, getattr(refiner, "device", None))
    jobs, opts = plan.jobs, plan.opts
    acc = new_accumulators()
    rows: list[Row] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    t0 = time.perf_counter()
    interrupted = finished = False
    bar = tqdm(total=len(jobs), unit="img", desc="refine", disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascadepsp-load")
    try:
        ahead: Future | None = None
        for i, job in enumerate(jobs):
            current, ahead = ahead, _prefetch(pool, jobs[i + 1], opts) if i + 1 < len(jobs) else None
            pre = _result(current) if current is not None else None
            row = process_job(job, refiner, opts, plan.guard, acc, pre)
            rows.append(row)
            log_failure(row, job)
            if on_row is not None:
                on_row(row)
            counts[row.status] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)
        finished = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        summary = finish_run(plan, rows, acc, time.perf_counter() - t0, interrupted, finished)
    return summary


def _prefetch(pool: ThreadPoolExecutor, job: Job, opts: Options) -> Future | None:
    """Decode the next job's inputs in the background while the current one is refined."""
    if job.sample.problem or (opts.resume and job.output.exists()):
        return None  # skipped or failed without decoding; nothing to gain
    return pool.submit(_load, job, opts)


def _result(fut: Future) -> JobInputs | BaseException:
    try:
        return fut.result()
    except Exception as e:
        return e
