"""Registry of named refiner weights and the ``create_model`` / ``load_model`` entry points."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_state_tolerant, load_torch_checkpoint, load_weights, save_weights
from .config import RMConfig, get_config
from .download import default_official_path
from .model import RefinementModule

MODEL_FORMAT = "cascadepsp-rm"


@dataclass(frozen=True)
class WeightSpec:
    """A named set of weights: a file bundled in the package, or the official checkpoint."""

    name: str
    description: str
    filename: str | None = None  # bundled file under cascadepsp/weights/
    official: bool = False


REGISTRY: dict[str, WeightSpec] = {
    "default": WeightSpec("default", "EfficientNet-Lite0 refiner (lite0_guided preset: ImageNet trunk, residual "
                          "output, trainable guided-filter output stage) trained by this project on a 2-core CPU "
                          "(bundled)",
                          filename="cascadepsp_lite0_guided.safetensors"),
    "official": WeightSpec("official", "original CascadePSP ResNet-50 checkpoint (user-provided / downloaded)",
                           official=True),
}


def list_weights() -> list[str]:
    return sorted(REGISTRY)


def bundled_path(filename: str) -> Path:
    return Path(str(resources.files("cascadepsp") / "weights" / filename))


def create_model(config: RMConfig | str = "resnet50") -> RefinementModule:
    """A randomly initialised refinement module of the given preset or config, in eval mode."""
    return RefinementModule(get_config(config)).eval()


def load_official(path: str | os.PathLike | None = None) -> RefinementModule:
    """Build the ResNet-50 RM and load the official checkpoint with strict key matching."""
    path = Path(path) if path is not None else default_official_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"official CascadePSP checkpoint not found at {path}; pass its path, or fetch it once with "
            "`cascadepsp download-official` (needs network)")
    model = RefinementModule("resnet50")
    load_state_tolerant(model, load_torch_checkpoint(path))
    return model.eval()


def load_safetensors_model(path: str | os.PathLike) -> tuple[RefinementModule, dict[str, str]]:
    """Load one of our ``.safetensors`` refiner files; its header carries the architecture config."""
    state, config, meta = load_weights(path, expected_format=MODEL_FORMAT)
    model = RefinementModule(RMConfig.from_dict(config))
    load_state_tolerant(model, state)
    return model.eval(), meta


def load_model(weights: str | os.PathLike | None = "default") -> RefinementModule:
    """Resolve ``weights`` to a ready model.

    ``"default"``/``None``: bundled weights; ``"official"``: the original checkpoint from its default
    location; a path to ``.safetensors`` (ours) or any other file (an official-format torch checkpoint).
    """
    if weights is None:
        weights = "default"
    if isinstance(weights, str) and weights in REGISTRY:
        spec = REGISTRY[weights]
        if spec.official:
            return load_official()
        path = bundled_path(spec.filename)
        if not path.is_file():
            raise FileNotFoundError(f"bundled weights {spec.filename!r} are missing from this installation")
        return load_safetensors_model(path)[0]
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no such file {path} (named weights: {list_weights()})")
    if path.suffix == ".safetensors":
        return load_safetensors_model(path)[0]
    return load_official(path)


def save_model(model: RefinementModule, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
               half: bool = False) -> Path:
    """Save a refiner as ``.safetensors`` with its config in the header (fp16 with ``half=True``)."""
    return save_weights(model.state_dict(), path, model_format=MODEL_FORMAT, config=model.config.to_dict(),
                        metadata=metadata, half=half)


def convert_official(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False) -> Path:
    """Convert the official torch checkpoint to our safetensors format (same tensors, config in header)."""
    model = load_official(src)
    return save_model(model, dst, metadata={"source": "official CascadePSP checkpoint", "source_file": str(src)},
                      half=half)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
