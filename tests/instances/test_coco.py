"""COCO segmentation codecs and ``cascadepsp refine-coco`` on a COCO file built from the shipped photos."""

from __future__ import annotations

import copy
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools", reason="COCO files need pycocotools (pip install 'cascadepsp[coco]')")

from pycocotools.coco import COCO  # noqa: E402

import cascadepsp  # noqa: E402
from cascadepsp.cli import main  # noqa: E402
from cascadepsp.evaluation.metrics import boundary_accuracy, mask_iou  # noqa: E402
from cascadepsp.instances.coco import (  # noqa: E402
    area_bbox,
    decode_segmentation,
    encode_rle,
    encode_segmentation,
    encode_uncompressed_rle,
    mask_api,
    mask_to_polygons,
    refine_coco_annotations,
)
from cascadepsp.instances.refine import refine_instances  # noqa: E402
from cascadepsp.io.images import read_image, read_mask  # noqa: E402
from cascadepsp.jobs.coco_file import CocoOptions, partial_path, refine_coco_file  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "davis"
PHOTOS = ["parkour_00040", "scooter-black_00020"]
FAST = ["--fast", "--L", "128"]  # global step only at a small side: the random test network, a second per photo
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def blob(h=40, w=60):
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    m[((yy - 20) / 12) ** 2 + ((xx - 25) / 18) ** 2 <= 1] = True
    m[5:9, 50:58] = True  # a second component
    return m


def test_the_three_segmentation_forms_decode_to_the_same_mask():
    m = blob()
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [40, 60]
    np.testing.assert_array_equal(decode_segmentation(rle, 40, 60), m)
    np.testing.assert_array_equal(decode_segmentation({**rle, "counts": rle["counts"].encode()}, 40, 60), m)
    np.testing.assert_array_equal(decode_segmentation(encode_uncompressed_rle(m), 40, 60), m)
    full = np.ones((4, 5), bool)
    assert encode_uncompressed_rle(full)["counts"] == [0, 20]
    polys = mask_to_polygons(m)
    assert len(polys) == 2 and all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
    np.testing.assert_array_equal(decode_segmentation(polys, 40, 60), m)  # outlines along the pixels' edges
    square = np.zeros((8, 8), bool)
    square[2:5, 2:5] = True
    square[6, 7] = True
    assert sorted(mask_to_polygons(square)) == [[2, 2, 2, 5, 5, 5, 5, 2], [7, 6, 7, 7, 8, 7, 8, 6]]
    holed = square.copy()
    holed[3, 3] = False
    np.testing.assert_array_equal(decode_segmentation(mask_to_polygons(holed), 8, 8), square)  # holes filled
    assert mask_to_polygons(np.zeros((8, 8), bool)) == []
    seg, area, bbox = encode_segmentation(np.zeros((8, 8), bool), polygons=True)  # COCO cannot load []
    assert isinstance(seg, dict) and area == 0 and bbox == [0, 0, 0, 0]
    seg, area, bbox = encode_segmentation(square, polygons=True)
    assert isinstance(seg, list) and area == 10 and bbox == [2, 2, 6, 5]
    area, bbox = area_bbox(rle, 40, 60)
    ys, xs = np.nonzero(m)
    assert area == m.sum() and bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.mark.parametrize("seg, message", [
    ({"size": [40, 60], "counts": "P13700"}, "cover"),
    ({"size": [40, 60], "counts": ""}, "cover"),
    ({"size": [40, 60], "counts": "a\x01"}, "invalid character"),
    ({"size": [41, 60], "counts": [2460]}, "does not match image size 60x40"),
    ({"size": [40, 60], "counts": [2000, -5, 405]}, "negative"),
    ({"counts": [2400]}, "size"),
    ([[1, 2, 3, 4]], "polygon 0"),
    ([], "empty polygon"),
    ([[1, 2, 3, "x", 5, 6]], "polygon 0"),
    (7, "expected polygons"),
])
def test_malformed_segmentations_are_refused(seg, message):
    with pytest.raises(ValueError, match=f"segmentation: .*{message}"):
        decode_segmentation(seg, 40, 60)


def test_missing_pycocotools_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(ImportError, match=r"cascadepsp\[coco\]"):
        mask_api()


# ------------------------------------------------------------------------------------------ a COCO file

