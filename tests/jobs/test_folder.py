"""The folder tool end to end on generated folders: pairing, outputs, report, resume, failures, safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from folder_fixtures import SIZES, ImageRefiner, no_temp_files, original_layout, read_csv, scene, tree_hash
from PIL import Image

import cascadepsp
from cascadepsp.evaluation.metrics import mask_iou
from cascadepsp.io import atomic
from cascadepsp.io import images as imageio
from cascadepsp.jobs import folder
from cascadepsp.jobs.folder import refine_folder


def test_end_to_end_outputs_report_resume_and_corrupt_file(tmp_path):
    src, out = tmp_path / "data", tmp_path / "out"
    sizes = original_layout(src)
    (src / "broken_im.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated garbage")  # planted corrupt image
    cv2.imwrite(str(src / "broken_seg.png"), np.zeros((10, 10), np.uint8))
    before = tree_hash(src)
    ref = ImageRefiner()
    s = refine_folder([src], out, refiner=ref, report=tmp_path / "r.csv", overlay=True, progress=False)
    assert (s.count("done"), s.count("skipped"), s.count("failed")) == (5, 0, 1)
    assert ref.calls == 5
    assert s.failed[0].name == "broken" and "cannot read image" in s.failed[0].error
    for name, (w, h) in sizes.items():
        mask = cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        gt = cv2.imread(str(src / f"{name}_gt.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(mask > 128, gt > 128)  # aligned, soft values as the Refiner writes them
        assert set(np.unique(mask)) == {int(0.05 * 255), int(0.95 * 255)}
        ov = cv2.imread(str(out / f"{name}_overlay.jpg"))
        assert ov.shape[0] == h and ov.shape[1] == 3 * w + 2 * 6
    assert not (out / "broken_mask.png").exists() and no_temp_files(out)

    rows = {r["name"]: r for r in read_csv(tmp_path / "r.csv")}
    assert set(rows) == set(sizes) | {"broken"}
    for name, (w, h) in sizes.items():
        r = rows[name]
        assert r["status"] == "done" and (int(r["width"]), int(r["height"])) == (w, h) and float(r["seconds"]) >= 0
        coarse = cv2.imread(str(src / f"{name}_seg.png"), cv2.IMREAD_GRAYSCALE) >= 128
        refined = cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_GRAYSCALE) > 128
        assert float(r["changed_fraction"]) == pytest.approx((coarse != refined).mean(), abs=1e-6)
        assert float(r["iou_refined"]) == 1.0 and float(r["mba_refined"]) == 1.0
        assert 0.3 < float(r["iou_coarse"]) < 1.0 and float(r["mba_coarse"]) < 1.0
    assert rows["broken"]["status"] == "failed" and "cannot read image" in rows["broken"]["error"]
    assert s.metrics["refined"]["iou"] == 1.0 and s.metrics["coarse"]["iou"] < 1.0
    assert tree_hash(src) == before  # the input folder is untouched

    outputs = tree_hash(out)
    ref2 = ImageRefiner()
    s2 = refine_folder([src], out, refiner=ref2, report=tmp_path / "r2.json", overlay=True, progress=False)
    assert ref2.calls == 0 and (s2.count("done"), s2.count("skipped"), s2.count("failed")) == (0, 5, 1)
    assert tree_hash(out) == outputs
    doc = json.loads((tmp_path / "r2.json").read_text())
    assert doc["summary"]["skipped"] == 5 and doc["summary"]["failed"] == 1
    again = {r["name"]: r for r in doc["images"]}
    for name in sizes:  # the resumed report still describes every output on disk
        assert again[name]["changed_fraction"] == pytest.approx(float(rows[name]["changed_fraction"]), abs=1e-6)
        assert again[name]["iou_refined"] == 1.0
    assert tree_hash(src) == before


def test_image_and_mask_folders_matched_by_stem_keep_subfolders(tmp_path):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    expected = {}
    for i, rel in enumerate(["a", "city/b", "city/night/c", "d"]):
        h, w = SIZES[i]
        photo, gt, coarse = scene(h, w, i)
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(images / f"{rel}.jpg", quality=95)
        cv2.imwrite(str(masks / f"{rel}.png"), coarse)
        expected[rel] = (w, h)
    Image.fromarray(scene(40, 40, 9)[0]).save(images / "lonely.png")  # no mask
    cv2.imwrite(str(masks / "wrongsize.png"), np.zeros((10, 12), np.uint8))
    Image.fromarray(scene(40, 40, 9)[0]).save(images / "wrongsize.jpg")
    Image.fromarray(scene(40, 40, 9)[0]).save(images / "twin.jpg")  # two images, one output name
    Image.fromarray(scene(40, 40, 9)[0]).save(images / "twin.png")
    cv2.imwrite(str(masks / "twin.png"), np.zeros((40, 40), np.uint8))
    cv2.imwrite(str(masks / "orphan.png"), np.zeros((40, 40), np.uint8))
    before = tree_hash(tmp_path)
    s = refine_folder([images, masks], out, refiner=ImageRefiner(), threshold=0.5, progress=False)
    assert tree_hash(tmp_path) == before or all(not k.startswith(("images", "masks")) for k in
                                                set(tree_hash(tmp_path)) ^ set(before))
    assert {k: v for k, v in tree_hash(tmp_path).items() if k.startswith(("images", "masks"))} == before
    errors = {r.name: r.error for r in s.failed}
    assert errors["lonely"] == "missing mask"
    assert errors["wrongsize"] == "mask size 12x10 does not match image size 40x40"
    assert errors["twin"].startswith("several images share this name")
    assert s.count("done") == 4 and s.orphans == ["orphan"]
    for rel, (w, h) in expected.items():
        m = cv2.imread(str(out / f"{rel}.png"), cv2.IMREAD_UNCHANGED)
        assert m.shape == (h, w) and set(np.unique(m)) == {0, 255}  # --threshold: binary output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(
        f"{rel}.png" for rel in expected)


def test_ground_truth_folder_is_matched_by_stem(tmp_path):
    images, masks, gts = tmp_path / "im", tmp_path / "mk", tmp_path / "gt"
    for d in (images / "s", masks / "s", gts / "s"):
        d.mkdir(parents=True)
    for rel, seed in [("a", 0), ("s/b", 1)]:
        photo, gt, coarse = scene(48, 64, seed)
        cv2.imwrite(str(images / f"{rel}.png"), photo)
        cv2.imwrite(str(masks / f"{rel}.png"), coarse)
        cv2.imwrite(str(gts / f"{rel}.png"), gt)
    os.remove(gts / "s" / "b.png")  # a missing ground truth only leaves its metrics empty
    s = refine_folder([images, masks], tmp_path / "o", gt=gts, refiner=ImageRefiner(), report=tmp_path / "r.csv",
                      progress=False)
    rows = {r["name"]: r for r in read_csv(tmp_path / "r.csv")}
    assert s.count("done") == 2 and rows["a"]["iou_refined"] == "1.0" and rows["s/b"]["iou_refined"] == ""
    assert 0 < float(rows["a"]["iou_coarse"]) < 1
    with pytest.raises(ValueError, match="out: .* inside the input folder"):
        refine_folder([images, masks], gts / "o", gt=gts, refiner=ImageRefiner(), progress=False)


def test_mask_folder_nested_inside_image_folder_is_not_read_as_images(tmp_path):
    images = tmp_path / "photos"
    masks = images / "masks"
    masks.mkdir(parents=True)
    photo, _, coarse = scene(48, 64, 0)
    cv2.imwrite(str(images / "x.png"), photo)
    cv2.imwrite(str(masks / "x.png"), coarse)
    s = refine_folder([images, masks], tmp_path / "out", refiner=ImageRefiner(), progress=False)
    assert [r.name for r in s.rows] == ["x"] and s.count("done") == 1


def test_limit_processes_the_first_n_by_name(tmp_path):
    src = tmp_path / "d"
    original_layout(src)
    s = refine_folder([src], tmp_path / "o", refiner=ImageRefiner(), limit=2, progress=False)
    assert [r.name for r in s.rows] == ["img00", "img01"]


# ------------------------------------------------------------------------------------------------ safety

def test_refuses_output_equal_to_or_inside_an_input_folder(tmp_path):
    src = tmp_path / "d"
    original_layout(src, 2)
    ref = ImageRefiner()
    with pytest.raises(ValueError, match="is the input folder"):
        refine_folder([src], src, refiner=ref, progress=False)
    with pytest.raises(ValueError, match="lies inside the input folder"):
        refine_folder([src], src / "refined", refiner=ref, progress=False)
    with pytest.raises(ValueError, match="report: .* inside the input folder"):
        refine_folder([src], tmp_path / "o", refiner=ref, report=src / "r.csv", progress=False)
    with pytest.raises(ValueError, match="report: expected a path ending in .csv or .json"):
        refine_folder([src], tmp_path / "o", refiner=ref, report=tmp_path / "r.txt", progress=False)
    with pytest.raises(ValueError, match="use the original layout"):
        refine_folder([src, src], tmp_path / "o", refiner=ref, progress=False)
    with pytest.raises(ValueError, match="threshold: not used with labels"):
        refine_folder([src], tmp_path / "o", refiner=ref, labels=True, threshold=0.5, progress=False)
    masks = tmp_path / "m"
    masks.mkdir()
    with pytest.raises(ValueError, match="inside the input folder"):
        refine_folder([src, masks], masks / "out", refiner=ref, progress=False)
    assert ref.calls == 0 and not (tmp_path / "o").exists()


def test_per_file_guard_refuses_writes_into_an_input_folder(tmp_path):
    guard = folder._Guard([tmp_path / "in"])
    with pytest.raises(RuntimeError, match="inside the input folder"):
        guard.write(tmp_path / "in" / "x.png", b"data")
    guard.write(tmp_path / "elsewhere" / "x.png", b"data")
    assert (tmp_path / "elsewhere" / "x.png").read_bytes() == b"data"


def test_interrupted_run_leaves_only_complete_outputs_and_next_run_finishes(tmp_path):
    src, out = tmp_path / "d", tmp_path / "o"
    sizes = original_layout(src)
    before = tree_hash(src)
    with pytest.raises(KeyboardInterrupt):
        refine_folder([src], out, refiner=ImageRefiner(fail_on=3), report=tmp_path / "r.csv", overlay=True,
                      progress=False)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_mask.png"))
    assert written == ["img00_mask.png", "img01_mask.png"]
    assert all(imageio.is_valid_image(out / p) for p in written) and no_temp_files(out)
    assert [r["status"] for r in read_csv(tmp_path / "r.csv")] == ["done", "done"]  # partial report written
    ref = ImageRefiner()
    s = refine_folder([src], out, refiner=ref, overlay=True, progress=False)
    assert (s.count("skipped"), s.count("done"), ref.calls) == (2, 3, 3)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_mask.png")) == sorted(
        f"{n}_mask.png" for n in sizes)
    assert tree_hash(src) == before


def test_killed_mid_write_leaves_no_partial_output_and_rerun_cleans_up(tmp_path):
    """A real SIGKILL while the 3rd output is being written (after its bytes hit the temporary file)."""
    src, out = tmp_path / "d", tmp_path / "o"
    original_layout(src)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        import folder_fixtures
        from cascadepsp.jobs import folder
        from cascadepsp.io import atomic
        writes = []
        real_fsync = os.fsync
        def fsync(fd):
            writes.append(fd)
            if len(writes) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)
        atomic.os.fsync = fsync
        folder.refine_folder([{str(src)!r}], {str(out)!r}, refiner=folder_fixtures.ImageRefiner(), progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    finals = sorted(p.name for p in out.rglob("*_mask.png") if not atomic.is_temp_file(p))
    temps = [p for p in out.rglob("*") if atomic.is_temp_file(p)]
    assert finals == ["img00_mask.png", "img01_mask.png"] and len(temps) == 1
    assert all(imageio.is_valid_image(out / f) for f in finals)
    ref = ImageRefiner()
    s = refine_folder([src], out, refiner=ref, progress=False)
    assert (s.count("skipped"), s.count("done"), s.count("failed")) == (2, 3, 0) and no_temp_files(out)


def test_invalid_existing_output_is_redone_and_no_resume_redoes_everything(tmp_path):
    src, out = tmp_path / "d", tmp_path / "o"
    original_layout(src, 3)
    refine_folder([src], out, refiner=ImageRefiner(), progress=False)
    (out / "img01_mask.png").write_bytes((out / "img01_mask.png").read_bytes()[:40])  # truncated PNG
    cv2.imwrite(str(out / "img00_mask.png"), np.zeros((5, 5), np.uint8))  # wrong size
    ref = ImageRefiner()
    s = refine_folder([src], out, refiner=ref, progress=False)
    assert [r.status for r in s.rows] == ["done", "done", "skipped"] and ref.calls == 2
    s = refine_folder([src], out, refiner=ref, resume=False, progress=False)
    assert s.count("done") == 3


# ------------------------------------------------------------------------------------------------ inputs

def _save_with_orientation(path: Path, rgb: np.ndarray, orientation: int) -> None:
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif)


@pytest.mark.parametrize("mask_frame", ["upright", "stored"])
def test_exif_rotated_photo_with_mask_in_either_frame(tmp_path, mask_frame):
    photo, gt, coarse = scene(48, 80, 3)  # the upright picture (48 high, 80 wide)
    stored = imageio.unorient(photo, 6)  # what the camera wrote: 80 high, 48 wide, orientation 6
    src = tmp_path / "d"
    src.mkdir()
    _save_with_orientation(src / "cam_im.png", stored, 6)
    mask = gt if mask_frame == "upright" else imageio.unorient(gt, 6)
    cv2.imwrite(str(src / "cam_seg.png"), mask)
    s = refine_folder([src], tmp_path / "o", refiner=ImageRefiner(), progress=False)
    assert s.count("done") == 1 and (s.rows[0].width, s.rows[0].height) == (80, 48)
    result = cv2.imread(str(tmp_path / "o" / "cam_mask.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(result > 128, mask > 128)  # same frame as the coarse mask, aligned
    assert ("un-rotated" in s.rows[0].note) == (mask_frame == "stored")


def test_gray_16bit_rgba_photos_and_palette_jpeg_masks_in_one_run(tmp_path):
    images, masks = tmp_path / "im", tmp_path / "mk"
    images.mkdir()
    masks.mkdir()
    photo, gt, _ = scene(48, 64, 5)
    cv2.imwrite(str(images / "gray.png"), photo[:, :, 0])
    cv2.imwrite(str(images / "deep.png"), photo.astype(np.uint16) * 257)
    Image.fromarray(np.dstack([photo, np.full((48, 64), 128, np.uint8)]), "RGBA").save(images / "alpha.png")
    Image.fromarray(photo).save(images / "pal.png")
    Image.fromarray(photo).save(images / "jpg.png")
    cv2.imwrite(str(masks / "gray.png"), gt)
    cv2.imwrite(str(masks / "deep.png"), gt.astype(np.uint16) * 257)
    cv2.imwrite(str(masks / "alpha.png"), gt)
    pal = Image.fromarray((gt > 0).astype(np.uint8), "P")
    pal.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # object drawn black on white: indices count
    pal.save(masks / "pal.png")
    cv2.imwrite(str(masks / "jpg.jpg"), gt, [cv2.IMWRITE_JPEG_QUALITY, 50])
    s = refine_folder([images, masks], tmp_path / "o", refiner=ImageRefiner(), gt=None, report=tmp_path / "r.csv",
                      progress=False)
    assert s.count("done") == 5, [r.error for r in s.rows]
    for name in ["gray", "deep", "alpha", "pal", "jpg"]:
        out = cv2.imread(str(tmp_path / "o" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(out > 128, gt > 0)
        row = next(r for r in s.rows if r.name == name)
        assert row.changed_fraction < 0.02  # the coarse mask was read as the object, not its complement


def test_label_maps_are_refined_per_id_and_written_back_like_the_input(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    h, w = 60, 80
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    ids = np.zeros((h, w), np.uint8)
    ids[5:25, 5:35] = 1
    ids[30:55, 40:75] = 4
    photo[ids > 0] = 230
    coarse = cv2.dilate(ids, np.ones((3, 3), np.uint8))
    cv2.imwrite(str(src / "scene_im.png"), photo)
    im = Image.fromarray(coarse, "P")
    im.putpalette([0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 90, 200] + [0] * 753)
    im.save(src / "scene_seg.png")
    gt_im = Image.fromarray(ids, "P")
    gt_im.putpalette(list(range(256)) * 3)
    gt_im.save(src / "scene_gt.png")
    s = refine_folder([src], tmp_path / "o", refiner=ImageRefiner(), labels=True, overlay=True,
                      report=tmp_path / "r.csv", progress=False)
    assert s.count("done") == 1, s.rows[0].error
    out = Image.open(tmp_path / "o" / "scene_mask.png")
    assert out.mode == "P" and out.getpalette()[:15] == im.getpalette()[:15]
    np.testing.assert_array_equal(np.asarray(out), ids)
    row = read_csv(tmp_path / "r.csv")[0]
    assert float(row["iou_refined"]) == 1.0 and float(row["iou_coarse"]) < 1.0
    assert float(row["changed_fraction"]) == pytest.approx((coarse != ids).mean(), abs=1e-6)
    assert (tmp_path / "o" / "scene_overlay.jpg").exists()
    ref = ImageRefiner()
    s = refine_folder([src], tmp_path / "o", refiner=ref, labels=True, overlay=True, report=tmp_path / "r2.csv",
                      progress=False)
    assert s.count("skipped") == 1 and ref.calls == 0
    assert read_csv(tmp_path / "r2.csv")[0]["iou_refined"] == "1.0"


def test_binary_mode_warns_when_a_label_map_has_no_foreground(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    photo, gt, _ = scene(40, 40, 1)
    cv2.imwrite(str(src / "a_im.png"), photo)
    cv2.imwrite(str(src / "a_seg.png"), (gt > 0).astype(np.uint8) * 3)  # ids 0/3 in an 8-bit gray PNG
    s = refine_folder([src], tmp_path / "o", refiner=ImageRefiner(), progress=False)
    assert "use --labels" in s.rows[0].note


def test_with_the_real_refiner_outputs_have_the_mask_size_and_come_closer_to_the_truth(tmp_path):
    """The bundled refiner, not a stand-in: each written mask is its refinement of that photo (RGB) and that
    coarse mask, and is closer to the ground truth than the too-fat coarse mask (global step only at L=96, for
    speed: measured IoU 0.784 -> 0.831 and 0.805 -> 0.859 with JM1 (not re-measured for JN1, the
    default since, which passes), 0.836 / 0.904 with JK before it;
    the full pipeline at L=900 reaches 0.928 / 0.967)."""
    refiner = cascadepsp.Refiner(device="cpu")
    src = tmp_path / "d"
    sizes = original_layout(src, 2)
    s = refine_folder([src], tmp_path / "o", refiner=refiner, fast=True, L=96, progress=False)
    assert s.count("done") == 2
    for name, (w, h) in sizes.items():
        mask = cv2.imread(str(tmp_path / "o" / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w)
        photo = cv2.imread(str(src / f"{name}_im.png"))[:, :, ::-1]
        coarse = cv2.imread(str(src / f"{name}_seg.png"), cv2.IMREAD_GRAYSCALE) >= 128
        gt = cv2.imread(str(src / f"{name}_gt.png"), cv2.IMREAD_GRAYSCALE) >= 128
        np.testing.assert_array_equal(mask, refiner.refine(photo, coarse, fast=True, L=96))
        assert mask_iou(mask >= 128, gt) > mask_iou(coarse, gt) + 0.03, name
    assert s.metrics["refined"]["iou"] > s.metrics["coarse"]["iou"] + 0.03


def test_stale_temp_from_a_dead_run_is_removed_at_start(tmp_path):
    src, out = tmp_path / "d", tmp_path / "o"
    original_layout(src, 1)
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f"img00_mask.png.tmp-{int(dead.stdout)}.png"
    stale.write_bytes(b"\x89PNG half")
    refine_folder([src], out, refiner=ImageRefiner(), progress=False)
    assert not stale.exists() and (out / "img00_mask.png").exists()
    assert os.listdir(out) == ["img00_mask.png"]
