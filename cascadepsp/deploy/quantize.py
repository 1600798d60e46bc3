"""Post-training int8 quantisation of the refinement module's OpenVINO graphs with NNCF.

The statistics come from what the inference engines really feed the network (recorded by
:func:`cascadepsp.inference.calibration.record_inputs` on the shipped calibration photos). Some parts stay in
floating point because int8 breaks them: the global graph (its cascaded passes compound the error on weak
masks), the trainable guided filter (products and quotients of local covariances) and the output heads; the
choice was made on dev (docs/performance.md). ``SETTINGS_VERSION`` keys the cache, so a change here rebuilds
every int8 entry.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .onnx_export import GRAPHS

SETTINGS_VERSION = "int8-2"


@dataclass(frozen=True)
class QuantizationSettings:
    """What NNCF is asked to do; ``ignored_patterns`` are regular expressions over IR node names (the
    exported module paths, e.g. ``/model/guided/...``) whose operations stay in floating point."""

    preset: str = "mixed"  # NNCF QuantizationPreset: "performance" (symmetric) or "mixed" (asymmetric acts.)
    # The graphs quantised; the others stay fp32 in the entry. The global graph stays fp32: its three cascaded
    # passes carry a quantisation error from one pass into the next (dev IoU -0.99 on weak masks, int8-1).
    graphs: tuple[str, ...] = ("window",)
    ignored_patterns: tuple[str, ...] = (".*/guided/.*", ".*/final_.*")
    fast_bias_correction: bool = True
    max_samples: int = 300  # calibration inputs used per graph (all of them when fewer)

    def __post_init__(self) -> None:
        if not self.graphs or not set(self.graphs) <= set(GRAPHS):
            raise ValueError(f"graphs: expected a non-empty subset of {GRAPHS!r}, got {self.graphs!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"version": SETTINGS_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantizationSettings:
        """Settings from JSON-like ``d`` (lists for tuples); unknown keys are refused."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields - {"version"})
        if unknown:
            raise ValueError(f"quantization settings: unknown keys {unknown}; known: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "version"})


DEFAULT_SETTINGS = QuantizationSettings()


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise ImportError("precision='int8' needs NNCF: pip install 'cascadepsp[int8]'") from e
    return nncf


def quantize_graph(model: Any, inputs: Sequence[dict[str, np.ndarray]], settings: QuantizationSettings) -> Any:
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
