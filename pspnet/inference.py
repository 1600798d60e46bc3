"""Full-resolution PSPNet inference: long side to a base size, sliding windows larger than the crop, upsample.

Follows the hszhao/semseg test procedure: windows of the training crop with a stride of 2/3 of the crop,
mean-colour padding for images smaller than the crop, softmax averaged over overlapping windows.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cascadepsp.io.inputs import to_rgb_uint8

from .augment import long_side_size, normalize
from .config import check_scales, check_threshold
from .model import PSPNet
from .postprocess import check_component_fraction, keep_main_regions
from .weights import load

_CACHE: dict[str, PSPNet] = {}
_LOCK = threading.Lock()


def _default_model() -> PSPNet:
    with _LOCK:
        if "default" not in _CACHE:
            _CACHE["default"] = load("default")
        return _CACHE["default"]


def _resolve(model: PSPNet | str | os.PathLike | None) -> PSPNet:
    if model is None or (isinstance(model, str) and model == "default"):
        return _default_model()
    if isinstance(model, PSPNet):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(model)
    raise ValueError(f"model: expected a pspnet.PSPNet, a weights path, 'default' or None, got {type(model).__name__}")


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``crop`` covering ``length`` (>= crop) with the given stride."""
    if length <= crop:
        return [0]
    n = int(math.ceil((length - crop) / stride)) + 1
    return [min(i * stride, length - crop) for i in range(n)]


def _class_probs(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits.float(), dim=1)


@torch.inference_mode()
def sliding_window_probs(model: PSPNet, x: Tensor, crop: int, stride: int, flip: bool = False,
                         batch: int = 4) -> Tensor:
    """Class probabilities ``(C, h, w)`` for a normalised ``(1, 3, h, w)`` image, windowed at ``crop``."""
    _, _, h, w = x.shape
    ph, pw = max(h, crop), max(w, crop)
    if (ph, pw) != (h, w):  # zero is the mean colour after normalisation
        x = F.pad(x, (0, pw - w, 0, ph - h))
    boxes = [(y, xx) for y in window_starts(ph, crop, stride) for xx in window_starts(pw, crop, stride)]
    classes = model.config.classes
    total = x.new_zeros((classes, ph, pw), dtype=torch.float32)
    count = x.new_zeros((1, ph, pw), dtype=torch.float32)
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        windows = torch.cat([x[:, :, y:y + crop, xx:xx + crop] for y, xx in chunk])
        probs = _class_probs(model(windows))
        if flip:
            probs = 0.5 * (probs + _class_probs(model(windows.flip(-1))).flip(-1))
        for (y, xx), p in zip(chunk, probs, strict=True):
            total[:, y:y + crop, xx:xx + crop] += p.float()
            count[:, y:y + crop, xx:xx + crop] += 1.0
    return (total / count)[:, :h, :w]


def predict(image: Any, model: PSPNet | str | os.PathLike | None = None, *, crop: int | None = None,
            stride: int | None = None, base_size: int | None = None, flip: bool = False,
            scales: Sequence[float] | float | None = None, device: str | torch.device | None = None,
            bgr: bool = False, threshold: float | None = None,
            min_component_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segment ``image``; returns ``(prob, mask)`` at the input resolution.

    ``prob``: float32 HxW foreground (class 1) probability for a two-class (or one-logit) model, else the
    CxHxW class probabilities. ``mask``: HxW uint8 class ids (foreground models: 1 where ``prob >=
    threshold``, minus regions smaller than ``min_component_fraction`` of the largest; more classes: the
    argmax). ``crop``/``base_size``/``threshold``/``min_component_fraction`` default to the values stored with
    the model; ``stride`` to 2/3 of the crop.
    ``scales``: multi-scale testing as in the paper, probabilities averaged over long sides ``base_size x s``
    (with ``flip``, each scale is also run mirrored); default the model's stored ``scales``.
    ``model=None`` uses the bundled default weights; ``device=None`` keeps the model where it is.
    """
    net = _resolve(model)
    crop = int(crop if crop is not None else net.config.crop_size)
    base_size = int(base_size if base_size is not None else net.config.base_size)
    if crop < 8:
        raise ValueError(f"crop: expected an integer >= 8, got {crop!r}")
    if base_size < 8:
        raise ValueError(f"base_size: expected an integer >= 8, got {base_size!r}")
    stride = int(stride) if stride is not None else max(1, int(math.ceil(crop * 2 / 3)))
    if not 1 <= stride <= crop:
        raise ValueError(f"stride: expected an integer in [1, crop={crop}], got {stride!r}")
    scales = check_scales(scales if scales is not None else net.config.scales)
    threshold = check_threshold(threshold if threshold is not None else net.config.threshold)
    min_fraction = check_component_fraction(min_component_fraction if min_component_fraction is not None
                                            else net.config.min_component_fraction)
    rgb = to_rgb_uint8(image, bgr=bgr)
    if device is not None:
        net = net.to(device)
    net.eval()
    dev = next(net.parameters()).device
    height, width = rgb.shape[:2]
    probs = None
    for scale in scales:
        h, w = long_side_size((height, width), max(8.0, base_size * scale))
        small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if h < height else cv2.INTER_LINEAR)
        x = normalize(small).unsqueeze(0).to(dev)
        p = sliding_window_probs(net, x, crop, stride, flip=flip)
        p = F.interpolate(p[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        probs = p if probs is None else probs + p
    probs = (probs / len(scales)).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
    if probs.shape[0] <= 2:
        prob = probs[-1]
        return prob, keep_main_regions((prob >= threshold).astype(np.uint8), min_fraction)
    labels = probs.argmax(axis=0)
    mask = labels.astype(np.uint8 if probs.shape[0] <= 256 else np.int32)
    return probs, mask


class PSPNetSegmenter:
    """A foreground segmenter with the same ``predict(image) -> HxW float32 probability`` as ``U2NetP``."""

    def __init__(self, model: PSPNet | str | os.PathLike | None = "default",
                 device: str | torch.device | None = None, **predict_kwargs: Any) -> None:
        from cascadepsp.devices import resolve_device

        self.model = _resolve(model).to(resolve_device(device)).eval()
        if self.model.config.classes > 2:
            raise ValueError(f"model: a foreground segmenter needs a 1- or 2-class PSPNet, got "
                             f"{self.model.config.classes} classes")
        self.predict_kwargs = predict_kwargs

    def predict(self, image: Any, bgr: bool = False) -> np.ndarray:
        return predict(image, self.model, bgr=bgr, **self.predict_kwargs)[0]

    def predict_mask(self, image: Any, bgr: bool = False) -> np.ndarray:
        """Binary HxW bool mask, cut at the model's stored threshold (or the ``threshold`` given at creation)."""
        return predict(image, self.model, bgr=bgr, **self.predict_kwargs)[1] > 0
