"""Run the refinement module through OpenVINO on the CPU, with the converted model cached on disk.

:class:`OpenVINOModel` stands in for the torch module inside both inference engines: it takes the same
``(x, seg, inter_s8)`` tensors and returns the same output keys. The conversion (torch -> ONNX -> OpenVINO IR,
one dynamic-shape model per graph) is paid once per machine: entries live in :func:`cache_root`, keyed by a
hash of the weights, the architecture and the software versions, and every file is checked against its
recorded SHA-256 before use, so a corrupt or stale entry is rebuilt, never trusted.

Precisions: ``fp32``; ``bf16`` (the same IR run under the CPU plugin's bf16 inference hint, on CPUs with bf16
instructions); ``int8`` (a second entry, quantised by NNCF from the fp32 one with calibration inputs the
caller records, see :mod:`cascadepsp.deploy.quantize`; keyed by the weights, the settings and the calibration).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import quantize
from .onnx_export import GRAPHS, INPUT_NAMES, OUTPUT_KEYS, export_onnx
from .quantize import QuantizationSettings, quantize_graph

log = logging.getLogger("cascadepsp")

CACHE_FORMAT = "cascadepsp-openvino-2"  # bump when the converted graphs change (2: box filter by window sums)
MANIFEST = "manifest.json"
ENTRY_FILES = tuple(graph + ext for graph in GRAPHS for ext in (".xml", ".bin"))  # each graph's IR, in an entry
PRECISIONS = ("fp32", "bf16", "int8")
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 graphs run their unquantised parts in fp32

# The inputs of the named graphs' network calls, recorded on calibration photos by an fp32 OpenVINOModel.
Calibrate = Callable[..., dict[str, list[dict[str, np.ndarray]]]]  # calibrate(model, graphs=(...))


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise ImportError("backend='openvino' needs the openvino package: pip install 'cascadepsp[openvino]'") from e
    return openvino


def cache_root() -> Path:
    """``$CASCADEPSP_OPENVINO_CACHE``, else ``$CASCADEPSP_HOME/openvino`` (default ``~/.cache/cascadepsp/openvino``)."""
    if os.environ.get("CASCADEPSP_OPENVINO_CACHE"):
        return Path(os.environ["CASCADEPSP_OPENVINO_CACHE"])
    home = Path(os.environ.get("CASCADEPSP_HOME", Path.home() / ".cache" / "cascadepsp"))
    return home / "openvino"


def cache_key(model: nn.Module) -> str:
    """SHA-256 of the weights (names, dtypes, shapes, bytes), the architecture and the converter versions."""
    ov = _openvino()
    h = hashlib.sha256(CACHE_FORMAT.encode())
    config = getattr(model, "config", None)
    h.update(repr(config).encode())
    h.update(f"openvino {ov.__version__} torch {torch.__version__}".encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_entry(entry: Path) -> str | None:
    """None when every file of the entry matches its manifest, else the reason it cannot be trusted."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e.__class__.__name__})"
    if manifest.get("format") != CACHE_FORMAT:
        return f"format {manifest.get('format')!r}, expected {CACHE_FORMAT!r}"
    files = manifest.get("files", {})
    for name in ENTRY_FILES:
        if name not in files:
            return f"{name} missing from the manifest"
        if not (entry / name).is_file():
            return f"{name} missing"
        if _sha256(entry / name) != files[name]:
            return f"{name} does not match its recorded SHA-256"
    return None


def _publish(tmp: Path, entry: Path, manifest: dict[str, Any]) -> None:
    """Record the SHA-256 of every IR file in ``tmp`` and rename it into place as ``entry``."""
    files = {name: _sha256(tmp / name) for name in ENTRY_FILES}
    manifest = {"format": CACHE_FORMAT, "files": files, "openvino": _openvino().__version__,
                "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"), **manifest}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if entry.exists():  # a stale or corrupt entry (checked by the caller), or another process won the race
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.replace(tmp, entry)
    except OSError:  # another process renamed its finished entry into place first: use that one
        if _check_entry(entry) is not None:
            raise


def _temporary_entry(entry: Path) -> Path:
    entry.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))


