"""PSPNet validation: mIoU and pixel accuracy on full-resolution images, through :func:`pspnet.predict`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cascadepsp.evaluation.metrics import confusion_matrix, iou_from_confusion
from cascadepsp.io.layouts import Sample
from cascadepsp.io.splits import evenly_spaced

from .data import load_image, load_mask
from .inference import predict
from .model import PSPNet


def evaluate(model: PSPNet, samples: Sequence[Sample], mask_mode: str = "binary", max_images: int = 0,
             crop: int | None = None, base_size: int | None = None, progress: bool = False) -> dict[str, Any]:
    """mIoU of ``model`` on full-resolution validation images (via :func:`pspnet.predict`)."""
    samples = evenly_spaced(samples, max_images)
    classes = max(model.config.classes, 2)
    conf = np.zeros((classes, classes), np.int64)
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(samples, desc="val", leave=False, disable=not progress):
            _, pred = predict(load_image(s.image), model, crop=crop, base_size=base_size)
            conf += confusion_matrix(pred, load_mask(s.gt, mask_mode, s.image), classes)
    finally:
        model.train(was_training)
    return {**iou_from_confusion(conf), "images": len(samples)}
