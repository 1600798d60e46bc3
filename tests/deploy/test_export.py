"""ONNX export (dynamic sizes) and the OpenVINO backend, checked against PyTorch on a real photo."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import republish_entry

import cascadepsp
from cascadepsp.cli import main
from cascadepsp.deploy import openvino_runtime
from cascadepsp.deploy.onnx_export import OUTPUT_KEYS, BinAveragePool, exportable
from cascadepsp.deploy.openvino_runtime import MANIFEST, OpenVINOModel, cache_key
from cascadepsp.inference.reference import image_to_tensor, mask_to_tensor, pad_to_multiple_of_8

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "davis"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def real_photo(scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A DAVIS example frame and its U2-Netp mask, downscaled (odd sizes on purpose: padding is exercised)."""
    im = cv2.cvtColor(cv2.imread(str(EXAMPLES / "soapbox_00060_im.jpg")), cv2.COLOR_BGR2RGB)
    seg = cv2.imread(str(EXAMPLES / "soapbox_00060_seg.png"), cv2.IMREAD_GRAYSCALE)
    size = (int(im.shape[1] * scale) | 1, int(im.shape[0] * scale) | 1)
    return cv2.resize(im, size, interpolation=cv2.INTER_AREA), cv2.resize(seg, size) >= 128


def network_inputs(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    im, seg = real_photo(scale)
    return pad_to_multiple_of_8(image_to_tensor(im), 0.0), pad_to_multiple_of_8(mask_to_tensor(seg), -1.0)


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
@pytest.mark.parametrize("hw", [(5, 11), (6, 6), (7, 13), (60, 107), (113, 64)])
def test_bin_average_pool_matches_adaptive_pooling(bins, hw):
    x = torch.randn(2, 4, *hw)
    expected = torch.nn.AdaptiveAvgPool2d(bins)(x)
    got = BinAveragePool(bins)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_exportable_is_a_copy(small_model):
    copy = exportable(small_model)
    assert any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in small_model.modules())
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in copy.modules())
    x, seg = torch.randn(1, 3, 64, 72), torch.rand(1, 1, 64, 72) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(copy(x, seg)["pred_224"], small_model(x, seg)["pred_224"], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def default_model() -> torch.nn.Module:
    return cascadepsp.load_model("default").float().eval()


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["global", "window"])
def test_exported_onnx_matches_torch_on_a_real_photo(tmp_path, default_model, graph, capsys):
    out = tmp_path / f"{graph}.onnx"
    assert main(["export-onnx", str(out), "--graph", graph]) == 0
    assert "wrote" in capsys.readouterr().out
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    for scale in (0.5, 0.3):  # two different sizes through the one file: height and width are dynamic
        x, seg = network_inputs(scale)
        feed = {"image": x.numpy(), "mask": seg.numpy()}
        inter = None
        if graph == "window":
            inter = (torch.rand_like(seg) * 2 - 1)
            feed["inter_os4"] = inter.numpy()
        with torch.no_grad():
            expected = default_model(x, seg, inter)
        got = session.run(None, feed)
        assert len(got) == len(OUTPUT_KEYS[graph])
        for array, key in zip(got, OUTPUT_KEYS[graph], strict=True):
            assert array.shape == tuple(expected[key].shape)
            assert np.abs(array - expected[key].numpy()).max() <= 1e-4, key


def test_export_onnx_refuses_a_wrong_suffix(tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path / "model.bin")]) == 2
    assert "expected a path ending in .onnx" in capsys.readouterr().err


