"""PSPNet inference (sliding window, shapes, classes) and the segment-then-refine pipeline and CLI."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script
from synthetic_data import shape_pair
from torch import nn

import cascadepsp
import pspnet
from cascadepsp.evaluation.overlay import GAP
from pspnet.config import PSPNetConfig
from pspnet.inference import PSPNetSegmenter, sliding_window_probs, window_starts
from pspnet.pipeline import collect_images, output_stems, segment_and_refine
from pspnet.postprocess import keep_main_regions

SMALL = {"head_channels": 32, "aux_channels": 16, "crop_size": 48, "base_size": 64}
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model() -> pspnet.PSPNet:
    torch.manual_seed(0)
    return pspnet.create("resnet18", classes=2, **SMALL)


class PixelwiseNet(nn.Module):
    """A stand-in whose logits at a pixel depend on that pixel only: windowing must not change the result."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.config = PSPNetConfig(encoder_name="resnet18", classes=classes)
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, classes).view(1, classes, 1, 1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.w * (x[:, :1] + 0.3 * x[:, 1:2])


def test_window_starts_cover_the_length():
    assert window_starts(10, 16, 11) == [0]
    assert window_starts(16, 16, 11) == [0]
    starts = window_starts(100, 32, 22)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(0 < b - a <= 22 for a, b in zip(starts, starts[1:], strict=False))
    covered = np.zeros(100, bool)
    for s in starts:
        covered[s:s + 32] = True
    assert covered.all()


def test_sliding_window_equals_whole_image_for_a_pixelwise_model():
    net = PixelwiseNet(3).eval()
    x = torch.randn(1, 3, 70, 95)
    whole = torch.softmax(net(x), dim=1)[0]
    net.calls = 0
    windowed = sliding_window_probs(net, x, crop=32, stride=21, batch=3)
    assert net.calls > 1 and windowed.shape == (3, 70, 95)
    assert torch.allclose(windowed, whole, atol=1e-6)
    small = sliding_window_probs(net, x[:, :, :20, :25], crop=32, stride=21)  # padded up to the crop
    assert small.shape == (3, 20, 25) and torch.allclose(small, whole[:, :20, :25], atol=1e-6)
    flipped = sliding_window_probs(net, x, crop=32, stride=21, flip=True)
    assert torch.allclose(flipped, whole, atol=1e-6)


@pytest.fixture(scope="module")
def pixelwise_model(model) -> pspnet.PSPNet:
    """The module's PSPNet (its config: base size, crop) with a PixelwiseNet's forward: foreground exactly where
    the photo is bright, so the right mask is known without running predict."""
    net = copy.deepcopy(model).eval()
    net.forward = PixelwiseNet(2).forward
    return net


@pytest.mark.parametrize("hw", [(65, 97), (200, 31), (30, 40)])
def test_predict_shapes_and_types(model, pixelwise_model, hw):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    prob, mask = pspnet.predict(image, model)
    assert prob.shape == hw and prob.dtype == np.float32 and mask.shape == hw and mask.dtype == np.uint8
    assert 0.0 <= prob.min() and prob.max() <= 1.0 and set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(mask == 1, prob > 0.5) or np.mean((mask == 1) != (prob > 0.5)) < 1e-3
    # Values in place at each odd size (resized to the base size and back, windowed): a photo bright on its
    # left 2/5 gets that part as foreground, wrong at most in the two columns beside the edge (measured: exact).
    edge = hw[1] * 2 // 5
    image = rng.integers(0, 60, (*hw, 3), dtype=np.uint8)
    image[:, :edge] += 180
    prob, mask = pspnet.predict(image, pixelwise_model)
    wrong = (mask == 1) != (np.arange(hw[1]) < edge)[None, :]
    assert not wrong[:, np.r_[0:edge - 1, edge + 1:hw[1]]].any()
    assert prob[:, 0].min() > 0.9 and prob[:, -1].max() < 0.1


def test_predict_uses_windows_for_images_larger_than_the_crop(model, monkeypatch):
    calls = []
    original = model.forward

    def counting(x):
        calls.append(tuple(x.shape))
        return original(x)

    monkeypatch.setattr(model, "forward", counting)
    image = np.zeros((90, 180, 3), np.uint8)  # long side -> base 64: a 32x64 image, crop 48 -> 1x2 windows
    pspnet.predict(image, model)
    assert sum(c[0] for c in calls) == 2 and all(c[2:] == (48, 48) for c in calls)
    calls.clear()
    pspnet.predict(image, model, base_size=150, crop=48, stride=32)  # 75x150 -> 2 x 5 windows
    assert sum(c[0] for c in calls) == 2 * 5
    calls.clear()
    pspnet.predict(image, model, flip=True)
    assert sum(c[0] for c in calls) == 4
    calls.clear()
    pspnet.predict(image, model, scales=(0.5, 1.0, 2.0))  # 16x32 (1 padded window), 32x64 (2), 64x128 (2x4)
    assert sum(c[0] for c in calls) == 1 + 2 + 2 * 4


def test_multiscale_prediction_is_the_mean_of_the_single_scales(model):
    image = np.random.default_rng(3).integers(0, 256, (57, 83, 3), dtype=np.uint8)
    singles = [pspnet.predict(image, model, base_size=64 * s)[0] for s in (0.75, 1.25)]
    multi, mask = pspnet.predict(image, model, scales=[0.75, 1.25])
    assert np.allclose(multi, np.mean(singles, axis=0), atol=1e-5)
    assert np.array_equal(mask == 1, multi >= 0.5) or np.mean((mask == 1) != (multi >= 0.5)) < 1e-3
    single, _ = pspnet.predict(image, model, scales=1.25)  # one number is one scale
    assert np.allclose(single, singles[1], atol=1e-5)
    for bad in ([], [0.0], [1.0, -1.0], [float("nan")], "1.0", ["x"], True):
        with pytest.raises(ValueError, match="scales"):
            pspnet.predict(image, model, scales=bad)
        with pytest.raises(ValueError, match="scales"):
            model.config.replace(scales=bad)
    stored = copy.deepcopy(model)  # scales stored with the model are its default
    stored.config = model.config.replace(scales=[0.75, 1.25])
    assert stored.config.scales == (0.75, 1.25)
    assert np.array_equal(pspnet.predict(image, stored)[0], multi)
    assert np.array_equal(pspnet.predict(image, stored, scales=1.0)[0], pspnet.predict(image, model)[0])


def test_predict_multiclass_returns_class_probabilities():
    torch.manual_seed(1)
    net = pspnet.create("resnet18", classes=4, **SMALL)
    image = np.random.default_rng(1).integers(0, 256, (41, 57, 3), dtype=np.uint8)
    prob, mask = pspnet.predict(image, net)
    assert prob.shape == (4, 41, 57) and np.allclose(prob.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(mask, prob.argmax(0))


def test_predict_argument_errors_and_default_weights(model, tmp_path, monkeypatch):
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="crop"):
        pspnet.predict(image, model, crop=4)
    with pytest.raises(ValueError, match="stride"):
        pspnet.predict(image, model, crop=16, stride=17)
    with pytest.raises(ValueError, match="image"):
        pspnet.predict(np.zeros((20, 20, 4), np.uint8), model)
    with pytest.raises(ValueError, match="model"):
        pspnet.predict(image, 3)
    import pspnet.inference as inference_module

    monkeypatch.setattr(inference_module, "_CACHE", {})
    monkeypatch.setattr(pspnet.weights, "bundled_path", lambda filename=None: tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match="default PSPNet weights"):
        pspnet.predict(image)
    path = pspnet.save(model, tmp_path / "w.safetensors")
    prob_path, _ = pspnet.predict(image, str(path))
    prob_model, _ = pspnet.predict(image, model)
    assert np.allclose(prob_path, prob_model, atol=1e-5)


def test_pspnet_segmenter_returns_foreground_probability(model):
    seg = PSPNetSegmenter(model, device="cpu")
    image = np.random.default_rng(2).integers(0, 256, (33, 44, 3), dtype=np.uint8)
    assert np.allclose(seg.predict(image), pspnet.predict(image, model)[0])
    assert np.array_equal(seg.predict_mask(image), pspnet.predict(image, model)[1] == 1)


def test_mask_is_cut_at_the_models_stored_threshold(model):
    image = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    prob, _ = pspnet.predict(image, model)
    cut = float(np.quantile(prob, 0.4))  # a threshold that splits this image's pixels 40 / 60
    stored = copy.deepcopy(model)
    stored.config = model.config.replace(threshold=cut)
    _, mask = pspnet.predict(image, stored)
    assert np.array_equal(mask == 1, prob >= cut) and 0.5 < mask.mean() < 0.7
    assert np.array_equal(PSPNetSegmenter(stored).predict_mask(image), prob >= cut)
    _, override = pspnet.predict(image, stored, threshold=0.99)  # an explicit threshold wins
    assert np.array_equal(override == 1, prob >= 0.99)
    for bad in (0.0, 1.0, 1.5, True, "0.4"):
        with pytest.raises(ValueError, match="threshold"):
            pspnet.predict(image, model, threshold=bad)
        with pytest.raises(ValueError, match="threshold"):
            model.config.replace(threshold=bad)
    with pytest.raises(ValueError, match="classes"):
        PSPNetSegmenter(pspnet.create("resnet18", classes=3, **SMALL))


def _blobs(sizes: list[int], shape=(60, 90)) -> np.ndarray:
    """A black uint8 mask-like image with square white regions of the given sides, left to right."""
    image = np.zeros(shape, np.uint8)
    x = 2
    for side in sizes:
        image[5:5 + side, x:x + side] = 255
        x += side + 3
    return image


def test_keep_main_regions_drops_regions_small_against_the_largest():
    mask = _blobs([20, 12, 5])  # areas 400, 144, 25
    kept = keep_main_regions(mask, 0.3)  # keeps areas >= 120
    assert kept.dtype == mask.dtype and kept.shape == mask.shape
    assert np.array_equal(kept, _blobs([20, 12, 0]))
    assert np.array_equal(keep_main_regions(mask, 1.0), _blobs([20, 0, 0]))
    assert keep_main_regions(mask, 0.0) is mask
    for untouched in (_blobs([20]), np.zeros((8, 9), np.uint8), np.ones((8, 9), bool)):
        assert np.array_equal(keep_main_regions(untouched, 0.5), untouched)
    diagonal = np.eye(6, dtype=np.uint8)  # 8-connected: one region, kept whole
    assert np.array_equal(keep_main_regions(diagonal, 1.0), diagonal)
    for bad in (-0.1, 1.5, True, "0.3", None):
        with pytest.raises(ValueError, match="min_component_fraction"):
            keep_main_regions(mask, bad)
    with pytest.raises(ValueError, match="HxW"):
        keep_main_regions(np.zeros((4, 4, 3), np.uint8), 0.3)


def test_predict_applies_the_models_stored_region_clean_up():
    net = pspnet.create("resnet18", classes=2, **{**SMALL, "base_size": 90, "crop_size": 64}).eval()
    net.forward = PixelwiseNet(2).forward  # foreground exactly where the image is bright
    image = np.repeat(_blobs([20, 12, 5])[:, :, None], 3, axis=2)
    prob, mask = pspnet.predict(image, net)
    assert np.array_equal(mask > 0, prob >= 0.5) and np.array_equal(mask > 0, image[:, :, 0] > 0)
    net.config = net.config.replace(min_component_fraction=0.3)
    prob_cleaned, cleaned = pspnet.predict(image, net)
    assert np.array_equal(prob_cleaned, prob)  # the probabilities are left as they are
    assert np.array_equal(cleaned > 0, _blobs([20, 12, 0]) > 0)
    _, override = pspnet.predict(image, net, min_component_fraction=0.0)  # an explicit value wins
    assert np.array_equal(override, mask)
    with pytest.raises(ValueError, match="min_component_fraction"):
        pspnet.predict(image, net, min_component_fraction=2)
    with pytest.raises(ValueError, match="min_component_fraction"):
        PSPNetConfig(min_component_fraction=-1)


# ---------------------------------------------------------------- segment + refine


@pytest.fixture(scope="module")
def refiner() -> cascadepsp.Refiner:
    torch.manual_seed(0)
    return cascadepsp.Refiner(device="cpu", weights=cascadepsp.create_model("resnet18"))


def _write_images(folder: Path, n: int, size=(40, 52)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    paths = []
    for i in range(n):
        image, _ = shape_pair(rng, *size)
        p = folder / f"img{i}.png"
        cv2.imwrite(str(p), image[:, :, ::-1])
        paths.append(p)
    return paths


class HalfSegmenter:
    """Foreground = the left half: a non-trivial coarse mask for the refiner, independent of any weights."""

    def predict(self, image, bgr=False):
        prob = np.zeros(image.shape[:2], np.float32)
        prob[:, : image.shape[1] // 2] = 0.9
        return prob

    def predict_mask(self, image):
        return self.predict(image) >= 0.5


def test_segment_and_refine_end_to_end_with_tiny_models(model, refiner, tmp_path):
    inputs = _write_images(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not an image")
    before = {p: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    report = segment_and_refine([tmp_path / "in"], tmp_path / "out", PSPNetSegmenter(model), refiner,
                                fast=True, L=80, log=None)
    assert [p.name for p, _ in report.failed] == ["broken.jpg"] and not report.ok
    assert set(report.written) == set(inputs)
    for p in inputs:
        coarse = cv2.imread(str(tmp_path / "out" / f"{p.stem}_coarse.png"), cv2.IMREAD_UNCHANGED)
        refined = cv2.imread(str(tmp_path / "out" / f"{p.stem}_refined.png"), cv2.IMREAD_UNCHANGED)
        sbs = cv2.imread(str(tmp_path / "out" / f"{p.stem}_side_by_side.png"), cv2.IMREAD_UNCHANGED)
        assert coarse.shape == refined.shape == (40, 52) and coarse.dtype == np.uint8
        assert set(np.unique(coarse)) <= {0, 255}
        # the coarse mask is the PSPNet's own answer for this photo (read here, RGB), neither empty nor full, and
        # the refined mask the refiner's global step at L = 80 on it (values: the test below, real weights)
        photo = cv2.imread(str(p))[:, :, ::-1]
        np.testing.assert_array_equal(coarse == 255, pspnet.predict(photo, model)[1] == 1)
        assert 0 < (coarse == 255).mean() < 1
        np.testing.assert_array_equal(refined, refiner.refine(photo, coarse == 255, fast=True, L=80))
        assert sbs.shape == (40, 3 * 52 + 2 * GAP, 3)
        assert (sbs[:, 52 + GAP:2 * 52 + GAP] != sbs[:, :52]).any()  # the coarse panel is tinted, not the photo
    assert {p: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before  # inputs untouched
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*"))


class FixedSegmenter:
    """A stand-in segmenter whose mask is given: the coarse input of the refiner is chosen by the test."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def predict_mask(self, image):
        assert image.shape[:2] == self.mask.shape
        return self.mask


class RecordingRefiner:
    """Wraps a refiner: records what ``refine`` was given and what it returned."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def refine(self, image, mask, **kwargs):
        out = self.inner.refine(image, mask, **kwargs)
        self.calls.append((image.copy(), np.array(mask), kwargs, out))
        return out


def blocky(mask: np.ndarray, factor: int) -> np.ndarray:
    """``mask`` seen at 1/factor of its size and scaled back: the staircase edges of a low-resolution segmenter."""
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.uint8), (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5


def test_segment_and_refine_full_refinement_sharpens_a_shipped_photo(tmp_path):
    """The pipeline's refined mask of a shipped DAVIS frame (parkour, at 320x180) is closer to its ground truth
    than the coarse mask it was given, the ground truth's own 1/8-resolution staircase: measured with the
    bundled refiner, IoU 0.785 -> 0.919 and boundary accuracy 0.579 -> 0.766."""
    from cascadepsp.evaluation.metrics import boundary_accuracy, mask_iou

    examples = REPO / "examples" / "davis"
    size = (320, 180)
    photo = cv2.resize(cv2.imread(str(examples / "parkour_00040_im.jpg")), size, interpolation=cv2.INTER_AREA)
    gt = cv2.resize(cv2.imread(str(examples / "parkour_00040_gt.png"), cv2.IMREAD_GRAYSCALE), size,
                    interpolation=cv2.INTER_AREA) >= 128
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "parkour.png"), photo)  # lossless: the pipeline reads these pixels
    coarse_mask = blocky(gt, 8)
    refiner = RecordingRefiner(cascadepsp.Refiner(device="cpu"))
    report = segment_and_refine([tmp_path / "in"], tmp_path / "out", FixedSegmenter(coarse_mask), refiner,
                                fast=False, L=320, log=None)
    assert report.ok
    coarse = cv2.imread(str(tmp_path / "out" / "parkour_coarse.png"), cv2.IMREAD_UNCHANGED)
    refined = cv2.imread(str(tmp_path / "out" / "parkour_refined.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(coarse == 255, coarse_mask)
    # one full (global + local) refinement of this photo (RGB) and this coarse mask, and its result written
    [(image, mask, kwargs, out)] = refiner.calls
    np.testing.assert_array_equal(image, photo[:, :, ::-1])
    np.testing.assert_array_equal(mask, coarse_mask)
    assert kwargs == {"fast": False, "L": 320}
    np.testing.assert_array_equal(refined, out)
    before = mask_iou(coarse_mask, gt), boundary_accuracy(coarse_mask, gt)
    after = mask_iou(refined >= 128, gt), boundary_accuracy(refined >= 128, gt)
    assert after[0] > before[0] + 0.05 and after[1] > before[1] + 0.05, (before, after)


def test_outputs_never_overwrite_inputs_and_duplicate_stems_get_suffixes(refiner, tmp_path):
    a = _write_images(tmp_path / "a", 1)[0]
    b = _write_images(tmp_path / "b", 1)[0]  # same stem "img0" in another folder
    victim = tmp_path / "a" / "img0_coarse.png"  # an input whose name is an output of img0
    cv2.imwrite(str(victim), np.full((10, 10, 3), 7, np.uint8))
    original = victim.read_bytes()
    report = segment_and_refine([a, victim, b], tmp_path / "a", HalfSegmenter(), refiner, fast=True, L=80,
                                log=None)
    assert victim.read_bytes() == original
    assert [p for p, _ in report.failed] == [a] and "overwrite an input" in report.failed[0][1]
    assert (tmp_path / "a" / "img0-2_refined.png").is_file()  # b's outputs, disambiguated
    assert output_stems([Path("x/i.png"), Path("y/i.jpg"), Path("z/i.png")]) == ["i", "i-2", "i-3"]
    # A later folder run in the same place skips our own outputs but keeps real inputs.
    assert {p.name for p in collect_images([tmp_path / "a"], tmp_path / "a")} == {"img0.png"}


def test_cli_with_weight_files(model, tmp_path, capsys):
    cli = load_script("segment_and_refine")
    psp_path = pspnet.save(model, tmp_path / "psp.safetensors")
    torch.manual_seed(0)
    rm_path = cascadepsp.save_model(cascadepsp.create_model("resnet18"), tmp_path / "rm.safetensors")
    inputs = _write_images(tmp_path / "in", 1)
    args = [str(inputs[0]), "--out", str(tmp_path / "out"), "--pspnet-weights", str(psp_path),
            "--refiner-weights", str(rm_path), "--fast", "--L", "80", "--device", "cpu"]
    assert cli.main(args) == 0
    assert (tmp_path / "out" / "img0_side_by_side.png").is_file()
    assert cli.main(args[:1] + [str(tmp_path / "missing.png")] + args[1:]) == 1
    assert "missing.png" in capsys.readouterr().err
    bad_weights = args[:4] + [str(tmp_path / "nope.safetensors")] + args[5:]
    assert cli.main(bad_weights) == 2
    assert cli.main([str(inputs[0]), "--out", str(tmp_path / "o2"), "--segmenter", "u2netp"]) == 2


def test_collect_images_takes_only_photos_of_the_original_layout(tmp_path):
    for name in ("a_im.jpg", "a_seg.png", "a_gt.png", "b_im.png", "b_seg.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in collect_images([tmp_path])] == ["a_im.jpg", "b_im.png"]


def test_evaluate_pspnet_script_scores_the_predictions(model, tmp_path, capsys):
    import json

    from cascadepsp.evaluation.metrics import SegMetrics

    rng = np.random.default_rng(7)
    data = tmp_path / "data"
    data.mkdir()
    images, gts = [], []
    for i in range(3):
        image, gt = shape_pair(rng, 44, 60)
        cv2.imwrite(str(data / f"s{i}_im.png"), image[:, :, ::-1])
        cv2.imwrite(str(data / f"s{i}_gt.png"), gt)
        cv2.imwrite(str(data / f"s{i}_seg.png"), np.roll(gt, 3, axis=1))
        images.append(image)
        gts.append(gt > 127)
    weights = pspnet.save(model, tmp_path / "psp.safetensors")
    script = load_script("evaluate_pspnet")
    out_json = tmp_path / "s.json"
    assert script.main([str(data), "--weights", str(weights), "--flip", "--scales", "0.75", "1",
                        "--threshold", "0.4", "--out-json", str(out_json)]) == 0
    assert "pspnet" in capsys.readouterr().out
    expected = SegMetrics()
    for image, gt in zip(images, gts, strict=True):
        prob, _ = pspnet.predict(image, model, flip=True, scales=(0.75, 1.0))
        expected.update(prob >= 0.4, gt)
    summary = json.loads(out_json.read_text())["summary"]
    assert summary["pspnet"]["iou"] == pytest.approx(expected.summary()["iou"], abs=1e-6)
    assert summary["pspnet"]["n_images"] == 3 and "coarse" in summary
    with pytest.raises(SystemExit):
        script.main([str(data), "--weights", str(weights), "--threshold", "1.5"])
