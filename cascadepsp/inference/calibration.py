"""Calibration inputs for int8 quantisation: exactly what the engine feeds the network on real photos.

The shipped calibration set (``cascadepsp/deploy/calibration/``, written by scripts/make_calibration_set.py)
holds one or two frames of each DAVIS-2016 training sequence (CC BY 4.0) with a real U2-Netp or a
low-resolution-segmenter coarse mask. Each pair is refined by the batched engine at its own size (854x480: a
global step only, the photo being smaller than L) and enlarged 2x (a global step and the 900x900 windows along
the object's edge, as in a 2K photo) while every network call is recorded, so the statistics cover both graphs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from ..deploy.onnx_export import GRAPHS, INPUT_NAMES
from ..io.images import PathLike, read_binary, read_rgb
from .batched import BatchedOptions, BatchedRunner

CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "deploy" / "calibration"
CALIBRATION_SCALES = (1, 2)
CALIBRATION_L = 900  # the engines' default L: the global step and the windows are recorded at that size

Feed = dict[str, np.ndarray]


def calibration_pairs(folder: PathLike | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HxWx3 uint8 RGB, HxW bool coarse mask) for every ``<name>_im.jpg`` / ``<name>_seg.png`` pair."""
    root = Path(folder) if folder is not None else CALIBRATION_DIR
    pairs = []
    for photo in sorted(root.glob("*_im.jpg")):
        name = photo.name[: -len("_im.jpg")]
        mask = read_binary(root / f"{name}_seg.png")
        pairs.append((name, read_rgb(photo)[0], mask))
    if not pairs:
        raise FileNotFoundError(f"calibration: no <name>_im.jpg / <name>_seg.png pairs in {root}")
    return pairs


def calibration_id(folder: PathLike | None = None) -> str:
    """SHA-256 (16 hex digits) of the calibration files' names and bytes: part of an int8 cache entry's key."""
    root = Path(folder) if folder is not None else CALIBRATION_DIR
    h = hashlib.sha256()
    for path in sorted(root.glob("*_im.jpg")) + sorted(root.glob("*_seg.png")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class _Recorder(nn.Module):
    """Calls ``model`` and keeps each call's inputs (float16 to halve their memory) for the graphs in ``graphs``."""

    def __init__(self, model: nn.Module, graphs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.calls: dict[str, list[Feed]] = {graph: [] for graph in graphs}

    def forward(self, x: Tensor, seg: Tensor, inter_s8: Tensor | None = None,
                inter_s4: Tensor | None = None) -> dict[str, Tensor]:
        graph = "global" if inter_s8 is None else "window"
        tensors = (x, seg) if inter_s8 is None else (x, seg, inter_s8)
        for i in range(x.shape[0]) if graph in self.calls else ():
            self.calls[graph].append({name: t[i:i + 1].detach().cpu().numpy().astype(np.float16)
                                      for name, t in zip(INPUT_NAMES[graph], tensors, strict=True)})
        return self.model(x, seg, inter_s8, inter_s4)


def record_inputs(model: nn.Module, pairs: Sequence[tuple[str, np.ndarray, np.ndarray]] | None = None,
                  scales: Sequence[int] | None = None, L: int | None = None,
                  graphs: Sequence[str] = ("global", "window")) -> dict[str, list[Feed]]:
    """Refine every calibration pair (default: the shipped ones) with ``model`` (fp32, CPU) at each scale
    (default ``CALIBRATION_SCALES``) and ``L`` (default ``CALIBRATION_L``); the inputs of every network call,
    by graph (``global`` / ``window``), as the exported graphs name them. Only the ``graphs`` to be
    quantised are kept (every call still runs: the global step makes the windows)."""
    unknown = set(graphs) - set(GRAPHS)
    if unknown:
        raise ValueError(f"graphs: expected names among {GRAPHS}, got {sorted(unknown)}")
    recorder = _Recorder(model, graphs)
    runner = BatchedRunner(recorder, torch.device("cpu"), BatchedOptions(precision="fp32", channels_last=False))
    L = CALIBRATION_L if L is None else L
    for _, rgb, mask in calibration_pairs() if pairs is None else pairs:
        for scale in CALIBRATION_SCALES if scales is None else scales:
            if scale == 1:
                photo, fg = rgb, mask
            else:
                size = (rgb.shape[1] * scale, rgb.shape[0] * scale)
                photo = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)
                fg = cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_LINEAR) >= 128
            if fg.any() and not fg.all():
                runner.refine(photo, fg, L=L)
    return recorder.calls