def build_dataset(root: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Two shipped photos; per photo a polygon instance (the coarse mask), an RLE instance (a box of the
    ground truth), an iscrowd annotation; extra keys everywhere; plus one annotation with a broken RLE."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    doc = {"info": {"description": "test", "version": "1"}, "licenses": [{"id": 3, "name": "x"}],
           "images": [], "annotations": [], "categories": [{"id": 1, "name": "person", "supercategory": "p"},
                                                           {"id": 2, "name": "thing"}]}
    gts = {}
    next_id = 100
    for k, name in enumerate(PHOTOS):
        shutil.copy(EXAMPLES / f"{name}_im.jpg", images_dir / f"{name}.jpg")
        seg = read_mask(EXAMPLES / f"{name}_seg.png").binary()
        gt = read_mask(EXAMPLES / f"{name}_gt.png").binary()
        h, w = seg.shape
        image_id = 40 + k
        doc["images"].append({"id": image_id, "file_name": f"{name}.jpg", "width": w, "height": h,
                              "license": 3, "coco_url": "none"})
        box = np.zeros_like(gt)
        ys, xs = np.nonzero(gt)
        box[ys.min():ys.min() + 60, xs.min():xs.max()] = gt[ys.min():ys.min() + 60, xs.min():xs.max()]
        for seg_json, cat in ((mask_to_polygons(seg), 1), (encode_rle(box), 2)):
            doc["annotations"].append({"id": next_id, "image_id": image_id, "category_id": cat,
                                       "segmentation": seg_json, "area": 123.5, "bbox": [1.0, 2.0, 3.0, 4.0],
                                       "iscrowd": 0, "note": f"keep {next_id}", "attributes": {"occluded": k}})
            gts[f"{next_id}"] = gt if cat == 1 else box
            next_id += 1
        doc["annotations"].append({"id": next_id, "image_id": image_id, "category_id": 1, "iscrowd": 1,
                                   "segmentation": encode_uncompressed_rle(gt), "area": 9.0, "bbox": [0, 0, 1, 1]})
        next_id += 1
    doc["annotations"].insert(2, {"id": 999, "image_id": 40, "category_id": 1, "iscrowd": 0, "score": 0.5,
                                  "segmentation": {"size": [480, 854], "counts": "garbage"}, "area": 1, "bbox": []})
    (root / "ann.json").write_text(json.dumps(doc))
    return doc, gts


def expected_masks(root: Path, doc: dict, weights: Path) -> dict[int, np.ndarray]:
    """refine_instances on the same inputs, one photo at a time: annotation id -> refined 0/255 mask."""
    refiner = cascadepsp.Refiner(device="cpu", weights=weights)
    want = {}
    for im in doc["images"]:
        rgb, _ = read_image(root / "images" / im["file_name"])
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"] and a["id"] != 999]
        masks = [decode_segmentation(a["segmentation"], im["height"], im["width"]) for a in anns]
        for a, m in zip(anns, refine_instances(rgb, masks, refiner, fast=True, L=128, threshold=0.5), strict=True):
            want[a["id"]] = m > 0
    return want