@pytest.fixture(scope="module")
def warm_cache(openvino_default_cache, default_model) -> Path:
    """The session's one conversion of the bundled refiner (conftest), holding this module's model."""
    assert (openvino_default_cache / cache_key(default_model) / MANIFEST).is_file()
    return openvino_default_cache


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose probabilities differ by at most 1/255."""
    return float(np.mean(np.abs(a.astype(np.float64) - b) <= 1 / 255 + 1e-6))


@pytest.fixture(scope="module")
def torch_reference(default_model) -> dict[int, np.ndarray]:
    """The torch reference engine's probabilities on the half-size photo, once for both OpenVINO engines:
    L = 480 upsamples the photo for the global step; L = 200 refines several full-resolution windows."""
    im, seg = real_photo(0.5)
    reference = cascadepsp.Refiner(device="cpu", weights=default_model, engine="reference")
    return {L: reference.refine_probability(im, seg, L=L) for L in (480, 200)}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_openvino_backend_agrees_with_the_torch_reference(warm_cache, default_model, torch_reference, engine):
    im, seg = real_photo(0.5)
    refiner = cascadepsp.Refiner(device="cpu", weights=default_model, engine=engine, backend="openvino",
                                 precision="fp32", cache_dir=warm_cache)
    assert refiner.model.conversion_seconds == 0.0  # the warm cache is used, not rebuilt
    for L, expected in torch_reference.items():
        got = refiner.refine_probability(im, seg, L=L)
        assert agreement(got, expected) >= 0.999, L


class _RebuildStarted(Exception):
    """Raised by a recording stand-in for build_entry: the rebuild was started, no need to convert again."""


def test_corrupt_or_stale_cache_entries_are_rebuilt(warm_cache, default_model, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    shutil.copytree(warm_cache, root)
    entry = root / cache_key(default_model)
    blob = entry / "window.bin"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    blob.write_bytes(bytes(data))
    # A real conversion is checked by the session fixture (a cold cache converts); here the rebuild's
    # conversion (about 12 s) is stood in for by the files a conversion of the same model wrote, published
    # into the entry like a fresh build, so what is tested is that the corrupt entry is replaced and used.
    rebuilds = []

    def convert(model, where):
        rebuilds.append((model, where))
        return republish_entry(warm_cache / where.name, where, "fp32")

    monkeypatch.setattr(openvino_runtime, "build_entry", convert)
    with pytest.warns(UserWarning, match="does not match its recorded SHA-256"):
        rebuilt = OpenVINOModel(default_model, cache_dir=root)
    assert rebuilds == [(default_model, entry)] and rebuilt.conversion_seconds == 0.5
    x, seg = network_inputs(0.3)
    with torch.no_grad():
        expected = default_model(x, seg, seg)["pred_224"]
    assert (rebuilt(x, seg, seg)["pred_224"] - expected).abs().max() <= 1e-4  # the repaired weights run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and the rebuilt entry is trusted again, silently
        assert OpenVINOModel(default_model, cache_dir=root).conversion_seconds == 0.0
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["format"] = "cascadepsp-openvino-0"  # an entry written by another version
    (entry / MANIFEST).write_text(json.dumps(manifest))
    rebuilds.clear()

    def recorded(model, where):
        rebuilds.append((model, where))
        raise _RebuildStarted

    monkeypatch.setattr(openvino_runtime, "build_entry", recorded)
    with pytest.warns(UserWarning, match="format 'cascadepsp-openvino-0'"), pytest.raises(_RebuildStarted):
        OpenVINOModel(default_model, cache_dir=root)
    assert rebuilds == [(default_model, entry)]


def test_cache_key_follows_the_weights(small_model):
    changed = cascadepsp.create_model("resnet18")
    with torch.no_grad():
        changed.load_state_dict(small_model.state_dict())
        assert cache_key(changed) == cache_key(small_model)
        next(changed.parameters()).add_(1e-3)
    assert cache_key(changed) != cache_key(small_model)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "tensorrt"}, "backend: expected one of torch/openvino"),
    ({"backend": "openvino", "precision": "fp16"}, "backend='openvino' runs fp32/bf16/int8; got 'fp16'"),
    ({"precision": "int8"}, "'int8' runs on backend='openvino' only"),
    ({"backend": "openvino", "compile": True}, "does not apply to backend='openvino'"),
])
def test_bad_backend_options(small_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cascadepsp.Refiner(device="cpu", weights=small_model, **kwargs)


def test_openvino_window_graph_follows_local_step(tmp_path):
    """RMConfig.local_step is part of the cache key, and the converted window graph of a "light" model computes
    the torch module's light window (pass 3 only, without the guided output stage)."""
    torch.manual_seed(0)
    two = cascadepsp.create_model("lite0_guided").float().eval()
    one = copy.deepcopy(two)
    one.config = dataclasses.replace(two.config, local_step="light")
    assert cache_key(one) != cache_key(two)
    converted = OpenVINOModel(one, cache_dir=tmp_path, precision="fp32", threads=1)
    x, seg = network_inputs(0.3)
    inter = torch.rand_like(seg) * 2 - 1
    got = converted(x, seg, inter)
    with torch.no_grad():
        expected = one(x, seg, inter)
    for key in OUTPUT_KEYS["window"]:
        assert np.abs(got[key].numpy() - expected[key].numpy()).max() <= 1e-4, key
