"""The files of a training run, shared by both trainers: ``ckpt_last.pt`` (resume point) and ``log.csv``."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .imageio import write_atomic

CKPT_NAME = "ckpt_last.pt"
LOG_NAME = "log.csv"


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` of a run's state, written atomically so a kill never leaves a half checkpoint."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> dict[str, Any]:
    """A checkpoint of :func:`save_checkpoint` on the CPU; a file that is not one gives a one-line error."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({first})") from e


class CsvLog:
    """Append-only CSV log; the header is the existing file's (a resumed run) or ``columns`` / the first row's."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self._wanted = list(columns) if columns else None
        self.columns: list[str] | None = None

    def write(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` (missing columns blank, unknown ones dropped, floats as ``%.6g``)."""
        if self.columns is None:
            self.columns = self._header()
            if not self.columns:
                self.columns = self._wanted or list(row)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("w", newline="") as f:
                    csv.writer(f).writerow(self.columns)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def _header(self) -> list[str] | None:
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                return next(csv.reader(f), None)
        return None


def read_log(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a :class:`CsvLog` file."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
