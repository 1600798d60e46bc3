"""Create, save and load PSPNet models; weights are safetensors with the config in the header."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cascadepsp.weights import registry
from cascadepsp.weights.files import load_state_tolerant, load_weights, save_weights

from .config import PSPNetConfig
from .model import PSPNet

MODEL_FORMAT = "pspnet"
DEFAULT_WEIGHTS = registry.find_weights("default", "pspnet").filename


def bundled_path(filename: str = DEFAULT_WEIGHTS) -> Path:
    """Location of a weight file shipped inside the ``pspnet`` package (named in :mod:`cascadepsp.weights.registry`)."""
    return registry.bundled_path(filename, "pspnet")


def create(encoder_name: str = "resnet50", classes: int = 2, **kwargs: Any) -> PSPNet:
    """A randomly initialised PSPNet in eval mode (keyword arguments: :class:`PSPNetConfig` fields)."""
    return PSPNet(encoder_name, classes, **kwargs).eval()


def load_with_metadata(weights: str | os.PathLike | None = "default") -> tuple[PSPNet, dict[str, str]]:
    """Like :func:`load`, also returning the file's string metadata header."""
    spec = registry.find_weights(weights or "default", "pspnet") if isinstance(weights, (str, type(None))) else None
    if spec is not None:
        path = bundled_path(spec.filename)
        if not path.is_file():
            raise FileNotFoundError(
                f"the default PSPNet weights ({DEFAULT_WEIGHTS}) are missing from this installation "
                f"(expected at {path}); pass a .safetensors path trained with scripts/train_pspnet.py")
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights: no such file {path} (named weights: {registry.list_weights('pspnet')})")
    state, config, meta = load_weights(path, expected_format=MODEL_FORMAT)
    model = PSPNet.from_config(PSPNetConfig.from_dict(config))
    load_state_tolerant(model, state)
    return model.eval(), meta


def load(weights: str | os.PathLike | None = "default") -> PSPNet:
    """Load a PSPNet: ``"default"``/``None`` for the bundled foreground model, or a ``.safetensors`` path."""
    return load_with_metadata(weights)[0]


def save(model: PSPNet, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
         half: bool = False) -> Path:
    """Write ``model`` as safetensors with its :class:`PSPNetConfig` in the header (fp16 with ``half``)."""
    if not isinstance(model, PSPNet):
        raise ValueError(f"model: expected a pspnet.PSPNet, got {type(model).__name__}")
    return save_weights(model.state_dict(), path, model_format=MODEL_FORMAT, config=model.config.to_dict(),
                        metadata=metadata, half=half)
