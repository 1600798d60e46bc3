"""pspnet: a PSPNet segmenter (Zhao et al., CVPR 2017) that produces coarse masks for the CascadePSP refiner.

The public names are imported on first use, as in :mod:`cascadepsp` (PEP 562).
"""

from __future__ import annotations

from cascadepsp.lazy import lazy_exports

_EXPORTS = {
    "PSPNetConfig": "config", "PSPNetSegmenter": "inference", "predict": "inference", "PSPNet": "model",
    "PyramidPooling": "model", "MODEL_FORMAT": "weights", "bundled_path": "weights", "create": "weights",
    "load": "weights", "load_with_metadata": "weights", "save": "weights",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
