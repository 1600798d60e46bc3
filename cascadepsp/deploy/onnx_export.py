"""Export the refinement module as graphs with dynamic height and width (ONNX, and OpenVINO through it).

Two graphs cover everything the inference engines call: ``global`` (image + coarse mask -> the three-pass
cascade's OS8 / OS4 / OS1 probabilities) and ``window`` (image + mask + the global OS4 estimate -> OS1, the
local step's passes 2 and 3). Inputs are ImageNet-normalised RGB and masks in [-1, 1], both padded to a
multiple of 8, exactly as :func:`cascadepsp.inference.reference.safe_forward` feeds the torch model.

The torch model is never changed: export works on a float32 copy whose pyramid pooling is replaced by
:class:`BinAveragePool` (same arithmetic as ``nn.AdaptiveAvgPool2d``, but expressed with shape-generic ops so
the exported graph keeps H and W dynamic; ONNX has no adaptive pooling).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io.atomic import open_atomic

GRAPHS = ("global", "window")
OPSET = 17
INPUT_NAMES = {"global": ("image", "mask"), "window": ("image", "mask", "inter_os4")}
OUTPUT_NAMES = {"global": ("pred_os8", "pred_os4", "pred_os1"), "window": ("pred_os1",)}
# The model's output keys each graph output stands for (see RefinementModule.forward).
OUTPUT_KEYS = {"global": ("pred_28_3", "pred_56_2", "pred_224"), "window": ("pred_224",)}


class BinAveragePool(nn.Module):
    """Adaptive average pooling to ``bins`` x ``bins`` as two matrix products (bin i covers rows
    floor(i*H/s) .. ceil((i+1)*H/s), as ``nn.AdaptiveAvgPool2d``), exportable with dynamic H and W."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = int(bins)

    def _weights(self, n: Tensor | int, like: Tensor) -> Tensor:
        s = self.bins
        i = torch.arange(s, device=like.device)
        start = torch.div(i * n, s, rounding_mode="floor")
        end = torch.div((i + 1) * n + s - 1, s, rounding_mode="floor")
        j = torch.arange(n, device=like.device)
        inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = self._weights(x.shape[-2], x)  # s x H
        cols = self._weights(x.shape[-1], x)  # s x W
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def exportable(model: nn.Module) -> nn.Module:
    """A float32, eval-mode copy of ``model`` with every ``nn.AdaptiveAvgPool2d`` (square bins) replaced."""
    model = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                bins = child.output_size
                if not isinstance(bins, int):
                    if len(bins) != 2 or bins[0] is None or bins[0] != bins[1]:
                        raise ValueError(f"model: cannot export adaptive pooling to {bins} (square bins only)")
                    bins = bins[0]
                setattr(parent, name, BinAveragePool(bins))
    return model


class CascadeGraph(nn.Module):
    """The refinement module as one exported graph: ``global`` or ``window`` (see the module docstring)."""

    def __init__(self, model: nn.Module, graph: str = "global") -> None:
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"graph: expected one of {GRAPHS}, got {graph!r}")
        self.model = model
        self.graph = graph

    def forward(self, image: Tensor, mask: Tensor, inter_os4: Tensor | None = None) -> tuple[Tensor, ...]:
        out = self.model(image, mask, inter_os4)
        return tuple(out[k] for k in OUTPUT_KEYS[self.graph])


def example_inputs(graph: str, height: int = 64, width: int = 96) -> tuple[Tensor, ...]:
    """Inputs of the right kind for tracing (sizes are dynamic in the exported graph)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, height, width, generator=g)
    mask = (torch.rand(1, 1, height, width, generator=g) > 0.5).float() * 2 - 1
    if graph == "global":
        return image, mask
    return image, mask, torch.rand(1, 1, height, width, generator=g) * 2 - 1


def export_onnx(model: nn.Module, path: str | os.PathLike, graph: str = "global", opset: int = OPSET) -> Path:
    """Write ``model`` as an ONNX graph with dynamic batch, height and width (atomically, :func:`open_atomic`).

    Height and width must be multiples of 8 when the file is run (pad as ``safe_forward`` does)."""
    wrapped = CascadeGraph(exportable(model), graph).eval()
    names_in, names_out = INPUT_NAMES[graph], OUTPUT_NAMES[graph]
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in (*names_in, *names_out)}
    with open_atomic(path) as f, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-level shape checks, all static here
        torch.onnx.export(wrapped, example_inputs(graph), f, dynamo=False, input_names=list(names_in),
                          output_names=list(names_out), dynamic_axes=axes, opset_version=opset)
    return Path(path)
