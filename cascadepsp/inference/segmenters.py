"""Third-party coarse segmenters to put in front of the refiner: a U2-Netp salient-object model run with ONNX.

Pre/post-processing follows rembg: resize to 320x320, divide by the image maximum, ImageNet mean/std;
take the first of the seven output maps, min-max normalise, resize back. ``onnxruntime`` is optional
(``pip install cascadepsp[onnx]``) and imported only when a model is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..io.inputs import to_rgb_uint8

U2NET_SIZE = 320
U2NET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
U2NET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("U2NetP needs onnxruntime: pip install cascadepsp[onnx]") from err
    return onnxruntime


def u2net_preprocess(image: np.ndarray, size: int = U2NET_SIZE) -> np.ndarray:
    """HxWx3 uint8 RGB -> 1x3xSxS float32: Lanczos resize (as rembg), scale by the image maximum, ImageNet mean/std."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS), dtype=np.float32)
    peak = float(small.max())
    small /= peak if peak > 0 else 1.0
    small = (small - U2NET_MEAN) / U2NET_STD
    return np.ascontiguousarray(small.transpose(2, 0, 1)[None], dtype=np.float32)


def u2net_postprocess(pred: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """First output map (any of 1x1xSxS, 1xSxS, SxS) -> min-max normalised float32 HxW in [0, 1]."""
    pred = np.asarray(pred, dtype=np.float32)
    while pred.ndim > 2:
        pred = pred[0]
    if pred.ndim != 2:
        raise ValueError(f"pred: expected a single 2-D map, got shape {pred.shape}")
    lo, hi = float(pred.min()), float(pred.max())
    norm = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    h, w = size_hw
    out = cv2.resize(norm, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class U2NetP:
    """U2-Netp salient-object segmenter from an ONNX file (e.g. ``u2netp.onnx`` as shipped with rembg)."""

    def __init__(self, onnx_path: str | os.PathLike, providers: list[str] | None = None) -> None:
        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"onnx_path: no such file {path}")
        ort = _import_onnxruntime()
        self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        self.size = shape[-1] if isinstance(shape[-1], int) else U2NET_SIZE

    def predict(self, image: Any, bgr: bool = False) -> np.ndarray:
        """Foreground probability (float32 HxW in [0, 1]) at the image's size."""
        rgb = to_rgb_uint8(image, bgr=bgr)
        outputs = self.session.run(None, {self.input_name: u2net_preprocess(rgb, self.size)})
        return u2net_postprocess(outputs[0], rgb.shape[:2])

    def predict_mask(self, image: Any, threshold: float = 0.5, bgr: bool = False) -> np.ndarray:
        """Binary HxW bool mask: probability >= ``threshold``."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold!r}")
        return self.predict(image, bgr=bgr) >= threshold