def test_refine_coco_keeps_everything_but_the_refined_fields(tmp_path, saved_weights, capsys):
    doc, _ = build_dataset(tmp_path)
    src_bytes = (tmp_path / "ann.json").read_bytes()
    out = tmp_path / "out" / "refined.json"
    rc = main(["refine-coco", str(tmp_path / "images"), str(tmp_path / "ann.json"), "--out", str(out),
               "--weights", str(saved_weights), "--device", "cpu", *FAST, "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1, captured  # the broken annotation fails; everything else is written
    assert "failed: annotation #2 (id 999" in captured.err and "segmentation" in captured.err
    assert "refined 4, crowd (untouched) 2, failed 1 of 7" in captured.out
    assert (tmp_path / "ann.json").read_bytes() == src_bytes
    assert not partial_path(out).exists()

    coco = COCO(str(out))
    result = json.loads(out.read_text())
    assert {k: v for k, v in result.items() if k != "annotations"} == {k: v for k, v in doc.items()
                                                                       if k != "annotations"}
    assert [a["id"] for a in result["annotations"]] == [a["id"] for a in doc["annotations"]]
    want = expected_masks(tmp_path, doc, saved_weights)
    changed = 0
    for before, after in zip(doc["annotations"], result["annotations"], strict=True):
        assert list(after) == list(before)  # same keys in the same order
        if before["iscrowd"] or before["id"] == 999:
            assert after == before
            continue
        assert {k: v for k, v in after.items() if k not in ("segmentation", "area", "bbox")} == \
               {k: v for k, v in before.items() if k not in ("segmentation", "area", "bbox")}
        assert isinstance(after["segmentation"]["counts"], str)
        im = coco.imgs[after["image_id"]]
        mask = coco.annToMask(coco.anns[after["id"]])
        assert mask.shape == (im["height"], im["width"])
        np.testing.assert_array_equal(mask > 0, want[after["id"]])
        assert after["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert after["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        changed += not np.array_equal(mask > 0, decode_segmentation(before["segmentation"], *mask.shape))
    assert changed == 4  # the (random) network did change every refined mask


def test_polygons_report_and_ground_truth(tmp_path, saved_weights, capsys):
    doc, gts = build_dataset(tmp_path)
    gt_doc = copy.deepcopy(doc)
    for a in gt_doc["annotations"]:
        if str(a["id"]) in gts:
            a["segmentation"] = encode_rle(gts[str(a["id"])])
    (tmp_path / "gt.json").write_text(json.dumps(gt_doc))
    out, report = tmp_path / "poly.json", tmp_path / "r.csv"
    rc = main(["refine-coco", str(tmp_path / "images"), str(tmp_path / "ann.json"), "--out", str(out),
               "--weights", str(saved_weights), "--device", "cpu", *FAST, "--no-progress", "--polygons",
               "--gt", str(tmp_path / "gt.json"), "--report", str(report)])
    text = capsys.readouterr().out
    assert rc == 1 and "IoU" in text and "over 4 instances with ground truth" in text
    coco = COCO(str(out))
    want = expected_masks(tmp_path, doc, saved_weights)
    for a in coco.dataset["annotations"]:
        if a["id"] in want:
            assert isinstance(a["segmentation"], list)
            filled = decode_segmentation(mask_to_polygons(want[a["id"]]), *want[a["id"]].shape)
            np.testing.assert_array_equal(coco.annToMask(a) > 0, filled)  # the refined mask, holes filled
            assert filled[want[a["id"]]].all()  # every refined pixel is inside an outline
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == [a["id"] for a in doc["annotations"]]
    by_id = {int(r["id"]): r for r in rows}
    assert by_id[999]["status"] == "failed" and "segmentation" in by_id[999]["error"]
    assert {by_id[a["id"]]["status"] for a in doc["annotations"] if a["iscrowd"]} == {"crowd"}
    for a in doc["annotations"]:
        if a["id"] not in want:
            continue
        row = by_id[a["id"]]
        gt = gts[str(a["id"])]
        coarse = decode_segmentation(a["segmentation"], *gt.shape)
        refined = coco.annToMask(coco.anns[a["id"]]) > 0
        assert row["status"] == "refined" and int(row["gt_id"]) == a["id"]
        assert float(row["iou_coarse"]) == pytest.approx(mask_iou(coarse, gt), abs=1e-6)
        assert float(row["iou_refined"]) == pytest.approx(mask_iou(refined, gt), abs=1e-6)
        assert float(row["mba_refined"]) == pytest.approx(boundary_accuracy(refined, gt), abs=1e-6)


def test_results_file_with_images_json(tmp_path, saved_weights, capsys):
    doc, _ = build_dataset(tmp_path)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 0.5 + 0.01 * i} for i, a in enumerate(doc["annotations"])
               if not a["iscrowd"] and a["id"] != 999]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "res_out.json"
    args = ["refine-coco", str(tmp_path / "images"), str(tmp_path / "results.json"), "--out", str(out),
            "--weights", str(saved_weights), "--device", "cpu", *FAST, "--no-progress"]
    assert main(args) == 2 and "--images-json" in capsys.readouterr().err
    assert main([*args, "--images-json", str(tmp_path / "ann.json")]) == 0
    refined = json.loads(out.read_text())
    assert [r["score"] for r in refined] == [r["score"] for r in results]
    want = expected_masks(tmp_path, doc, saved_weights)
    ids = [a["id"] for a in doc["annotations"] if not a["iscrowd"] and a["id"] != 999]
    for r, i in zip(refined, ids, strict=True):
        np.testing.assert_array_equal(decode_segmentation(r["segmentation"], 480, 854), want[i])
    gt_coco = COCO(str(tmp_path / "ann.json"))
    assert len(gt_coco.loadRes(str(out)).anns) == len(results)


def test_inputs_are_never_written_and_bad_files_are_usage_errors(tmp_path, saved_weights, capsys):
    build_dataset(tmp_path)
    ann = tmp_path / "ann.json"
    before = ann.read_bytes()
    base = ["refine-coco", str(tmp_path / "images"), str(ann), "--weights", str(saved_weights), "--device", "cpu",
            *FAST, "--no-progress"]
    assert main([*base, "--out", str(ann)]) == 2
    assert "input file" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "images" / "o.json")]) == 2
    assert "inside the image folder" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o.json"), "--report", str(ann)]) == 2
    assert ann.read_bytes() == before and not (tmp_path / "o.json").exists()
    (tmp_path / "bad.json").write_text("{not json")
    assert main([*base[:2], str(tmp_path / "bad.json"), *base[3:], "--out", str(tmp_path / "o.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


class Interrupting:
    """Refines normally, then raises KeyboardInterrupt at a given call (a Ctrl-C in the middle of a run)."""

    def __init__(self, inner, stop_at=None):
        self.inner, self.stop_at, self.calls = inner, stop_at, 0

    def refine_probability(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner.refine_probability(*args, **kwargs)


def test_an_interrupted_run_resumes_from_its_partial_file(tmp_path, saved_weights):
    build_dataset(tmp_path)
    refiner = cascadepsp.Refiner(device="cpu", weights=saved_weights)
    opts = CocoOptions(fast=True, L=128)
    full = tmp_path / "full.json"
    refine_coco_file(tmp_path / "images", tmp_path / "ann.json", full, refiner=refiner, options=opts,
                     progress=False)
    out = tmp_path / "resumed.json"
    first = Interrupting(refiner, stop_at=3)  # photo 1 has 2 instances: interrupted in photo 2
    with pytest.raises(KeyboardInterrupt):
        refine_coco_file(tmp_path / "images", tmp_path / "ann.json", out, refiner=first, options=opts,
                         checkpoint_every=1, progress=False)
    assert partial_path(out).exists() and not out.exists()
    second = Interrupting(refiner)
    summary = refine_coco_file(tmp_path / "images", tmp_path / "ann.json", out, refiner=second, options=opts,
                               progress=False)
    assert second.calls == 2 and summary.images_resumed == 1 and summary.images_done == 1
    assert json.loads(out.read_text()) == json.loads(full.read_text())
    assert not partial_path(out).exists()
    # other options: the partial file of another run is not used
    first = Interrupting(refiner, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        refine_coco_file(tmp_path / "images", tmp_path / "ann.json", out, refiner=first, options=opts,
                         checkpoint_every=1, progress=False)
    third = Interrupting(refiner)
    refine_coco_file(tmp_path / "images", tmp_path / "ann.json", out, refiner=third,
                     options=CocoOptions(fast=True, L=128, context=0.5), progress=False)
    assert third.calls == 4


def test_missing_photo_and_size_mismatch_fail_per_image(tmp_path, saved_weights):
    doc, _ = build_dataset(tmp_path)
    (tmp_path / "images" / f"{PHOTOS[1]}.jpg").unlink()
    doc["images"][0]["width"] = 100
    for a in doc["annotations"]:
        if a["image_id"] == 40 and isinstance(a["segmentation"], dict):
            a["segmentation"]["size"] = [480, 100]
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    lines: list[str] = []
    summary = refine_coco_file(tmp_path / "images", tmp_path / "ann.json", tmp_path / "o.json",
                               refiner=cascadepsp.Refiner(device="cpu", weights=saved_weights),
                               options=CocoOptions(fast=True, L=128), progress=False, on_failure=lines.append)
    assert summary.images_failed == 2 and len(lines) == 2
    assert "does not match the annotation file's 100x480" in lines[0]
    assert "image file not found" in lines[1]
    assert json.loads((tmp_path / "o.json").read_text())["annotations"] == doc["annotations"]


def test_refine_coco_annotations_raises_without_an_errors_list(small_refiner):
    image = np.zeros((40, 60, 3), np.uint8)
    anns = [{"id": 1, "segmentation": encode_rle(np.ones((40, 60), bool))}, {"id": 2, "segmentation": [[1, 2]]}]
    with pytest.raises(ValueError, match=r"annotations\[1\]: segmentation"):
        refine_coco_annotations(image, anns, small_refiner, L=96)
    errors: list = []
    out = refine_coco_annotations(image, anns, small_refiner, L=96, errors=errors)
    assert errors[0][0] == 1 and out[1] == anns[1] and out[0]["area"] == 40 * 60
