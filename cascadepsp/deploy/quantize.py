"""Post-training int8 quantisation of the refinement module's OpenVINO graphs with NNCF.

The statistics come from what the inference engines really feed the network (recorded by
:func:`cascadepsp.inference.calibration.record_inputs` on the shipped calibration photos). Some parts stay in
floating point because int8 breaks them: the trainable guided filter (products and quotients of local
covariances), and whatever :class:`QuantizationSettings` ignores besides; the choice was made on dev
(docs/performance.md). ``SETTINGS_VERSION`` keys the cache, so a change here rebuilds every int8 entry.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SETTINGS_VERSION = "int8-1"


@dataclass(frozen=True)
class QuantizationSettings:
    """What NNCF is asked to do; ``ignored_patterns`` are regular expressions over IR node names (the
    exported module paths, e.g. ``/model/guided/...``) whose operations stay in floating point."""

    preset: str = "mixed"  # NNCF QuantizationPreset: "performance" (symmetric) or "mixed" (asymmetric acts.)
    ignored_patterns: tuple[str, ...] = (".*/guided/.*",)
    fast_bias_correction: bool = True
    max_samples: int = 300  # calibration inputs used per graph (all of them when fewer)

    def to_dict(self) -> dict[str, Any]:
        return {"version": SETTINGS_VERSION, **dataclasses.asdict(self)}


DEFAULT_SETTINGS = QuantizationSettings()


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise ImportError("precision='int8' needs NNCF: pip install 'cascadepsp[int8]'") from e
    return nncf


def quantize_graph(model: Any, inputs: Sequence[dict[str, np.ndarray]],
                   settings: QuantizationSettings = DEFAULT_SETTINGS) -> Any:
    """An int8 copy of the OpenVINO ``model`` calibrated on ``inputs`` (feeds by input name, any float dtype)."""
    nncf = _nncf()
    if not inputs:
        raise ValueError("inputs: no calibration inputs for this graph")
    names = {p.get_any_name() for p in model.inputs}
    present = {node.get_friendly_name() for node in model.get_ordered_ops()}
    patterns = [p for p in settings.ignored_patterns if any(re.fullmatch(p, n) for n in present)]
    feeds = list(inputs)[: settings.max_samples]
    if set(feeds[0]) != names:
        raise ValueError(f"inputs: feeds name {sorted(feeds[0])}, the graph takes {sorted(names)}")
    dataset = nncf.Dataset(feeds, lambda feed: {k: np.asarray(v, np.float32) for k, v in feed.items()})
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    if settings.preset not in presets:
        raise ValueError(f"preset: expected one of {sorted(presets)}, got {settings.preset!r}")
    ignored = nncf.IgnoredScope(patterns=patterns) if patterns else None
    return nncf.quantize(model, dataset, preset=presets[settings.preset], subset_size=len(feeds),
                         fast_bias_correction=settings.fast_bias_correction, ignored_scope=ignored)
