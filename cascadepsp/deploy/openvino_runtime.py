"""Run the refinement module through OpenVINO on the CPU, with the converted model cached on disk.

:class:`OpenVINOModel` stands in for the torch module inside both inference engines: it takes the same
``(x, seg, inter_s8)`` tensors and returns the same output keys. The conversion (torch -> ONNX -> OpenVINO IR,
one dynamic-shape model per graph) is paid once per machine: entries live in :func:`cache_root`, keyed by a
hash of the weights, the architecture and the software versions, and every file is checked against its
recorded SHA-256 before use, so a corrupt or stale entry is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .onnx_export import GRAPHS, INPUT_NAMES, OUTPUT_KEYS, export_onnx

log = logging.getLogger("cascadepsp")

CACHE_FORMAT = "cascadepsp-openvino-1"
MANIFEST = "manifest.json"
ENTRY_FILES = tuple(graph + ext for graph in GRAPHS for ext in (".xml", ".bin"))  # each graph's IR, in an entry


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


def build_entry(model: nn.Module, entry: Path) -> float:
    """Convert ``model`` into ``entry`` (written in a temp folder, then renamed into place); returns seconds."""
    ov = _openvino()
    t0 = time.perf_counter()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        for graph in GRAPHS:
            onnx_path = export_onnx(model, tmp / f"{graph}.onnx", graph)
            ov.save_model(ov.convert_model(str(onnx_path)), str(tmp / f"{graph}.xml"), compress_to_fp16=False)
            onnx_path.unlink()
        files = {name: _sha256(tmp / name) for name in ENTRY_FILES}
        manifest = {"format": CACHE_FORMAT, "files": files, "openvino": ov.__version__, "torch": torch.__version__,
                    "config": repr(getattr(model, "config", None)), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if entry.exists():  # a stale or corrupt entry (checked by the caller), or another process won the race
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process renamed its finished entry into place first: use that one
            if _check_entry(entry) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


class OpenVINOModel(nn.Module):
    """The refinement module compiled by OpenVINO for the CPU (fp32), called like the torch module.

    ``forward(x, seg)`` runs the global graph, ``forward(x, seg, inter_s8)`` the window graph; inputs are
    padded to a multiple of 8 by the engines. ``conversion_seconds`` is 0.0 when the cache was warm."""

    def __init__(self, model: nn.Module, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None) -> None:
        super().__init__()
        ov = _openvino()
        self.config = getattr(model, "config", None)
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        self.entry = root / cache_key(model)
        self.conversion_seconds = 0.0
        problem = _check_entry(self.entry) if self.entry.exists() else "absent"
        if problem is not None:
            if problem != "absent":
                warnings.warn(f"openvino cache entry {self.entry} cannot be trusted ({problem}); rebuilding it",
                              stacklevel=2)
            log.info("converting the model for OpenVINO into %s (once per machine)", self.entry)
            self.conversion_seconds = build_entry(model, self.entry)
        core = ov.Core()
        props = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                 "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self._compiled = {g: core.compile_model(core.read_model(str(self.entry / f"{g}.xml")), "CPU", props)
                          for g in GRAPHS}

    def forward(self, x: Tensor, seg: Tensor, inter_s8: Tensor | None = None,
                inter_s4: Tensor | None = None) -> dict[str, Tensor]:
        if inter_s4 is not None:
            raise ValueError("inter_s4: the OpenVINO backend runs the global and the window graph only")
        graph = "global" if inter_s8 is None else "window"
        tensors = (x, seg) if inter_s8 is None else (x, seg, inter_s8)
        feed = {name: np.ascontiguousarray(t.detach().float().cpu().numpy())
                for name, t in zip(INPUT_NAMES[graph], tensors, strict=True)}
        compiled = self._compiled[graph]
        result = compiled(feed)
        outputs = [torch.from_numpy(np.array(result[compiled.output(i)])) for i in range(len(OUTPUT_KEYS[graph]))]
        return dict(zip(OUTPUT_KEYS[graph], outputs, strict=True))
