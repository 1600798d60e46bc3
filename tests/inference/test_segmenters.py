"""U2-Netp ONNX wrapper: pre/post-processing on arrays, wiring with a stand-in session, and (optionally) the real model."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from cascadepsp.inference import segmenters
from cascadepsp.inference.segmenters import U2NET_MEAN, U2NET_STD, U2NetP, u2net_postprocess, u2net_preprocess

REAL_MODEL = Path(__file__).resolve().parents[2].parent / "shared" / "segmenters" / "u2netp.onnx"


def test_preprocess_shape_scaling_and_normalisation():
    image = np.zeros((50, 70, 3), np.uint8)
    image[:, :, 0] = 200  # max of the image is 200: red becomes 1.0 after the /max scaling
    image[:, :, 1] = 100
    x = u2net_preprocess(image)
    assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    expected = (np.array([1.0, 0.5, 0.0], np.float32) - U2NET_MEAN) / U2NET_STD
    assert np.allclose(x[0, :, 160, 160], expected, atol=1e-5)
    black = u2net_preprocess(np.zeros((10, 10, 3), np.uint8))  # no division by zero
    assert np.isfinite(black).all() and np.allclose(black[0, :, 0, 0], -U2NET_MEAN / U2NET_STD)
    assert u2net_preprocess(image, size=64).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="image"):
        u2net_preprocess(np.zeros((10, 10), np.uint8))


def test_preprocess_keeps_left_right_and_channel_order():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20, 0] = 255  # red left half
    image[:, 20:, 2] = 255  # blue right half
    x = u2net_preprocess(image, size=32)
    assert x[0, 0, 16, 4] > x[0, 0, 16, 28] and x[0, 2, 16, 28] > x[0, 2, 16, 4]


def test_postprocess_min_max_normalises_and_resizes():
    pred = np.zeros((1, 1, 320, 320), np.float32) + 0.2
    pred[0, 0, :, 160:] = 0.6
    out = u2net_postprocess(pred, (100, 50))
    assert out.shape == (100, 50) and out.dtype == np.float32
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    assert out[:, :20].max() < 0.01 and out[:, 30:].min() > 0.99
    flat = u2net_postprocess(np.full((320, 320), 0.7, np.float32), (10, 12))
    assert flat.shape == (10, 12) and not flat.any()
    with pytest.raises(ValueError, match="pred"):
        u2net_postprocess(np.zeros(5, np.float32), (4, 4))


class _FakeSession:
    """Stand-in for ``onnxruntime.InferenceSession``: 7 outputs, of which only the first is the mask."""

    def __init__(self, path, providers=None):
        self.path, self.providers, self.fed = path, providers, None

    def get_inputs(self):
        return [types.SimpleNamespace(name="input.1", shape=[1, 3, 320, 320])]

    def run(self, names, feeds):
        self.fed = feeds
        first = np.zeros((1, 1, 320, 320), np.float32)
        first[..., :, :160] = 1.0  # left half is the object
        others = [np.full((1, 1, 320, 320), 0.5, np.float32) for _ in range(6)]
        return [first, *others]


def test_predict_uses_the_first_output_and_returns_image_sized_probabilities(tmp_path, monkeypatch):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"stand-in")
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(InferenceSession=_FakeSession))
    model = U2NetP(onnx)
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    prob = model.predict(image)
    assert prob.shape == (60, 90) and prob.dtype == np.float32
    assert prob[:, :40].min() > 0.99 and prob[:, 50:].max() < 0.01
    assert model.session.fed["input.1"].shape == (1, 3, 320, 320)
    assert model.session.providers == ["CPUExecutionProvider"]
    mask = model.predict_mask(image)
    assert mask.dtype == bool and mask[:, :40].all() and not mask[:, 50:].any()
    bgr_prob = model.predict(image[:, :, ::-1], bgr=True)
    assert np.allclose(bgr_prob, prob)
    with pytest.raises(ValueError, match="threshold"):
        model.predict_mask(image, threshold=2.0)


def test_missing_onnxruntime_and_missing_file_give_clear_errors(tmp_path, monkeypatch):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"stand-in")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"pip install cascadepsp\[onnx\]"):
        U2NetP(onnx)
    with pytest.raises(FileNotFoundError, match="onnx_path"):
        U2NetP(tmp_path / "absent.onnx")
    assert "onnxruntime" not in segmenters.__dict__  # imported lazily, never at module import


@pytest.mark.skipif(not REAL_MODEL.is_file(), reason=f"optional integration test: {REAL_MODEL} not present")
def test_real_u2netp_finds_a_salient_object():
    pytest.importorskip("onnxruntime")
    from synthetic_data import shape_pair

    model = U2NetP(REAL_MODEL)
    image, gt = shape_pair(np.random.default_rng(0), 120, 160)
    prob = model.predict(image)
    assert prob.shape == (120, 160) and 0.0 <= prob.min() and prob.max() <= 1.0
    pred, truth = prob >= 0.5, gt > 0
    assert (pred & truth).sum() / (pred | truth).sum() > 0.8
