"""What a folder run reports: one row per photo, the run's summary line, and the CSV / JSON report file."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic
from ..io.images import PathLike
from ..io.layouts import resolved


@dataclass
class Row:
    """One line of the report."""

    name: str
    status: str = "failed"  # done | skipped | failed
    width: int | None = None
    height: int | None = None
    seconds: float | None = None
    changed_fraction: float | None = None
    iou_coarse: float | None = None
    iou_refined: float | None = None
    mba_coarse: float | None = None
    mba_refined: float | None = None
    error: str = ""
    note: str = ""
    image: str = ""
    mask: str = ""
    output: str = ""


GT_COLUMNS = ("iou_coarse", "iou_refined", "mba_coarse", "mba_refined")


@dataclass
class Summary:
    rows: list[Row]
    seconds: float
    orphans: list[str] = field(default_factory=list)
    interrupted: bool = False
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # "coarse"/"refined" -> SegMetrics summary

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "failed"]

    def line(self) -> str:
        """The one-line summary: done, skipped, failed, total time (and dataset IoU / mBA with ground truth)."""
        n, t = len(self.rows), self.seconds
        done = self.count("done")
        text = (f"done {done}, skipped {self.count('skipped')}, failed {self.count('failed')} of {n} "
                f"in {t:.1f} s ({done / t if t > 0 else 0.0:.2f} img/s refined)")
        if self.interrupted:
            text = "INTERRUPTED: " + text
        c, r = self.metrics.get("coarse"), self.metrics.get("refined")
        if c and r and c.get("n_images"):
            text += (f"; IoU {c['iou']:.4f} -> {r['iou']:.4f}, mBA {c['mba']:.4f} -> {r['mba']:.4f} "
                     f"over {c['n_images']} {'objects' if c.get('objects') else 'images'} with ground truth")
        return text


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    return v


def write_report(path: PathLike, summary: Summary, with_gt: bool = False) -> Path:
    """Per-image rows as CSV or JSON (by extension), written atomically; GT columns only with ground truth."""
    columns = [f for f in Row.__dataclass_fields__ if with_gt or f not in GT_COLUMNS]
    rows = [{k: _clean(v) for k, v in asdict(r).items() if k in columns} for r in summary.rows]
    if Path(path).suffix.lower() == ".json":
        doc = {"summary": {"done": summary.count("done"), "skipped": summary.count("skipped"),
                           "failed": summary.count("failed"), "total": len(summary.rows),
                           "seconds": round(summary.seconds, 3), "interrupted": summary.interrupted,
                           "orphan_masks": summary.orphans,
                           "metrics": {k: {m: _clean(x) for m, x in v.items()} for k, v in summary.metrics.items()}},
               "images": rows}
        data = json.dumps(doc, indent=1).encode()
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        data = buf.getvalue().encode()
    return atomic.write_atomic(resolved(path), data)
