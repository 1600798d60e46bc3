"""Train / val / dev splits by name hash, and the command-line selection of evaluation samples.

Splits depend only on file names (never on a seed of a run), so every run holds back the same photos.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from .images import PathLike
from .layouts import DAVIS_COARSE, Sample, davis_sequences, find_davis, find_original

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


def evenly_spaced(items: Sequence[T], count: int | None) -> list[T]:
    """``count`` of ``items`` spread evenly from the first to the last, in order (all of them when ``count`` is
    None, 0 or at least their number): the fixed, seed-free subset every capped evaluation and example set uses."""
    if count is not None and count < 0:
        raise ValueError(f"count: expected >= 0, got {count}")
    items = list(items)
    if not count or count >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


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


