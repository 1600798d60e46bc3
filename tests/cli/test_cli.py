"""The ``cascadepsp`` command and ``scripts/refine_folder.py`` with a small saved model."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cascadepsp import Refiner
from cascadepsp.cli import main
from cascadepsp.evaluation.metrics import mask_iou
from cascadepsp.weights import download

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(saved_weights) -> Path:
    return saved_weights


def make_folder(root: Path, n: int = 2, corrupt: bool = False) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 48 + 8 * i, 64
        photo = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[10:h - 10, 12:50] = 255
        photo[mask > 0] += 150
        cv2.imwrite(str(root / f"p{i}_im.jpg"), photo)
        cv2.imwrite(str(root / f"p{i}_seg.png"), mask)
    if corrupt:
        (root / "zz_im.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        cv2.imwrite(str(root / "zz_seg.png"), np.zeros((8, 8), np.uint8))


def test_refine_command_writes_outputs_overlay_report_and_summary(tmp_path, capsys):
    make_folder(tmp_path / "in", n=2, corrupt=True)
    out = tmp_path / "out"
    args = ["refine", str(tmp_path / "in"), "--out", str(out), "--weights", "default", "--device", "cpu",
            "--fast", "--L", "96", "--threshold", "--overlay", "--report", str(tmp_path / "r.csv"), "--limit", "2",
            "--no-progress"]
    rc = main(args)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "done 2, skipped 0, failed 0 of 2" in text
    refiner = Refiner(device="cpu")  # the bundled network: its masks follow the bright box of each photo
    for i in range(2):
        m = cv2.imread(str(out / f"p{i}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert m.shape == (48 + 8 * i, 64) and set(np.unique(m)) == {0, 255}
        photo = cv2.imread(str(tmp_path / "in" / f"p{i}_im.jpg"))[:, :, ::-1]
        coarse = cv2.imread(str(tmp_path / "in" / f"p{i}_seg.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(m, refiner.refine(photo, coarse, fast=True, L=96, threshold=0.5))
        assert mask_iou(m > 0, coarse > 0) > 0.9
        assert (out / f"p{i}_overlay.jpg").exists()
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["p0", "p1"] and {r["status"] for r in rows} == {"done"}

    args[args.index("--limit") + 1] = "10"  # now include the corrupt file; the rest is resumed
    rc = main(args)
    text = capsys.readouterr().out
    assert rc == 1
    assert "done 0, skipped 2, failed 1 of 3" in text and "failed: zz: cannot read image" in text


def test_refine_command_usage_errors_exit_2(tmp_path, weights, capsys):
    make_folder(tmp_path / "in")
    rc = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "in"), "--weights", str(weights)])
    assert rc == 2 and "is the input folder" in capsys.readouterr().err
    rc = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--weights", str(weights), "--labels",
               "--threshold"])
    assert rc == 2 and "threshold: not used with labels" in capsys.readouterr().err
    rc = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "no.pt")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    rc = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--ray", "--threads", "2"])
    assert rc == 2 and "--threads does not apply with --ray" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:  # Ray not installed: one line naming the extra
        mp.setitem(sys.modules, "ray", None)
        rc = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--ray"])
    assert rc == 2 and "pip install 'cascadepsp[ray]'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--threshold", "1.5"])
    assert e.value.code == 2
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_info_download_and_convert_commands(tmp_path, monkeypatch, capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "named weights" in text and "official" in text and "default" in text and "devices: cpu" in text

    calls = []
    monkeypatch.setattr(download, "download_official", lambda dest=None, force=False: calls.append((dest, force))
                        or Path(dest))
    assert main(["download-official", "--dest", str(tmp_path / "m"), "--force"]) == 0
    assert calls == [(str(tmp_path / "m"), True)]

    rc = main(["convert-official", str(tmp_path / "missing"), str(tmp_path / "x.safetensors")])
    assert rc == 2 and "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_script_wrapper_runs_the_refine_command(tmp_path, weights):
    make_folder(tmp_path / "in", n=1)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "refine_folder.py"), str(tmp_path / "in"),
                           "--out", str(tmp_path / "out"), "--weights", str(weights), "--device", "cpu", "--fast",
                           "--L", "96", "--no-progress"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "done 1, skipped 0, failed 0 of 1" in proc.stdout
    assert (tmp_path / "out" / "p0_mask.png").exists()
