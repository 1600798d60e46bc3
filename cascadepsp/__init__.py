"""cascadepsp: refine any segmenter's coarse mask into a sharp high-resolution mask (CascadePSP, CVPR 2020)."""

from .config import PRESETS, RMConfig, get_config
from .model import RefinementModule, count_parameters
from .refiner import Refiner, refine
from .weights import convert_official, create_model, list_weights, load_model, load_official, save_model

__all__ = [
    "PRESETS", "RMConfig", "RefinementModule", "Refiner", "convert_official", "count_parameters",
    "create_model", "get_config", "list_weights", "load_model", "load_official", "refine", "save_model",
]
__version__ = "0.1.0"
