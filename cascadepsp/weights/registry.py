"""Registry of named refiner weights and the ``create_model`` / ``load_model`` entry points."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..models.config import DEFAULT_PRESET, RMConfig, get_config
from ..models.refinement import RefinementModule
from .download import default_official_path
from .files import load_state_tolerant, load_torch_checkpoint, load_weights, save_weights

MODEL_FORMAT = "cascadepsp-rm"


NETWORKS = ("refiner", "pspnet")  # the two networks whose weights the registry names


@dataclass(frozen=True)
class WeightSpec:
    """A named set of weights: a file bundled in its network's package (``weights/``), or the official checkpoint."""

    name: str
    description: str
    filename: str | None = None  # bundled file under <package>/weights/
    official: bool = False


# Every named weight file of both networks: network -> name -> spec. ``load_model`` and ``pspnet.load`` resolve
# their names here, so ``default`` means the same thing (the bundled file) for both.
REGISTRY: dict[str, dict[str, WeightSpec]] = {
    "refiner": {
        "default": WeightSpec("default", "EfficientNet-Lite1 refiner (lite1_guided preset: ImageNet trunk, residual "
                              "output, trainable guided-filter output stage) trained by this project on a 2-core CPU "
                              "(bundled)", filename="cascadepsp_lite1_guided.safetensors"),
        "official": WeightSpec("official", "original CascadePSP ResNet-50 checkpoint (user-provided / downloaded)",
                               official=True),
    },
    "pspnet": {
        "default": WeightSpec("default", "PSPNet foreground segmenter on EfficientNet-Lite0 (bundled)",
                              filename="pspnet_fg.safetensors"),
    },
}


def list_weights(network: str = "refiner") -> list[str]:
    """The names ``network``'s loader accepts besides a file path."""
    return sorted(_network(network))


def find_weights(name: str, network: str = "refiner") -> WeightSpec | None:
    """The registry entry of ``name`` for ``network``, or ``None`` (then ``name`` should be a file path)."""
    return _network(network).get(name)


def bundled_path(filename: str, network: str = "refiner") -> Path:
    """Where a file bundled with ``network``'s package lives (it may be missing from a broken install)."""
    package = "pspnet" if network == "pspnet" else "cascadepsp"
    return Path(str(resources.files(package) / "weights" / filename))


def _network(network: str) -> dict[str, WeightSpec]:
    if network not in REGISTRY:
        raise ValueError(f"network: expected one of {NETWORKS}, got {network!r}")
    return REGISTRY[network]


def create_model(config: RMConfig | str = DEFAULT_PRESET) -> RefinementModule:
    """A randomly initialised refinement module of the given preset or config (default: the bundled default's
    architecture), in eval mode; ``"resnet50"`` is the official network."""
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
    spec = find_weights(weights) if isinstance(weights, str) else None
    if spec is not None:
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