def build_entry(model: nn.Module, entry: Path) -> float:
    """Convert ``model`` into ``entry`` (written in a temp folder, then renamed into place); returns seconds."""
    ov = _openvino()
    t0 = time.perf_counter()
    tmp = _temporary_entry(entry)
    try:
        for graph in GRAPHS:
            onnx_path = export_onnx(model, tmp / f"{graph}.onnx", graph)
            ov.save_model(ov.convert_model(str(onnx_path)), str(tmp / f"{graph}.xml"), compress_to_fp16=False)
            onnx_path.unlink()
        _publish(tmp, entry, {"precision": "fp32", "config": repr(getattr(model, "config", None))})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def build_int8_entry(fp32_entry: Path, entry: Path, inputs: dict[str, list[dict[str, np.ndarray]]],
                     settings: QuantizationSettings) -> float:
    """Quantise the graphs of ``fp32_entry`` that ``settings.graphs`` names with ``inputs`` (by graph) into
    ``entry``, the others copied as they are; returns seconds."""
    ov = _openvino()
    t0 = time.perf_counter()
    tmp = _temporary_entry(entry)
    try:
        core = ov.Core()
        for graph in GRAPHS:
            model = core.read_model(str(fp32_entry / f"{graph}.xml"))
            if graph in settings.graphs:
                model = quantize_graph(model, inputs[graph], settings)
            ov.save_model(model, str(tmp / f"{graph}.xml"), compress_to_fp16=False)
        counts = {graph: min(len(inputs[graph]), settings.max_samples) for graph in settings.graphs}
        _publish(tmp, entry, {"precision": "int8", "from": fp32_entry.name, "quantization": settings.to_dict(),
                              "calibration_inputs": counts})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon since Sapphire Rapids), read from /proc/cpuinfo or torch (once)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        return "amx_int8" in cpuinfo.read_text()
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # other systems: torch's own probe, where it has one
    return bool(check and check())


