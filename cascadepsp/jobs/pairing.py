"""Which files a folder run refines: photos paired with their masks (and ground truth), and where each
result goes; refuses an output folder that is, or is inside, an input folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io import layouts
from ..io.images import PathLike
from ..io.layouts import Sample, resolved


class NoInputsError(ValueError):
    """The input folders hold nothing to refine."""


@dataclass
class Job:
    """One unit of work: a sample (image, coarse mask, optional ground truth) and where its results go."""

    sample: Sample
    output: Path
    overlay: Path


@dataclass
class Pairing:
    jobs: list[Job]
    input_dirs: list[Path]
    orphans: list[str] = field(default_factory=list)  # masks without an image (reported, not processed)


def check_output_dir(out: PathLike, input_dirs: Sequence[PathLike]) -> Path:
    """Refuse an output folder that is an input folder or lies inside one; returns it resolved."""
    out_r = resolved(out)
    if out_r.exists() and not out_r.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    for d in input_dirs:
        d_r = resolved(d)
        if out_r == d_r:
            raise ValueError(f"out: {out} is the input folder {d}; choose a separate output folder")
        if d_r in out_r.parents:
            raise ValueError(f"out: {out} lies inside the input folder {d}; a later recursive run would read "
                             "the outputs as inputs. Choose a folder outside the inputs")
    return out_r


def output_paths(sample: Sample, out: Path, original_layout: bool) -> tuple[Path, Path]:
    """(mask, overlay) outputs: ``<name>_mask.png`` in the original layout (the original eval's naming), else
    ``<stem>.png``; the overlay is ``<name>_overlay.jpg``; sub-folders are kept."""
    stem = f"{sample.name}_mask" if original_layout else sample.name
    return out / f"{stem}.png", out / f"{sample.name}_overlay.jpg"


def find_jobs(inputs: Sequence[PathLike], out: PathLike, gt: PathLike | None = None) -> Pairing:
    """One folder: original layout; two folders: images + masks by stem. Checks ``out`` first; refuses
    inputs without any image (:class:`NoInputsError`)."""
    if len(inputs) not in (1, 2):
        raise ValueError(f"inputs: expected one folder (original layout) or two (images, masks), got {len(inputs)}")
    for p in [*inputs, *([gt] if gt is not None else [])]:
        if not Path(p).is_dir():
            raise ValueError(f"inputs: {p} is not a folder")
    out_r = check_output_dir(out, [*inputs, *([gt] if gt is not None else [])])
    if len(inputs) == 1:
        found = layouts.find_original(inputs[0], gt, exclude=[out_r])
    else:
        found = layouts.find_by_stem(inputs[0], inputs[1], gt, exclude=[out_r])
    if not found.samples:
        raise NoInputsError(f"inputs: no images found in {', '.join(map(str, inputs))} (expected <name>_im.jpg|png "
                            "+ <name>_seg.png, or an image folder and a mask folder)")
    jobs = [Job(s, *output_paths(s, out_r, len(inputs) == 1)) for s in found.samples]
    dirs = [resolved(d) for d in [*inputs, *([gt] if gt is not None else [])]]
    return Pairing(jobs, dirs, found.orphans)
