"""The files of a training run, shared by both trainers: ``ckpt_last.pt`` (resume point) and ``log.csv``."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import write_atomic

CHECKPOINT_NAME = "ckpt_last.pt"
LOG_NAME = "log.csv"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``kill PID``) and SIGINT raise KeyboardInterrupt, so a trainer saves its
    checkpoint and weights as on Ctrl-C; a shell starts background jobs with SIGINT ignored, so Ctrl-C
    handling alone missed them. Handlers are restored on exit; a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], must_match: Sequence[str],
                 should_match: Sequence[str] = ()) -> None:
    """Refuse to resume when a setting that fixes the run's data order or shapes changed (``must_match``); warn
    when one that only changes its course did (``should_match``: the run no longer equals an uninterrupted one).

    Both configs are plain dicts (JSON-like); a key is looked up at the top level, then in ``augment``.
    """
    for key in must_match:
        old, new = _setting(saved, key), _setting(current, key)
        if old is not None and old != new:
            raise ValueError(f"resume: checkpoint has {key}={old!r} but the config says {new!r}")
    for key in should_match:
        old, new = saved.get(key), current.get(key)
        if old is not None and old != new:
            warnings.warn(f"resume: {key} changed from {old!r} to {new!r}; the run will not match an "
                          "uninterrupted one", stacklevel=3)


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    return cfg[key] if key in cfg else (cfg.get("augment") or {}).get(key)


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
