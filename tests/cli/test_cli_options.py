"""Options of ``cascadepsp refine`` and entry points that no other test reaches: each output is compared with
what the library computes for the same input, so a flag that is parsed but ignored fails its test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from folder_fixtures import read_csv

import cascadepsp
from cascadepsp import Refiner
from cascadepsp.cli import EXIT_INTERRUPTED, main
from cascadepsp.evaluation.metrics import boundary_accuracy, mask_iou
from cascadepsp.inference.labels import refine_label_map
from cascadepsp.inference.refiner import get_default_refiner
from cascadepsp.jobs import folder

L = "96"


def photo_and_mask(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB photo of a bright ellipse, its GT and a coarse mask that is too large on one side."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    gt = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1
    photo = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    photo[gt] += 150
    coarse = gt.copy()
    coarse[:, : w // 3] = coarse[:, w // 3 : w // 3 + 1]  # stretched to the left edge
    return photo, gt.astype(np.uint8) * 255, coarse.astype(np.uint8) * 255


def images_masks_gt(root: Path, n: int = 2) -> tuple[Path, Path, Path]:
    dirs = [root / d for d in ("images", "masks", "gt")]
    for d in dirs:
        d.mkdir(parents=True)
    for i in range(n):
        photo, gt, coarse = photo_and_mask(56 + 8 * i, 72, i)
        cv2.imwrite(str(dirs[0] / f"p{i}.png"), photo[:, :, ::-1])
        cv2.imwrite(str(dirs[1] / f"p{i}.png"), coarse)
        cv2.imwrite(str(dirs[2] / f"p{i}.png"), gt)
    return dirs[0], dirs[1], dirs[2]


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1]


def read_gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def run(args: list[str]) -> int:
    return main(["refine", *args, "--device", "cpu", "--L", L, "--no-progress"])


def test_module_refine_uses_the_cached_default_refiner():
    first = get_default_refiner("cpu")
    assert get_default_refiner("cpu") is first  # built once, then reused
    photo, _, coarse = photo_and_mask(48, 64, 0)
    out = cascadepsp.refine(photo, coarse, L=96, device="cpu")
    np.testing.assert_array_equal(out, Refiner(device="cpu").refine(photo, coarse, L=96))  # bundled weights
    assert not np.array_equal(out, cascadepsp.refine(photo, coarse, L=96, fast=True, device="cpu"))  # L, fast used
    hard = cascadepsp.refine(photo, coarse, L=96, threshold=0.5, device="cpu")
    prob = get_default_refiner("cpu").refine_probability(photo, coarse, L=96)  # soft output truncates p * 255
    np.testing.assert_array_equal(hard, np.where(prob >= 0.5, 255, 0))


def test_gt_report_holds_the_metrics_of_the_written_masks(tmp_path, saved_weights):
    images, masks, gt = images_masks_gt(tmp_path)
    out, report = tmp_path / "out", tmp_path / "r.csv"
    assert run([str(images), str(masks), "--out", str(out), "--weights", str(saved_weights), "--gt", str(gt),
                "--report", str(report)]) == 0
    rows = {r["name"]: r for r in read_csv(report)}
    assert len(rows) == 2
    for i in range(2):
        refined = read_gray(out / f"p{i}.png") > 128
        g, c = read_gray(gt / f"p{i}.png") > 127, read_gray(masks / f"p{i}.png") > 127
        row = rows[f"p{i}"]
        assert float(row["iou_refined"]) == pytest.approx(mask_iou(refined, g), abs=1e-6)
        assert float(row["iou_coarse"]) == pytest.approx(mask_iou(c, g), abs=1e-6)
        assert float(row["mba_refined"]) == pytest.approx(boundary_accuracy(refined, g), abs=1e-6)


@pytest.mark.parametrize("option", [["--engine", "reference"], ["--batch-size", "2"], ["--precision", "fp32"],
                                    ["--second-pass-iou", "0.9"]])
def test_engine_batch_size_precision_and_second_pass_reach_the_refiner(tmp_path, saved_weights, option, monkeypatch):
    import cascadepsp.inference.refiner

    made: list[dict] = []

    class Spy(Refiner):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cascadepsp.inference.refiner, "Refiner", Spy)
    images, masks, _ = images_masks_gt(tmp_path, n=1)
    assert run([str(images), str(masks), "--out", str(tmp_path / "o"), "--weights", str(saved_weights), *option]) == 0
    name = option[0].removeprefix("--").replace("-", "_")
    value = {"batch_size": int, "second_pass_iou": float}.get(name, str)(option[1])
    [kwargs] = made
    assert kwargs[name] == value  # the flag reached the refiner
    expected = Refiner(device="cpu", weights=str(saved_weights), **{name: value}).refine(
        read_rgb(images / "p0.png"), read_gray(masks / "p0.png"), L=int(L))
    np.testing.assert_array_equal(read_gray(tmp_path / "o" / "p0.png"), expected)


def test_bf16_precision_on_cpu_stays_close_to_fp32(tmp_path, saved_weights):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("bf16 on this CPU needs oneDNN")
    images, masks, _ = images_masks_gt(tmp_path, n=1)
    assert run([str(images), str(masks), "--out", str(tmp_path / "bf"), "--weights", str(saved_weights),
                "--precision", "bf16"]) == 0
    bf16 = read_gray(tmp_path / "bf" / "p0.png").astype(int)
    fp32 = Refiner(device="cpu", weights=str(saved_weights), precision="fp32").refine(
        read_rgb(images / "p0.png"), read_gray(masks / "p0.png"), L=int(L)).astype(int)
    assert np.abs(bf16 - fp32).mean() < 4 and mask_iou(bf16 > 128, fp32 > 128) > 0.98


def test_no_resume_redoes_finished_outputs(tmp_path, saved_weights, capsys):
    images, masks, _ = images_masks_gt(tmp_path)
    args = [str(images), str(masks), "--out", str(tmp_path / "o"), "--weights", str(saved_weights)]
    assert run(args) == 0
    first = (tmp_path / "o" / "p0.png").read_bytes()
    (tmp_path / "o" / "p0.png").write_bytes(b"")  # an output a user damaged by hand
    capsys.readouterr()
    assert run([*args, "--no-resume"]) == 0
    assert "done 2, skipped 0" in capsys.readouterr().out
    assert read_gray(tmp_path / "o" / "p0.png").shape == (56, 72)
    assert (tmp_path / "o" / "p0.png").read_bytes() == first  # redone: the same refinement as the first run
    assert run(args) == 0 and "done 0, skipped 2" in capsys.readouterr().out  # resume is the default


def test_labels_run_refines_each_id_and_keeps_the_ids(tmp_path, saved_weights):
    images = tmp_path / "images"
    masks = tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    photo, _, coarse = photo_and_mask(64, 96, 3)
    labels = np.zeros(coarse.shape, np.uint8)
    labels[coarse > 0] = 7
    labels[:12, :20] = 3
    cv2.imwrite(str(images / "a.png"), photo[:, :, ::-1])
    cv2.imwrite(str(masks / "a.png"), labels)
    assert run([str(images), str(masks), "--out", str(tmp_path / "o"), "--weights", str(saved_weights),
                "--labels"]) == 0
    written = read_gray(tmp_path / "o" / "a.png")
    expected = refine_label_map(Refiner(device="cpu", weights=str(saved_weights)), photo, labels, L=int(L))
    np.testing.assert_array_equal(written, expected)
    assert set(np.unique(written)) <= {0, 3, 7} and written.dtype == np.uint8


def test_min_confidence_decides_which_pixels_keep_an_id():
    class Constant:
        """Probability p inside the given mask's box, whatever the photo: confidences are known exactly."""

        def __init__(self, p: float) -> None:
            self.p = p

        def refine_probability(self, image, mask, fast=False, L=900):
            return np.where(mask, self.p, 0.0).astype(np.float32)

    image = np.zeros((20, 20, 3), np.uint8)
    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 5:15] = 4
    assert (refine_label_map(Constant(0.6), image, labels, min_confidence=0.5) == labels).all()
    assert (refine_label_map(Constant(0.6), image, labels, min_confidence=0.7) == 0).all()  # too unsure: background
    with pytest.raises(ValueError, match="min_confidence"):
        refine_label_map(Constant(0.6), image, labels, min_confidence=0.0)


