"""Values every part of both packages agrees on: the ImageNet input normalisation our networks take, and the
backends and precisions a Refiner accepts (here, free of torch, so the CLI and the service check them cheaply)."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per RGB channel, of images scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

# The input normalisation (mean, std) each smp encoder's ImageNet weights were trained with, where it is not
# IMAGENET_MEAN / IMAGENET_STD: the encoder trunks map our normalised RGB to it (models.encoder.input_affine).
ENCODER_INPUT_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "timm-tf_efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "timm-tf_efficientnet_lite1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "timm-tf_efficientnet_lite2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

BACKENDS = ("torch", "openvino")  # Refiner(backend=)
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # Refiner(precision=); int8 with backend="openvino" only
# Refiner(local_step=) / RMConfig.local_step: how the local step runs a full-resolution window (two_pass: the
# original; light: one cascade pass without the guided output stage, faster at a quality cost)
LOCAL_STEPS = ("two_pass", "light")
