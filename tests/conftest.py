"""Shared fixtures: small models, a saved weights file and generated images (no ../shared needed).

Tests are flat files named by area (see the README's Layout); ``-m "not slow"`` skips the few long ones.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import cascadepsp

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, so a test calls its ``main(argv)`` in the test process: a subprocess
    would pay a fresh torch import (seconds) for each call."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the README's test command runs 2 workers) each worker computes on one thread: two
    workers of two threads each on a 2-core machine would spend their time contending, not computing."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest single-threaded and do not fight other processes for the CPU (opt in per module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_model() -> cascadepsp.RefinementModule:
    """A randomly initialised ResNet-18 refiner (fast on CPU)."""
    torch.manual_seed(0)
    return cascadepsp.create_model("resnet18")


@pytest.fixture(scope="session")
def saved_weights(tmp_path_factory) -> Path:
    """A random ResNet-18 refiner saved as .safetensors (for the command-line tests)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "r18.safetensors"
    cascadepsp.save_model(cascadepsp.create_model("resnet18"), path)
    return path


@pytest.fixture(scope="session")
def small_refiner(small_model) -> cascadepsp.Refiner:
    return cascadepsp.Refiner(device="cpu", weights=small_model)


@pytest.fixture(scope="session")
def openvino_default_cache(tmp_path_factory) -> Path:
    """An OpenVINO cache holding the bundled default refiner, converted once per test run (a conversion takes
    10-20 s): under xdist the workers share it through their common temporary folder, the first one to get
    the lock converts. The OpenVINO tests of the deploy and CLI modules read it instead of converting again."""
    pytest.importorskip("openvino", reason="the `openvino` extra is not installed")
    from filelock import FileLock

    from cascadepsp.deploy.openvino_runtime import MANIFEST, build_entry, cache_key

    run_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_dir = run_dir.parent  # this run's folder, shared by its workers (each has a popen-gwN inside)
    root = run_dir / "ov_cache_default"
    model = cascadepsp.load_model("default").float().eval()
    entry = root / cache_key(model)
    with FileLock(str(root) + ".lock"):
        if not (entry / MANIFEST).is_file():
            assert build_entry(model, entry) > 0  # a cold cache converts
    return root


def republish_entry(source: Path, entry: Path, precision: str) -> float:
    """Stand-in for an OpenVINO build: publish a copy of a cache entry the real build wrote (``source``) as
    ``entry``, the way a fresh build is published (manifest with SHA-256s, renamed into place)."""
    from cascadepsp.deploy import openvino_runtime

    tmp = entry.parent / ".fresh"
    shutil.copytree(source, tmp)
    openvino_runtime._publish(tmp, entry, {"precision": precision})
    return 0.5


def make_scene(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with a textured ellipse object and its binary mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1
    image = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    image[mask] = rng.integers(150, 255, size=(int(mask.sum()), 3), dtype=np.uint8)
    return image, mask


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    return make_scene()