def test_verbose_logs_informational_messages(tmp_path, saved_weights, capsys):
    images, masks, _ = images_masks_gt(tmp_path, n=1)
    out = tmp_path / "o"
    args = [str(images), str(masks), "--out", str(out), "--weights", str(saved_weights), "--no-resume"]
    dead_pid = 2**22 + 1  # above Linux's pid_max: no running writer owns these temporary files
    for verbose in (False, True):
        out.mkdir(exist_ok=True)
        stale = out / f"p0.png.tmp-{dead_pid}.png"
        stale.write_bytes(b"half")
        assert run([*args, "-v"] if verbose else args) == 0
        err = capsys.readouterr().err
        assert not stale.exists()  # cleaned either way; said only with -v
        assert ("INFO removed a temporary file" in err) == verbose, err


def test_interrupt_exits_130_and_says_how_far_it_got(tmp_path, saved_weights, capsys, monkeypatch):
    images, masks, _ = images_masks_gt(tmp_path, n=2)
    real = folder._refine  # the per-image refinement step
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(folder, "_refine", interrupt_second)
    rc = run([str(images), str(masks), "--out", str(tmp_path / "o"), "--weights", str(saved_weights)])
    err = capsys.readouterr().err
    assert rc == EXIT_INTERRUPTED == 130
    assert "interrupted after 1 images: done 1" in err
    assert (tmp_path / "o" / "p0.png").is_file() and not (tmp_path / "o" / "p1.png").exists()


