"""pspnet: a PSPNet segmenter (Zhao et al., CVPR 2017) that produces coarse masks for the CascadePSP refiner."""

from .config import PSPNetConfig
from .inference import PSPNetSegmenter, predict
from .model import PSPNet, PyramidPooling
from .weights import MODEL_FORMAT, bundled_path, create, load, load_with_metadata, save

__all__ = [
    "MODEL_FORMAT", "PSPNet", "PSPNetConfig", "PSPNetSegmenter", "PyramidPooling", "bundled_path", "create", "load",
    "load_with_metadata", "predict", "save",
]
