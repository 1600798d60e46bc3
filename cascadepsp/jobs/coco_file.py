"""Refine every instance of a COCO annotation file (``cascadepsp refine-coco``), safely: inputs never written,
atomic output, per-instance failures reported and the rest carried on, resume, a per-instance report.

Two inputs: a dataset file (``images`` + ``annotations`` [+ ``categories``]) or a results file (a list of
``{image_id, category_id, segmentation, score}``, whose image names and sizes come from ``images_json``). The
output is the input with each refined annotation's ``segmentation`` (compressed RLE, or polygons), ``area``
and ``bbox`` replaced; everything else (ids, order, categories, scores, extra keys, ``iscrowd`` annotations)
stays as it was. While it runs, finished images are kept in ``<out>.partial`` (rewritten atomically every few
images); a rerun with the same inputs and options carries on from it, and it is removed at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..evaluation.metrics import SegMetrics, boundary_accuracy, mask_iou
from ..instances.coco import decode_segmentation, refine_coco_annotations
from ..io import atomic
from ..io import images as imageio
from ..io.images import PathLike
from ..io.layouts import inside

LOG = logging.getLogger("cascadepsp.instances.coco")
PARTIAL_VERSION = 1


@dataclass
class InstanceRow:
    """One line of the report: an annotation, what happened to it, and its scores against the ground truth."""

    index: int
    id: Any = None
    image_id: Any = None
    file_name: str = ""
    status: str = "failed"  # refined | crowd | failed
    area_coarse: int | None = None
    area_refined: int | None = None
    iou_coarse: float | None = None
    iou_refined: float | None = None
    mba_coarse: float | None = None
    mba_refined: float | None = None
    gt_id: Any = None
    error: str = ""


@dataclass
class CocoSummary:
    rows: list[InstanceRow]
    images_done: int
    images_resumed: int
    images_failed: int
    seconds: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def failed(self) -> list[InstanceRow]:
        return [r for r in self.rows if r.status == "failed"]

    def line(self) -> str:
        """The one-line summary: instances refined / failed, images, time (and IoU / mBA with ground truth)."""
        n_ref = sum(r.status == "refined" for r in self.rows)
        n_crowd = sum(r.status == "crowd" for r in self.rows)
        t = self.seconds
        text = (f"refined {n_ref}, crowd (untouched) {n_crowd}, failed {len(self.failed)} of {len(self.rows)} "
                f"annotations; images: done {self.images_done}, resumed {self.images_resumed}, failed "
                f"{self.images_failed}; {t:.1f} s ({n_ref / t if t > 0 else 0.0:.2f} instances/s)")
        c, r = self.metrics.get("coarse"), self.metrics.get("refined")
        if c and r and c.get("n_images"):
            text += (f"; IoU {c['miou_per_image']:.4f} -> {r['miou_per_image']:.4f}, mBA {c['mba']:.4f} -> "
                     f"{r['mba']:.4f} over {c['n_images']} instances with ground truth")
        return text


# ------------------------------------------------------------------------------------------------- inputs

def _read_json(path: PathLike, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what}: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from None


def _images_by_id(doc: Any, what: str) -> dict[Any, dict]:
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{what}: expected a COCO dataset file with an 'images' list")
    images = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= im.keys():
            raise ValueError(f"{what}: images[{i}] needs id, file_name, width and height")
        images[im["id"]] = im
    return images


@dataclass
class CocoInputs:
    """A loaded annotation file: the document to write back, its annotation list and the image records."""

    doc: Any
    annotations: list
    images: dict[Any, dict]
    is_results: bool


def load_inputs(annotations: PathLike, images_json: PathLike | None = None) -> CocoInputs:
    """Read a dataset file or a results file (+ ``images_json``), refusing a malformed structure."""
    doc = _read_json(annotations, "annotations")
    if isinstance(doc, list):
        if images_json is None:
            raise ValueError("images-json: a results file (a list of annotations) needs --images-json, a COCO file "
                             "with the images' names and sizes")
        anns, images, is_results = doc, _images_by_id(_read_json(images_json, "images-json"), "images-json"), True
    elif isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
        anns = doc["annotations"]
        source = _read_json(images_json, "images-json") if images_json is not None else doc
        images = _images_by_id(source, "images-json" if images_json is not None else "annotations")
        is_results = False
    else:
        raise ValueError("annotations: expected a COCO dataset file (images + annotations) or a results file "
                         "(a list of annotations)")
    return CocoInputs(doc, anns, images, is_results)


def _fingerprint(paths: Sequence[PathLike | None], options: dict) -> str:
    """What a resumable run depends on: the input files' contents and the options that change the result."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for p in paths:
        h.update(b"\0")
        if p is not None:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def partial_path(out: PathLike) -> Path:
    """The resume file beside ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def check_paths(images: PathLike, annotations: PathLike, out: PathLike, images_json: PathLike | None,
                gt: PathLike | None, report: PathLike | None) -> None:
    """Refuse an output (or report) that is an input, lies in the image folder, or is the other output."""
    if not Path(images).is_dir():
        raise ValueError(f"images: {images} is not a folder")
    inputs = [Path(p).resolve() for p in (annotations, images_json, gt) if p is not None]
    img_dir = Path(images).resolve()
    for name, p in (("out", out), ("report", report)):
        if p is None:
            continue
        r = Path(p).resolve()
        if r in inputs:
            raise ValueError(f"{name}: {p} is an input file; choose another path (inputs are never written)")
        if inside(r, img_dir):
            raise ValueError(f"{name}: {p} lies inside the image folder {images}; choose a path outside it")
    if report is not None:
        if Path(report).resolve() == Path(out).resolve():
            raise ValueError(f"report: {report} is the --out file")
        if Path(report).suffix.lower() != ".csv":
            raise ValueError(f"report: expected a path ending in .csv, got {report}")


# ------------------------------------------------------------------------------------------------- images

def read_coco_image(path: Path, record: dict) -> np.ndarray:
    """The photo as the annotation file sees it: upright when that matches its width/height, else as stored."""
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    rgb, header = imageio.read_image(path)
    want = (int(record["width"]), int(record["height"]))
    if header.size == want:
        return rgb
    if header.stored_size == want:
        return imageio.unorient(rgb, header.orientation)
    raise ValueError(f"image size {header.size[0]}x{header.size[1]} does not match the annotation file's "
                     f"{want[0]}x{want[1]}")


# -------------------------------------------------------------------------------------------- ground truth

class GroundTruth:
    """A COCO dataset file of ground-truth instances, matched by annotation id, else by best IoU in the image."""

    def __init__(self, path: PathLike) -> None:
        doc = _read_json(path, "gt")
        if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
            raise ValueError("gt: expected a COCO dataset file with an 'annotations' list")
        self.by_id = {a["id"]: a for a in doc["annotations"] if isinstance(a, dict) and "id" in a}
        self.by_image: dict[Any, list[dict]] = {}
        for a in doc["annotations"]:
            if isinstance(a, dict) and not a.get("iscrowd"):
                self.by_image.setdefault(a.get("image_id"), []).append(a)

    def match(self, ann: dict, coarse: np.ndarray) -> tuple[Any, np.ndarray] | None:
        """(gt id, gt mask) for ``ann``: the GT annotation with its id, else the best-overlapping one of its
        image (and category, when given)."""
        h, w = coarse.shape
        g = self.by_id.get(ann.get("id"))
        if g is not None and g.get("image_id") == ann.get("image_id"):
            return g.get("id"), decode_segmentation(g.get("segmentation"), h, w)
        best, best_iou = None, 0.0
        for g in self.by_image.get(ann.get("image_id"), []):
            if "category_id" in ann and g.get("category_id") != ann["category_id"]:
                continue
            m = decode_segmentation(g.get("segmentation"), h, w)
            iou = mask_iou(coarse, m)
            if iou > best_iou:
                best, best_iou = (g.get("id"), m), iou
        return best


def _score(row: InstanceRow, coarse: np.ndarray, refined: np.ndarray, gt: GroundTruth,
           acc: dict[str, SegMetrics], ann: dict) -> None:
    found = gt.match(ann, coarse)
    if found is None:
        row.error = "no matching ground-truth instance"
        return
    row.gt_id, g = found
    row.iou_coarse, row.iou_refined = mask_iou(coarse, g), mask_iou(refined, g)
    row.mba_coarse, row.mba_refined = boundary_accuracy(coarse, g), boundary_accuracy(refined, g)
    acc["coarse"].update(coarse, g)
    acc["refined"].update(refined, g)


# ---------------------------------------------------------------------------------------------------- run

@dataclass(frozen=True)
class CocoOptions:
    polygons: bool = False
    context: float = 0.25
    threshold: float = 0.5
    fast: bool = False
    L: int = 900


def _finish_row(row: InstanceRow, ann: dict, fields: dict, size: tuple[int, int], truth: GroundTruth | None,
                acc: dict[str, SegMetrics], areas: bool) -> None:
    """Mark ``row`` refined; with a report, its areas; with ground truth, its scores."""
    row.status, row.area_refined = "refined", fields["area"]
    if truth is None and not areas:
        return
    coarse = decode_segmentation(ann["segmentation"], *size)
    row.area_coarse = int(coarse.sum())
    if truth is not None:
        try:
            _score(row, coarse, decode_segmentation(fields["segmentation"], *size), truth, acc, ann)
        except ValueError as e:  # a malformed ground-truth annotation: not scored, the refinement stands
            row.error = f"ground truth: {e}"


def _save_partial(path: Path, key: str, done: dict[str, list], results: dict[str, dict]) -> None:
    doc = {"version": PARTIAL_VERSION, "key": key, "done_images": done, "annotations": results}
    atomic.write_atomic(path, json.dumps(doc).encode())


def _load_partial(path: Path, key: str) -> tuple[dict[str, list], dict[str, dict]]:
    """Finished images (image id -> annotation indices) and their refined fields from an earlier run with
    the same inputs and options; empty when there is none or it belongs to other inputs."""
    if not path.is_file():
        return {}, {}
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("version") == PARTIAL_VERSION and doc.get("key") == key:
            return dict(doc["done_images"]), dict(doc["annotations"])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    LOG.warning("ignoring %s: it belongs to other inputs or options", path)
    return {}, {}


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, ValueError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def refine_coco_file(images: PathLike, annotations: PathLike, out: PathLike, *, refiner: Any,
                     images_json: PathLike | None = None, gt: PathLike | None = None,
                     report: PathLike | None = None, options: CocoOptions | None = None, resume: bool = True,
                     checkpoint_every: int = 20, progress: bool = True, weights_key: str = "",
                     on_failure: Callable[[str], None] | None = None, loaded: CocoInputs | None = None
                     ) -> CocoSummary:
    """Refine every non-crowd annotation of ``annotations`` (photos under ``images``) and write ``out``.

    ``refiner``: a :class:`~cascadepsp.Refiner`. Failures (an unreadable photo, a malformed segmentation) are
    reported through ``on_failure`` and in the report; those annotations are written unchanged.
    ``weights_key`` names the weights in the resume fingerprint; ``loaded``: the :func:`load_inputs` of
    ``annotations`` and ``images_json`` when the caller has read them already.
    """
    options = options or CocoOptions()
    check_paths(images, annotations, out, images_json, gt, report)
    inputs = loaded if loaded is not None else load_inputs(annotations, images_json)
    truth = GroundTruth(gt) if gt is not None else None
    key = _fingerprint([annotations, images_json], {**asdict(options), "weights": weights_key,
                                                     "images": str(Path(images).resolve())})
    partial = partial_path(out)
    done, results = _load_partial(partial, key) if resume else ({}, {})
    fail = on_failure or (lambda line: LOG.warning("%s", line))

    anns = inputs.annotations
    rows = [InstanceRow(i, a.get("id") if isinstance(a, dict) else None,
                        a.get("image_id") if isinstance(a, dict) else None) for i, a in enumerate(anns)]
    by_image: dict[Any, list[int]] = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            rows[i].error = f"annotations[{i}]: expected a dict"
            fail(f"failed: annotation #{i}: {rows[i].error}")
            continue
        if a.get("image_id") not in inputs.images:
            rows[i].error = f"image_id {a.get('image_id')!r} is not in the images list"
            fail(f"failed: annotation #{i} (id {a.get('id')}): {rows[i].error}")
            continue
        rows[i].file_name = str(inputs.images[a["image_id"]]["file_name"])
        if a.get("iscrowd"):
            rows[i].status = "crowd"
            continue
        by_image.setdefault(a["image_id"], []).append(i)

    acc = {"coarse": SegMetrics(), "refined": SegMetrics()}
    new_anns = list(anns)
    counts = {"done": 0, "resumed": 0, "failed": 0}
    t0 = time.perf_counter()
    since_save = 0
    bar = tqdm(total=len(by_image), unit="img", desc="refine-coco", disable=not progress, dynamic_ncols=True)
    try:
        for image_id, idx in by_image.items():
            record = inputs.images[image_id]
            sid = json.dumps(image_id)
            if sid in done and sorted(done[sid]) == sorted(idx):
                for i in idx:
                    fields = results.get(str(i))
                    if fields is not None:
                        new_anns[i] = {**anns[i], **fields}
                        _finish_row(rows[i], anns[i], fields, (int(record["height"]), int(record["width"])),
                                    truth, acc, report is not None)
                    else:  # failed in the earlier run: reported again, left unchanged
                        rows[i].error = "failed in an earlier run (rerun with --no-resume to retry)"
                        fail(f"failed: annotation #{i} (id {anns[i].get('id')}): {rows[i].error}")
                counts["resumed"] += 1
                bar.update(1)
                continue
            try:
                rgb = read_coco_image(Path(images) / str(record["file_name"]), record)
            except Exception as e:  # one bad photo must not stop the run
                msg = _describe(e)
                counts["failed"] += 1
                fail(f"failed: image {image_id!r} ({record['file_name']}): {msg} "
                     f"[{len(idx)} annotation(s) left unchanged]")
                for i in idx:
                    rows[i].error = msg
                bar.update(1)
                continue
            errors: list[tuple[int, str]] = []
            try:
                refined = refine_coco_annotations(rgb, [anns[i] for i in idx], refiner, polygons=options.polygons,
                                                  context=options.context, threshold=options.threshold,
                                                  fast=options.fast, L=options.L, errors=errors)
            except Exception as e:
                msg = _describe(e)
                counts["failed"] += 1
                fail(f"failed: image {image_id!r} ({record['file_name']}): {msg}")
                for i in idx:
                    rows[i].error = msg
                bar.update(1)
                continue
            bad = {idx[j]: msg for j, msg in errors}
            h, w = rgb.shape[:2]
            for j, i in enumerate(idx):
                if i in bad:
                    rows[i].error = bad[i]
                    fail(f"failed: annotation #{i} (id {anns[i].get('id')}, image {record['file_name']}): {bad[i]}")
                    continue
                new_anns[i] = refined[j]
                fields = {k: refined[j][k] for k in ("segmentation", "area", "bbox")}
                results[str(i)] = fields
                _finish_row(rows[i], anns[i], fields, (h, w), truth, acc, report is not None)
            done[sid] = idx
            counts["done"] += 1
            since_save += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)
            if since_save >= checkpoint_every:
                _save_partial(partial, key, done, results)
                since_save = 0
    except KeyboardInterrupt:
        _save_partial(partial, key, done, results)
        raise
    finally:
        bar.close()

    doc = {**inputs.doc, "annotations": new_anns} if not inputs.is_results else new_anns
    atomic.write_atomic(Path(out).resolve(), json.dumps(doc).encode())
    partial.unlink(missing_ok=True)
    summary = CocoSummary(rows, counts["done"], counts["resumed"], counts["failed"], time.perf_counter() - t0)
    if acc["coarse"].ious:
        summary.metrics = {k: v.summary() for k, v in acc.items()}
    if report is not None:
        write_report(report, rows, with_gt=truth is not None)
    return summary


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else round(v, 6)
    return "" if v is None else v


GT_COLUMNS = ("iou_coarse", "iou_refined", "mba_coarse", "mba_refined", "gt_id")


def write_report(path: PathLike, rows: Sequence[InstanceRow], with_gt: bool = False) -> Path:
    """One CSV row per annotation, written atomically; the ground-truth columns only with ground truth."""
    columns = [f for f in InstanceRow.__dataclass_fields__ if with_gt or f not in GT_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _clean(v) for k, v in asdict(r).items() if k in columns})
    return atomic.write_atomic(Path(path).resolve(), buf.getvalue().encode())