def _is_quantised(graph: Any) -> bool:
    return any(op.get_type_name() == "FakeQuantize" for op in graph.get_ops())


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX-512 BF16 or AMX)."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOModel(nn.Module):
    """The refinement module compiled by OpenVINO for the CPU, called like the torch module.

    ``forward(x, seg)`` runs the global graph, ``forward(x, seg, inter_s8)`` the window graph; inputs are
    padded to a multiple of 8 by the engines. ``precision="int8"`` needs ``calibrate`` (called with this
    module running fp32 and ``graphs=`` the graphs to quantise; returns their inputs to calibrate on) when its
    cache entry does not exist yet, and ``calibration_id`` names those inputs in the entry's key.
    ``conversion_seconds`` (ONNX -> IR) and ``quantization_seconds`` (calibration + NNCF) are 0.0 when the
    cache was warm.

    ``static_shapes``: compile quantised graphs once per input shape instead of once for every shape. OpenVINO's
    CPU plugin crashes (segmentation fault) running int8 graphs with dynamic shapes on AMX CPUs
    (openvinotoolkit/openvino#37577, seen here with 2026.4), so ``None`` turns it on there; windows share one
    shape, so it costs one compilation per window size (the last ``STATIC_SHAPES_KEPT`` are kept)."""

    STATIC_SHAPES_KEPT = 4

    def __init__(self, model: nn.Module, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, precision: str = "fp32", calibrate: Calibrate | None = None,
                 calibration_id: str = "", settings: QuantizationSettings | None = None,
                 static_shapes: bool | None = None) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {'/'.join(PRECISIONS)}, got {precision!r}")
        if precision == "bf16" and not cpu_has_bf16():
            raise ValueError("precision: 'bf16' needs a CPU with bf16 instructions (AVX-512 BF16 or AMX); "
                             "this one has none, use 'fp32'")
        settings = settings or quantize.DEFAULT_SETTINGS
        self.config = getattr(model, "config", None)
        self.precision = precision
        self.threads = int(threads or torch.get_num_threads())
        self.static_shapes = cpu_has_amx() if static_shapes is None else bool(static_shapes)
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        fp32_entry = root / cache_key(model)
        self.conversion_seconds = self.quantization_seconds = 0.0

        def convert(entry: Path) -> float:
            return build_entry(model, entry)

        if precision != "int8":
            self.entry = fp32_entry
            self.conversion_seconds = self._ensure(fp32_entry, convert, "converting the model")
            self._compile(fp32_entry, precision)
            return

        def quantise(entry: Path) -> float:
            """Only when the int8 entry must be built: the fp32 graphs, compiled, record the calibration."""
            if calibrate is None:
                raise ValueError(f"precision: 'int8' needs calibration inputs (calibrate=) to build {entry.name}; "
                                 "Refiner(backend='openvino') supplies them")
            self.conversion_seconds = self._ensure(fp32_entry, convert, "converting the model")
            self._compile(fp32_entry, "fp32")
            t0 = time.perf_counter()
            inputs = calibrate(self, graphs=settings.graphs)  # runs this module, compiled fp32 above
            return time.perf_counter() - t0 + build_int8_entry(fp32_entry, entry, inputs, settings)

        tag = hashlib.sha256(json.dumps([settings.to_dict(), calibration_id]).encode()).hexdigest()[:12]
        self.entry = root / f"{fp32_entry.name}-int8-{tag}"
        self.quantization_seconds = self._ensure(self.entry, quantise, "quantising the model to int8")
        self._compile(self.entry, precision)

    @staticmethod
    def _ensure(entry: Path, build: Callable[[Path], float], what: str) -> float:
        """Make ``entry`` trustworthy: checked, else (re)built by ``build``; returns the seconds spent building."""
        problem = _check_entry(entry) if entry.exists() else "absent"
        if problem is None:
            return 0.0
        if problem != "absent":
            warnings.warn(f"openvino cache entry {entry} cannot be trusted ({problem}); rebuilding it", stacklevel=3)
        log.info("%s for OpenVINO into %s (once per machine)", what, entry)
        return build(entry)

    def _compile(self, entry: Path, precision: str) -> None:
        ov = _openvino()
        self._core = ov.Core()
        self._props = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": self.threads}
        graphs = {g: self._core.read_model(str(entry / f"{g}.xml")) for g in GRAPHS}
        # static: the graph read from disk, compiled per input shape in forward; else compiled once for all shapes
        self._static = {g: graph for g, graph in graphs.items() if self.static_shapes and _is_quantised(graph)}
        self._compiled = {g: self._core.compile_model(graph, "CPU", self._props)
                          for g, graph in graphs.items() if g not in self._static}
        self._by_shape: OrderedDict[tuple[str, tuple[tuple[int, ...], ...]], Any] = OrderedDict()
        self._by_shape_lock = threading.Lock()  # callers may share one model across threads (serve)

    def _compiled_for(self, graph: str, feed: dict[str, np.ndarray]) -> Any:
        if graph not in self._static:
            return self._compiled[graph]
        key = (graph, tuple(a.shape for a in feed.values()))
        with self._by_shape_lock:
            if key not in self._by_shape:
                model = self._static[graph].clone()
                model.reshape({name: list(a.shape) for name, a in feed.items()})
                self._by_shape[key] = self._core.compile_model(model, "CPU", self._props)
                while len(self._by_shape) > self.STATIC_SHAPES_KEPT:
                    self._by_shape.popitem(last=False)
            self._by_shape.move_to_end(key)
            return self._by_shape[key]

    def forward(self, x: Tensor, seg: Tensor, inter_s8: Tensor | None = None,
                inter_s4: Tensor | None = None) -> dict[str, Tensor]:
        if inter_s4 is not None:
            raise ValueError("inter_s4: the OpenVINO backend runs the global and the window graph only")
        graph = "global" if inter_s8 is None else "window"
        tensors = (x, seg) if inter_s8 is None else (x, seg, inter_s8)
        feed = {name: np.ascontiguousarray(t.detach().float().cpu().numpy())
                for name, t in zip(INPUT_NAMES[graph], tensors, strict=True)}
        compiled = self._compiled_for(graph, feed)
        result = compiled(feed)
        outputs = [torch.from_numpy(np.array(result[compiled.output(i)])) for i in range(len(OUTPUT_KEYS[graph]))]
        return dict(zip(OUTPUT_KEYS[graph], outputs, strict=True))
