"""Public API: the :class:`Refiner` class and the module-level :func:`refine` shortcut."""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..constants import BACKENDS
from ..deploy.openvino_runtime import PRECISIONS as OPENVINO_PRECISIONS
from ..deploy.openvino_runtime import OpenVINOModel, cpu_has_bf16
from ..deploy.quantize import QuantizationSettings
from ..devices import resolve_device
from ..io.inputs import check_same_size, mask_max, mask_size, to_binary_mask, to_rgb_uint8
from ..models.config import RMConfig
from ..weights.registry import create_model, load_model
from . import reference as inference
from .batched import BatchedOptions, BatchedRunner

WeightsArg = str | os.PathLike | nn.Module | None


ENGINES = ("batched", "reference")


def _resolve_model(weights: WeightsArg) -> nn.Module:
    if isinstance(weights, nn.Module):
        return copy.deepcopy(weights)  # our own copy: moving / converting it must not touch the caller's module
    if weights == "random":  # explicit opt-in, for tests and benchmarks only
        return create_model("resnet50")
    return load_model(weights)


def check_L(L: int) -> int:
    """Validate the global-step side / window size ``L``."""
    smallest = 4 * inference.WINDOW_PADDING + 8  # the local-step stride L//2 - 2*16 must stay positive
    if not isinstance(L, (int, np.integer)) or isinstance(L, bool) or L < smallest:
        raise ValueError(f"L: expected an integer >= {smallest}, got {L!r}")
    return int(L)


WINDOW_BYTES_PER_PIXEL = 64  # lower bound of one L x L window's forward: the 64-channel stride-2 fp32 stem output


def _memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (physical RAM for the CPU), or None when unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def check_L_fits(L: int, device: str | torch.device | None, image_size: tuple[int, int] | None = None) -> None:
    """Refuse an ``L`` whose L x L windows cannot fit in the device's memory, before any work is done."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    have = _memory_bytes(dev)
    need = L * L * WINDOW_BYTES_PER_PIXEL
    if have is None or need <= have:
        return
    largest = int((have / WINDOW_BYTES_PER_PIXEL) ** 0.5) // 8 * 8
    for_image = f" for a {image_size[0]}x{image_size[1]} image" if image_size else ""
    raise ValueError(f"L: {L} needs at least {need / 2**30:.0f} GiB{for_image} ({L}x{L} windows) but {dev.type} "
                     f"has {have / 2**30:.0f} GiB; use a smaller L (default 900, at most about {largest} here)")


FULL_SIZE_BYTES_PER_PIXEL = 16  # bound of the full-resolution memory one refinement takes (measured: about 11, 8K->16K)


def _available_bytes(device: torch.device) -> int | None:
    """Memory a refinement can still take on ``device``: MemAvailable for the CPU (Linux), free memory on CUDA."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError, IndexError):
        return None
    return _memory_bytes(device)


