"""The shapes a refiner or a segmenter must have to be used by the tools here (``Refiner`` and stand-ins).

Everything that takes "a refiner" types it with one of these, so a user's own class (or a test double) only
needs the one method it uses.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ProbabilityRefiner(Protocol):
    """Soft foreground probability in [0, 1] for a photo and its coarse mask (label maps, instances)."""

    def refine_probability(self, image: Any, mask: Any, fast: bool = False, L: int = 900,
                           bgr: bool = False) -> np.ndarray: ...


class MaskRefiner(Protocol):
    """A refined uint8 mask (0-255, or 0/255 with ``threshold``) for a photo and its coarse mask."""

    def refine(self, image: Any, mask: Any, fast: bool = False, L: int = 900, threshold: float | None = None,
               bgr: bool = False) -> np.ndarray: ...


class Segmenter(Protocol):
    """A coarse segmenter to put in front of the refiner (``pspnet.PSPNetSegmenter``, ``U2NetP``)."""

    def predict(self, image: Any, bgr: bool = False) -> np.ndarray: ...

    def predict_mask(self, image: Any) -> np.ndarray: ...  # HxW bool, cut at the segmenter's own threshold