def test_more_than_50_failures_are_summarised_after_the_first_50(tmp_path, saved_weights, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(53):
        (src / f"bad{i:02d}_im.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        cv2.imwrite(str(src / f"bad{i:02d}_seg.png"), np.zeros((8, 8), np.uint8))
    rc = run([str(src), "--out", str(tmp_path / "o"), "--weights", str(saved_weights), "--report",
              str(tmp_path / "r.csv")])
    text = capsys.readouterr().out
    assert rc == 1
    assert text.count("  failed: ") == 50 and f"... and 3 more (see {tmp_path / 'r.csv'})" in text


def test_openvino_refusals_name_the_problem(small_model, monkeypatch):
    with pytest.raises(ValueError, match="openvino' runs on the CPU"):
        Refiner(device="meta", weights=small_model, backend="openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'cascadepsp\[openvino\]'"):
        Refiner(device="cpu", weights=small_model, backend="openvino")


def test_backend_openvino_refines_a_folder_like_torch_and_caches_the_conversion(tmp_path, openvino_default_cache,
                                                                                 monkeypatch):
    from cascadepsp.deploy import openvino_runtime

    images, masks, _ = images_masks_gt(tmp_path, n=2)
    cache = tmp_path / "ov_cache"
    monkeypatch.setenv("CASCADEPSP_OPENVINO_CACHE", str(cache))
    monkeypatch.setenv("CASCADEPSP_HOME", str(tmp_path / "home"))  # the fallback location, empty: not the user's
    [converted] = openvino_default_cache.iterdir()  # the session's conversion of the bundled weights (conftest)
    builds = []

    def build_from_the_session_conversion(model, entry):
        """The CLI asks for a conversion into ``entry``; the converted files are the session's (a real
        conversion, checked in tests/deploy), copied instead of converting the same weights again."""
        builds.append(entry)
        shutil.copytree(converted, entry)
        return 1.0

    monkeypatch.setattr(openvino_runtime, "build_entry", build_from_the_session_conversion)
    args = [str(images), str(masks), "--weights", "default"]
    assert run([*args, "--out", str(tmp_path / "torch")]) == 0
    assert not builds  # the torch backend converts nothing
    # fp32 pinned: `auto` is bf16 on CPUs with bf16 (its soft values differ; tests/deploy/test_precision.py)
    assert run([*args, "--out", str(tmp_path / "ov"), "--backend", "openvino", "--precision", "fp32"]) == 0
    # one conversion of the bundled weights, into CASCADEPSP_OPENVINO_CACHE, and the CLI ran what it holds
    assert builds == [cache / converted.name] and (builds[0] / "manifest.json").is_file()
    for name in ("p0.png", "p1.png"):
        a = cv2.imread(str(tmp_path / "torch" / name), cv2.IMREAD_GRAYSCALE).astype(int)
        b = cv2.imread(str(tmp_path / "ov" / name), cv2.IMREAD_GRAYSCALE).astype(int)
        assert a.shape == b.shape and np.mean(np.abs(a - b) <= 1) > 0.99, name  # same refinement, other runtime
