"""The inputs a new user trips on: each gives one clear line (API warning/error or CLI message + exit code)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cascadepsp.cli import main
from cascadepsp.inference.refiner import WINDOW_BYTES_PER_PIXEL, _memory_bytes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(saved_weights) -> Path:
    return saved_weights


def _label_map_folder(root: Path) -> Path:
    """One photo whose mask is an 8-bit label map with ids 1-5 (no value reaches the 128 foreground level)."""
    root.mkdir(parents=True)
    photo = np.full((40, 48, 3), 30, np.uint8)
    ids = np.zeros((40, 48), np.uint8)
    for i in range(1, 6):
        ids[5 * i: 5 * i + 4, 8:40] = i
    cv2.imwrite(str(root / "a_im.png"), photo)
    cv2.imwrite(str(root / "a_seg.png"), ids)
    return root


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_api_warns_once_when_a_mask_has_values_but_no_foreground(small_refiner):
    image = np.zeros((32, 32, 3), np.uint8)
    ids = np.zeros((32, 32), np.uint8)
    ids[8:24, 8:24] = 3
    with pytest.warns(UserWarning, match=r"values up to 3 but no foreground.*label map") as got:
        out = small_refiner.refine(image, ids, L=96)
    assert not out.any() and len(got) == 1 and "\n" not in str(got[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_refiner.refine(image, np.zeros((32, 32), np.uint8), L=96)  # a truly empty mask stays silent


def test_cli_prints_the_labels_hint_for_such_masks(tmp_path, weights, capsys):
    src = _label_map_folder(tmp_path / "in")
    rc = main(["refine", str(src), "--out", str(tmp_path / "o"), "--weights", str(weights), "--device", "cpu",
               "--L", "96", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "1 mask(s) have values but no foreground" in text and "rerun with --labels" in text


def test_huge_L_is_refused_up_front_with_one_line(small_refiner, tmp_path, weights, capsys):
    # an L whose windows need more than this machine's memory, whatever the machine
    memory = _memory_bytes(torch.device("cpu"))
    assert memory, "the CPU's memory size should be readable here"
    huge = int((memory / WINDOW_BYTES_PER_PIXEL) ** 0.5) + 64
    image = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 10:40] = True
    with pytest.raises(ValueError, match=rf"L: {huge} needs at least \d+ GiB for a 50x40 image") as e:
        small_refiner.refine(image, mask, L=huge)
    assert "\n" not in str(e.value) and "smaller L" in str(e.value)
    small_refiner.refine(image, mask, L=96)  # an L that fits is accepted
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a_im.png"), image)
    cv2.imwrite(str(src / "a_seg.png"), mask.astype(np.uint8) * 255)
    rc = main(["refine", str(src), "--out", str(tmp_path / "o"), "--weights", str(weights), "--device", "cpu",
               "--L", str(huge), "--no-progress"])
    assert rc == 2 and f"L: {huge} needs at least" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("name,data", [("bad.safetensors", b"garbage" * 20), ("bad.pth", b"garbage" * 20),
                                       ("cut.safetensors", None)])
def test_corrupt_weights_file_is_named_in_one_line_and_exits_2(tmp_path, weights, capsys, name, data):
    path = tmp_path / name
    path.write_bytes(data if data is not None else weights.read_bytes()[:5000])  # garbage, or truncated
    src = _label_map_folder(tmp_path / "in")
    rc = main(["refine", str(src), "--out", str(tmp_path / "o"), "--weights", str(path), "--device", "cpu"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(path) in line and "not a readable" in line


def test_empty_input_folder_says_no_inputs_were_found_and_exits_2(tmp_path, weights, capsys):
    (tmp_path / "in").mkdir()
    rc = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--weights", str(weights)])
    assert rc == 2 and "no images found" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_old_mode_option_names_the_new_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["refine", str(tmp_path), "--out", str(tmp_path / "o"), "--mode", "fast"])
    assert e.value.code == 2 and "--mode was renamed --engine" in _one_line(capsys.readouterr().err)


def test_refine_help_lists_exit_codes_and_output_names(capsys):
    with pytest.raises(SystemExit):
        main(["refine", "--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "130" in text and "<name>_mask.png" in text and "<name>_overlay.jpg" in text
    assert "--engine" in text


@pytest.mark.parametrize("args", [["--help"], ["refine", "--help"], ["refine"]])
def test_help_and_argument_errors_do_not_import_torch(args):
    code = ("import sys\nfrom cascadepsp.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_photo_too_large_for_the_memory_left_is_refused_up_front(small_refiner, monkeypatch):
    import cascadepsp.inference.refiner as refiner_module

    image = np.zeros((400, 600, 3), np.uint8)
    mask = np.zeros((400, 600), bool)
    mask[100:300, 100:500] = True
    need = 400 * 600 * refiner_module.FULL_SIZE_BYTES_PER_PIXEL
    monkeypatch.setattr(refiner_module, "_available_bytes", lambda device: need - 1)
    with pytest.raises(ValueError, match=r"^image: a 600x400 photo needs about .* GiB to refine") as e:
        small_refiner.refine(image, mask, L=96)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(refiner_module, "_available_bytes", lambda device: need)
    assert small_refiner.refine(image, mask, L=96).shape == (400, 600)  # just enough: refined
    assert refiner_module._available_bytes(torch.device("cpu")) > 0  # this machine's figure is readable