def check_image_fits(size_hw: tuple[int, int], device: str | torch.device | None) -> None:
    """Refuse a photo whose full-resolution buffers (image, masks, the local step's sums, the output: about
    ``FULL_SIZE_BYTES_PER_PIXEL`` bytes a pixel) cannot fit in the memory left, before any work is done,
    instead of being killed by the out-of-memory killer half-way."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    h, w = size_hw
    need = h * w * FULL_SIZE_BYTES_PER_PIXEL
    have = _available_bytes(dev)
    if have is None or need <= have:
        return
    raise ValueError(f"image: a {w}x{h} photo needs about {need / 2**30:.1f} GiB to refine but {dev.type} has "
                     f"{have / 2**30:.1f} GiB available; downscale it or free memory")


def _warn_if_no_foreground(mask: Any) -> None:
    hi = mask_max(mask)
    if hi > 0:
        warnings.warn(f"mask: values up to {hi:g} but no foreground (>= 128, or 1 in a 0/1 mask), so the result is "
                      "empty; a label map? refine each id with cascadepsp.inference.labels.refine_label_map", stacklevel=3)


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1] or None, got {threshold!r}")
    return float(threshold)


def probability_to_uint8(prob: np.ndarray, threshold: float | None) -> np.ndarray:
    """Probabilities -> soft 0-255 (the original's truncating ``* 255``), or 0/255 at ``threshold``."""
    if threshold is not None:
        return np.where(prob >= threshold, 255, 0).astype(np.uint8)
    return (prob * 255).astype(np.uint8)


def _openvino_model(model: nn.Module, device: torch.device, precision: str, compile: bool,
                    cache_dir: str | os.PathLike | None,
                    quantization: QuantizationSettings | None = None) -> nn.Module:
    """The OpenVINO stand-in for ``model`` at ``precision``, after refusing options that do not apply to it.

    int8 is calibrated on the shipped calibration photos (:mod:`cascadepsp.inference.calibration`) the first
    time a machine needs it; the entry is cached like the fp32 one."""
    if device.type != "cpu":
        raise ValueError(f"backend: 'openvino' runs on the CPU; got device {device} (use backend='torch')")
    if precision not in ("auto", *OPENVINO_PRECISIONS):
        raise ValueError(f"precision: backend='openvino' runs {'/'.join(OPENVINO_PRECISIONS)}; got {precision!r}")
    if compile:
        raise ValueError("compile: torch.compile does not apply to backend='openvino'")
    if precision == "auto":  # bf16 met the dev quality gate on the bundled default (docs/performance.md)
        precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision != "int8":
        return OpenVINOModel(model, cache_dir=cache_dir, precision=precision)
    from .calibration import calibration_id, record_inputs

    return OpenVINOModel(model, cache_dir=cache_dir, precision="int8", calibrate=record_inputs,
                         calibration_id=calibration_id(), settings=quantization)


def _with_local_step(model: nn.Module, local_step: str) -> RMConfig:
    """The model's RMConfig with ``local_step`` replaced (checked by RMConfig, one line naming the problem)."""
    config = getattr(model, "config", None)
    if not isinstance(config, RMConfig):
        raise ValueError("local_step: these weights carry no RMConfig; pass a RefinementModule or a weights file")
    return dataclasses.replace(config, local_step=local_step)


class Refiner:
    """Refines coarse masks with a CascadePSP refinement module.

    ``weights``: ``None``/``"default"`` (bundled), ``"official"`` (original checkpoint in its default
    location), a path (``.safetensors`` of ours or the official torch file), ``"random"`` (untrained,
    for tests), or an ``nn.Module``. ``device=None`` picks CUDA when available.

    ``engine="batched"`` (default) batches windows, uses bf16 on CUDA and bounded memory;
    ``engine="reference"`` is the original one-window-at-a-time fp32 pipeline. ``batch_size``, ``precision``
    and ``channels_last`` tune the batched engine (``None``/``"auto"`` pick per device); ``compile=True`` runs
    the local-step windows through ``torch.compile`` (a one-time compile of minutes on CPU, faster afterwards).
    A module passed as ``weights`` is copied, never changed. (``fast=`` of :meth:`refine` is another thing:
    the original's global-step-only refinement.)

    ``backend="openvino"`` runs the network through OpenVINO on the CPU (``precision="auto"``: bf16 on CPUs with
    bf16 instructions, else fp32; ``pip install 'cascadepsp[openvino]'``) under either engine; the converted
    model is cached in ``cache_dir`` (default :func:`cascadepsp.deploy.openvino_runtime.cache_root`), so only
    the first Refiner on a machine pays the conversion.
    ``quantization`` replaces the shipped NNCF settings of ``precision="int8"`` (its own cache entry).
    ``second_pass_iou`` replaces the weights' ``RMConfig.second_pass_iou``: refine again from the result where the
    first pass changed the mask by an IoU below it (better on weak masks, twice the time there; 0: one pass).
    ``local_step`` replaces the weights' ``RMConfig.local_step``: ``"two_pass"`` (the original) or ``"light"`` (one
    pass per window without the guided stage: faster on large photos at a measured quality cost, README).
    """

    def __init__(self, device: str | torch.device | None = None, weights: WeightsArg = None, *,
                 engine: str = "batched", batch_size: int | None = None, precision: str = "auto",
                 channels_last: bool | None = None, compile: bool = False, backend: str = "torch",
                 cache_dir: str | os.PathLike | None = None, quantization: QuantizationSettings | None = None,
                 second_pass_iou: float | None = None, local_step: str | None = None,
                 mode: str | None = None) -> None:
        if mode is not None:
            raise TypeError(f"Refiner: mode= is now engine= ('batched', formerly 'fast', or 'reference'); "
                            f"got mode={mode!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine: expected 'batched' or 'reference', got {engine!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {'/'.join(BACKENDS)}, got {backend!r}")
        if quantization is not None and (backend, precision) != ("openvino", "int8"):
            raise ValueError(f"quantization: applies to backend='openvino' with precision='int8' only; got "
                             f"backend={backend!r}, precision={precision!r}")
        self.device = resolve_device(device)
        self.engine = engine
        self.backend = backend
        self.model = _resolve_model(weights).to(self.device).eval()
        if local_step is not None:  # on our copy, before a backend converts it
            self.model.config = _with_local_step(self.model, local_step)
        self.edit_band = inference.edit_band(self.model)  # read before a backend replaces the module
        self.second_pass_iou = inference.second_pass_iou(self.model) if second_pass_iou is None else second_pass_iou
        if not 0.0 <= self.second_pass_iou <= 1.0:
            raise ValueError(f"second_pass_iou: expected a value in [0, 1] (0: one pass), got {second_pass_iou!r}")
        if backend == "openvino":
            self.model = _openvino_model(self.model, self.device, precision, compile, cache_dir, quantization)
            channels_last = False  # the OpenVINO graph takes plain contiguous arrays
            precision = "fp32"  # the engine's own arithmetic around the graph; the graph has its precision
        elif precision == "int8":
            raise ValueError("precision: 'int8' runs on backend='openvino' only")
        elif engine == "reference" and precision not in ("auto", "fp32"):
            raise ValueError(f"precision: engine='reference' is the original's fp32 loop; got {precision!r} "
                             f"(use engine='batched', or backend='openvino')")
        options = BatchedOptions(batch_size=batch_size, precision=precision, channels_last=channels_last,
                              compile=compile)
        # Only the batched engine gets a runner: it converts (our copy of) the model to channels_last, which
        # would change the reference path's convolution arithmetic.
        self._runner = BatchedRunner(self.model, self.device, options) if engine == "batched" else None

    @torch.inference_mode()
    def refine_probability(self, image: Any, mask: Any, fast: bool = False, L: int = 900, bgr: bool = False
                           ) -> np.ndarray:
        """Like :meth:`refine` but returns float32 foreground probabilities in [0, 1]."""
        rgb = to_rgb_uint8(image, bgr=bgr, size=mask_size(mask))  # each one's shape settles the other's layout
        fg = to_binary_mask(mask, size=rgb.shape[:2])
        check_same_size(rgb, fg)
        L = check_L(L)
        check_L_fits(L, self.device, (rgb.shape[1], rgb.shape[0]))
        check_image_fits(rgb.shape[:2], self.device)
        if not fg.any():  # nothing to refine: an empty mask stays empty
            _warn_if_no_foreground(mask)
            return np.zeros(fg.shape, np.float32)
        if fg.all():
            return np.ones(fg.shape, np.float32)
        prob = self._one_pass(rgb, fg, fast, L)
        if self.second_pass_iou > 0:  # a weak mask the first pass changed a lot gets a second look
            first = prob >= 0.5
            changed = np.count_nonzero(first & fg) < self.second_pass_iou * np.count_nonzero(first | fg)  # IoU
            if first.any() and not first.all() and changed:
                prob = self._one_pass(rgb, first, fast, L)
        return inference.confine_to_band(prob, fg, self.edit_band)

    def _one_pass(self, rgb: np.ndarray, fg: np.ndarray, fast: bool, L: int) -> np.ndarray:
        """One refinement of ``fg`` (bool, both classes present): float32 probabilities at the image size."""
        if self._runner is not None:
            return self._runner.refine(rgb, fg, L=L, fast=fast)
        im = inference.image_to_tensor(rgb, self.device)
        seg = inference.mask_to_tensor(fg, self.device)
        if fast:
            out = inference.refine_single_pass(self.model, im, seg, L)
        else:
            out = inference.refine_reference(self.model, im, seg, L)
        return out[0, 0].float().cpu().numpy()

    def refine(self, image: Any, mask: Any, fast: bool = False, L: int = 900, threshold: float | None = None,
               bgr: bool = False) -> np.ndarray:
        """Refine ``mask`` for ``image``; returns an HxW uint8 mask at the input size.

        Soft 0-255 output by default (the original's truncating ``* 255``); with ``threshold`` (in [0, 1])
        a binary 0/255 mask. ``fast=True`` runs the global step only. ``L`` is the global-step long side
        and the local window size. ``bgr=True`` for images read with OpenCV.
        """
        threshold = _check_threshold(threshold)
        return probability_to_uint8(self.refine_probability(image, mask, fast=fast, L=L, bgr=bgr), threshold)


_DEFAULT: dict[tuple[str, str], Refiner] = {}
_LOCK = threading.Lock()


def get_default_refiner(device: str | torch.device | None = None) -> Refiner:
    """The cached Refiner with bundled weights for ``device`` (built on first use)."""
    dev = resolve_device(device)
    key = (str(dev), "default")
    with _LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = Refiner(device=dev)
        return _DEFAULT[key]


def refine(image: Any, mask: Any, fast: bool = False, L: int = 900, threshold: float | None = None,
           bgr: bool = False, device: str | torch.device | None = None) -> np.ndarray:
    """Refine a coarse mask with the bundled default weights (a cached :class:`Refiner`)."""
    return get_default_refiner(device).refine(image, mask, fast=fast, L=L, threshold=threshold, bgr=bgr)
