"""Segment images (PSPNet or U2-Netp) and refine the coarse masks with CascadePSP, writing PNGs per image.

For each image ``<stem>``: ``<stem>_coarse.png`` and ``<stem>_refined.png`` (0-255 masks) and
``<stem>_side_by_side.png`` (image | coarse overlay | refined overlay). Files are written atomically and
never over an input; a failing image is reported and skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascadepsp.evaluation.overlay import GAP, make_overlay
from cascadepsp.inference.protocols import MaskRefiner, Segmenter
from cascadepsp.io.atomic import write_atomic
from cascadepsp.io.images import encode_png, read_rgb
from cascadepsp.io.layouts import list_images

from .inference import PSPNetSegmenter

OUTPUT_SUFFIXES = ("_coarse.png", "_refined.png", "_side_by_side.png")
SIDE_BY_SIDE_WIDTH = 3 * 1024 + 2 * GAP  # panels of at most 1024 px wide
SEGMENTERS = ("pspnet", "u2netp")


@dataclass
class RunReport:
    """Which images were written (input -> output paths) and which failed (input, error message)."""

    written: dict[Path, list[Path]] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def build_segmenter(kind: str = "pspnet", *, pspnet_weights: str | os.PathLike | Any = "default",
                    onnx_path: str | os.PathLike | None = None, device: str | None = None) -> Segmenter:
    """A PSPNet (bundled default, a path, or a model) or U2-Netp (``onnx_path``) foreground segmenter."""
    if kind == "pspnet":
        return PSPNetSegmenter(pspnet_weights, device=device)
    if kind == "u2netp":
        if onnx_path is None:
            raise ValueError("onnx_path: the u2netp segmenter needs the path of u2netp.onnx")
        from cascadepsp.inference.segmenters import U2NetP

        return U2NetP(onnx_path)
    raise ValueError(f"segmenter: expected one of {SEGMENTERS}, got {kind!r}")


def collect_images(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Image files named directly or found (non-recursively) in folders; our own outputs in ``out_dir`` are skipped.

    A folder in the original layout (``<name>_im.jpg`` beside ``_seg``/``_gt`` masks) contributes only its
    ``_im`` files, so masks are never segmented as photos.
    """
    out = Path(out_dir).resolve() if out_dir is not None else None
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in list_images(p):
                if out is not None and f.parent.resolve() == out and f.name.endswith(OUTPUT_SUFFIXES):
                    continue
                found.append(f)
        else:
            found.append(p)  # a missing or unreadable file is reported when processed
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def write_png_atomic(path: Path, array: np.ndarray) -> None:
    """Encode ``array`` (HxW grey or HxWx3 RGB) as PNG and write it atomically (temporary file + rename)."""
    bgr = array[:, :, ::-1] if array.ndim == 3 else array
    write_atomic(path, encode_png(np.ascontiguousarray(bgr)))


def output_stems(images: Sequence[Path]) -> list[str]:
    """Output name stems: the file stems, with ``-2``, ``-3``... added where two inputs share a stem."""
    used: dict[str, int] = {}
    stems = []
    for p in images:
        n = used.get(p.stem, 0) + 1
        used[p.stem] = n
        stems.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return stems


def output_paths(stem: str, out_dir: Path) -> list[Path]:
    return [out_dir / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]


def process_image(path: Path, out_dir: Path, segmenter: Segmenter, refiner: MaskRefiner, fast: bool = False,
                  L: int = 900, protected: frozenset[Path] = frozenset(), stem: str | None = None) -> list[Path]:
    """Segment, refine and write the three PNGs of one image; returns the written paths."""
    targets = output_paths(stem or path.stem, out_dir)
    clash = [t for t in targets if t.resolve() in protected]
    if clash:
        raise ValueError(f"output {clash[0]} would overwrite an input file")
    image, _ = read_rgb(path)
    coarse = segmenter.predict_mask(image)
    refined = refiner.refine(image, coarse, fast=fast, L=L)
    refined_fg = refined >= 128
    coarse_png = np.where(coarse, 255, 0).astype(np.uint8)
    for target, array in zip(targets, (coarse_png, refined, make_overlay(image, coarse, refined_fg, max_width=SIDE_BY_SIDE_WIDTH)), strict=True):
        write_png_atomic(target, array)
    return targets


def segment_and_refine(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, segmenter: Segmenter,
                       refiner: MaskRefiner, fast: bool = False, L: int = 900,
                       log: Callable[[str], None] | None = print) -> RunReport:
    """Run :func:`process_image` on every image in ``inputs`` (files or folders); failures are collected."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = collect_images(inputs, out)
    protected = frozenset(p.resolve() for p in images)
    report = RunReport()
    if not images:
        report.failed.append((Path(out), "no input images found"))
    for path, stem in zip(images, output_stems(images), strict=True):
        try:
            report.written[path] = process_image(path, out, segmenter, refiner, fast=fast, L=L,
                                                 protected=protected, stem=stem)
            if log:
                log(f"ok   {path} -> {report.written[path][-1]}")
        except Exception as err:  # one bad file must not stop the batch
            msg = f"{type(err).__name__}: {err}".splitlines()[0]
            report.failed.append((path, msg))
            if log:
                log(f"FAIL {path}: {msg}")
    return report
