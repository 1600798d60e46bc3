"""Baselines, dataset discovery and the end-to-end evaluation (library function and script) on tiny data."""

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import load_script
from PIL import Image

import cascadepsp
from cascadepsp.evaluation.baselines import (
    BASELINES,
    get_baseline,
    guided_filter,
    guided_refine,
    identity,
    morph_smooth,
)
from cascadepsp.evaluation.evaluate import (
    COARSE,
    REFINER,
    build_methods,
    davis_triplets,
    evaluate_pairs,
    evaluate_sets,
    find_triplets,
    format_sets_table,
    format_table,
    load_sample,
    match_folders,
    save_figure,
    write_csv,
)
from cascadepsp.evaluation.metrics import SegMetrics, boundary_accuracy, mask_iou
from cascadepsp.training.perturb import perturb_mask


def _scene(seed: int, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.uint8)
    cv2.ellipse(gt, (w // 2 + seed, h // 2), (18, 12), 10 * seed, 0, 360, 255, -1)
    image = np.where(gt[..., None] > 0, [200, 60, 40], [30, 90, 160]).astype(np.float64)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    seg = perturb_mask(gt, seed)
    return image, seg, gt


def _write_flat(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, seg, gt = _scene(i)
        Image.fromarray(image).save(folder / f"s{i}_im.png")
        Image.fromarray(seg).save(folder / f"s{i}_seg.png")
        Image.fromarray(gt).save(folder / f"s{i}_gt.png")


# ---------------------------------------------------------------- baselines

def test_guided_filter_preserves_a_step_edge_and_smooths_flat_noise():
    guide = np.zeros((40, 40))
    guide[:, 20:] = 1.0
    out = guided_filter(guide, guide, radius=4, eps=1e-4)
    assert np.abs(out - guide).max() < 0.05  # the guide itself passes through (edge kept)
    rng = np.random.default_rng(0)
    flat = np.full((40, 40, 3), 0.5)
    noisy = rng.random((40, 40))
    smoothed = guided_filter(flat, noisy, radius=4, eps=1e-3)  # flat guide -> a = 0 -> box mean of box mean
    assert smoothed.std() < noisy.std() / 3


def test_guided_refine_snaps_a_shifted_edge_to_the_image_edge():
    h, w = 60, 80
    image = np.zeros((h, w, 3), np.uint8)
    image[:, 40:] = 220
    gt = np.zeros((h, w), np.uint8)
    gt[:, 40:] = 255
    coarse = np.zeros((h, w), np.uint8)
    coarse[:, 37:] = 255  # 3 px too far left
    small = guided_refine(image, coarse, radius=4, eps=1e-3)
    assert small.dtype == np.uint8 and small.shape == (h, w)
    assert mask_iou(coarse, gt) < mask_iou(small, gt) < 1.0  # part of the way: a radius-4 window sees one side
    snapped = guided_refine(image, coarse, radius=8, eps=1e-3)  # windows reach the true edge
    assert mask_iou(snapped, gt) == 1.0 and boundary_accuracy(snapped, gt) == 1.0


def test_morph_smooth_removes_specks_and_fills_pinholes():
    image = np.zeros((64, 64, 3), np.uint8)
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    m[30, 30] = 0  # pinhole
    m[5, 5] = 255  # speck
    out = morph_smooth(image, m, radius=2)
    assert out[30, 30] == 255 and out[5, 5] == 0
    assert out[16:48, 16:48].mean() > 250


def test_identity_and_registry():
    image, seg, _ = _scene(0)
    assert np.array_equal(identity(image, seg), np.where(seg > 127, 255, 0))
    assert set(BASELINES) == {"identity", "guided", "morph"}
    assert get_baseline("morph") is morph_smooth
    with pytest.raises(ValueError, match="baseline"):
        get_baseline("crf")
    with pytest.raises(ValueError, match="mask"):
        guided_refine(image, seg[:-1])


# ---------------------------------------------------------------- discovery

def test_find_triplets_recursive(tmp_path):
    _write_flat(tmp_path / "a", 2)
    _write_flat(tmp_path / "b" / "c", 1)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "lonely_gt.png")  # no input: ignored
    names = [s.name for s in find_triplets(tmp_path)]
    assert names == ["a/s0", "a/s1", "b/c/s0"]
    with pytest.raises(ValueError, match="directory"):
        find_triplets(tmp_path / "missing")


def test_match_folders_and_davis_layout(tmp_path):
    for sub in ("im", "seg", "gt"):
        (tmp_path / sub / "x").mkdir(parents=True)
    image, seg, gt = _scene(1)
    Image.fromarray(image).save(tmp_path / "im" / "x" / "f1.jpg")
    Image.fromarray(seg).save(tmp_path / "seg" / "x" / "f1.png")
    Image.fromarray(gt).save(tmp_path / "gt" / "x" / "f1.png")
    Image.fromarray(gt).save(tmp_path / "gt" / "x" / "only_gt.png")
    samples = match_folders(tmp_path / "im", tmp_path / "seg", tmp_path / "gt")
    assert [s.name for s in samples] == ["x/f1"]

    davis = tmp_path / "davis"
    for seq in ("bear", "cows"):
        for sub, ext, arr in (("JPEGImages", "jpg", image), ("Annotations", "png", gt), ("coarse_u2netp", "png", seg)):
            (davis / sub / seq).mkdir(parents=True, exist_ok=True)
            for frame in ("00000", "00005"):
                Image.fromarray(arr).save(davis / sub / seq / f"{frame}.{ext}")
    (davis / "JPEGImages" / "bear" / "00001.jpg").write_bytes(b"")  # frames without coarse masks are ignored
    got = davis_triplets(davis, ["cows"])
    assert [s.name for s in got] == ["cows/00000", "cows/00005"]
    assert got[0].gt == davis / "Annotations" / "cows" / "00000.png"
    assert len(davis_triplets(davis)) == 4
    with pytest.raises(ValueError, match="sequences"):
        davis_triplets(davis, ["dog"])


# ---------------------------------------------------------------- end to end

def test_evaluate_end_to_end_with_the_bundled_refiner(tmp_path):
    _write_flat(tmp_path / "data", 3)
    samples = find_triplets(tmp_path / "data")
    methods = build_methods([COARSE, REFINER, "guided", "morph"], weights="default", device="cpu", fast=True, L=96)
    assert list(methods) == [REFINER, "guided", "morph"]
    res = evaluate_pairs(samples, methods, keep_extremes=1)
    assert res.methods == [COARSE, REFINER, "guided", "morph"]
    assert res.figure_method == REFINER and len(res.worst) == 1 and len(res.best) == 1
    assert 0 < res.worst[0].gain <= res.best[0].gain  # the refiner sharpens every one of these masks

    # every method's per-image scores are those of its own output, run and scored here on the files as read
    # independently; the bundled refiner is far closer to the truth than the perturbed coarse masks (measured
    # IoU 0.70 / 0.40 / 0.75 -> 0.997 / 0.997 / 1.0)
    refiner = cascadepsp.Refiner(device="cpu")
    independent = {REFINER: lambda im, m: refiner.refine(im, m, fast=True, L=96), "guided": guided_refine,
                   "morph": morph_smooth}
    for row, i in zip(res.rows, range(3), strict=True):
        image = np.asarray(Image.open(tmp_path / "data" / f"s{i}_im.png").convert("RGB"))
        seg = np.asarray(Image.open(tmp_path / "data" / f"s{i}_seg.png"))
        gt = np.asarray(Image.open(tmp_path / "data" / f"s{i}_gt.png"))
        for name, run in independent.items():
            out = run(image, seg)
            assert row[f"{name}_iou"] == pytest.approx(mask_iou(out, gt), abs=1e-9), (i, name)
            assert row[f"{name}_ba"] == pytest.approx(boundary_accuracy(out, gt), abs=1e-9), (i, name)
        assert row[f"{REFINER}_iou"] > row[f"{COARSE}_iou"] + 0.2 and row[f"{REFINER}_iou"] > 0.95, row
    assert res.summary[REFINER]["mba"] > res.summary[COARSE]["mba"] + 0.2

    # coarse-input metrics equal those computed directly from the files
    direct = SegMetrics()
    for s in samples:
        _, seg, gt = load_sample(s)
        direct.update(seg, gt)
    for key in ("iou", "miou_per_image", "mba"):
        assert res.summary[COARSE][key] == pytest.approx(direct.summary()[key], abs=1e-12)
    assert res.summary[COARSE]["n_images"] == 3
    for name in res.methods:
        assert set(res.summary[name]) >= {"iou", "miou_per_image", "mba", "mean_time_s", "n_images"}
        assert 0.0 <= res.summary[name]["iou"] <= 1.0
    assert res.summary[REFINER]["mean_time_s"] > 0.0

    table = format_table(res)
    for name in res.methods:
        assert name in table
    assert "IoU" in table and "mBA" in table and "3 images" in table

    csv_path = write_csv(res, tmp_path / "out" / "per_image.csv")
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["s0", "s1", "s2"]
    for r, s in zip(rows, samples, strict=True):
        _, seg, gt = load_sample(s)
        assert float(r["coarse_iou"]) == pytest.approx(mask_iou(seg, gt), abs=1e-6)
        assert float(r["coarse_ba"]) == pytest.approx(boundary_accuracy(seg, gt), abs=1e-6)
        assert r["height"] == "48" and r["width"] == "64"
        assert not math.isnan(float(r[f"{REFINER}_iou"]))

    fig_path = save_figure(res, tmp_path / "out" / "cases.png")
    assert fig_path.is_file() and fig_path.stat().st_size > 1000
    with Image.open(fig_path) as im:
        assert im.size[0] > 200


def test_evaluate_limit_and_bad_arguments(tmp_path):
    _write_flat(tmp_path, 3)
    samples = find_triplets(tmp_path)
    res = evaluate_pairs(samples, build_methods(["morph"]), limit=2)
    assert len(res.rows) == 2 and res.figure_method == "morph"
    with pytest.raises(ValueError, match="methods"):
        build_methods(["crf"])
    with pytest.raises(ValueError, match="methods"):
        evaluate_pairs(samples, {COARSE: identity})
    with pytest.raises(ValueError, match="limit"):
        evaluate_pairs(samples, {}, limit=0)
    only_coarse = evaluate_pairs(samples, {})
    assert only_coarse.figure_method is None
    with pytest.raises(ValueError, match="no cases"):
        save_figure(only_coarse, tmp_path / "x.png")


def test_script_without_network(tmp_path, capsys):
    _write_flat(tmp_path / "data", 3)
    script = load_script("evaluate")
    rc = script.main([str(tmp_path / "data"), "--methods", "coarse,guided,morph",
                      "--out-csv", str(tmp_path / "r.csv"), "--figure", str(tmp_path / "f.png")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "guided" in out and "morph" in out and REFINER not in out.split("figure")[0]
    assert (tmp_path / "r.csv").is_file() and (tmp_path / "f.png").is_file()
    with pytest.raises(SystemExit):
        script.main(["--methods", "coarse"])  # no data source


def test_select_samples_splits_like_the_trainer(tmp_path):
    from cascadepsp.evaluation.evaluate import select_samples
    from cascadepsp.io.splits import split_by_name

    _write_flat(tmp_path, n=10)
    every = select_samples(tmp_path)
    val = select_samples(tmp_path, split="val")
    train = select_samples(tmp_path, split="train")
    assert len(val) == 2 and len(train) == 8
    assert {s.name for s in val} | {s.name for s in train} == {s.name for s in every}
    assert {s.name for s in val} == {s.name for s in split_by_name(every)[1]}
    with pytest.raises(ValueError, match="split"):
        select_samples(tmp_path, split="test")


def test_dev_split_is_the_part_the_trainer_holds_back(tmp_path):
    from cascadepsp.evaluation.evaluate import select_samples
    from cascadepsp.training.trainer import TrainConfig, build_data

    _write_flat(tmp_path, n=30)
    dev = {s.name for s in select_samples(tmp_path, split="dev")}
    val = {s.name for s in select_samples(tmp_path, split="val")}
    assert len(dev) == 2 and not dev & val  # 10 % of the 24 training photos, never a validation photo
    bundle = build_data(TrainConfig(human_seg=str(tmp_path), human_seg_repeat=1, val_max_items=None,
                                    val_max_side=64, val_crop_batches=0), preload_threads=1)
    assert {ex.name for ex in bundle.val_examples["human_seg"]} == dev
    assert not dev & {it.name for it in bundle.train.store.items}


def test_boundary_headroom_oracles(tmp_path, capsys):
    headroom = load_script("boundary_headroom")
    _, seg, gt = _scene(1)
    coarse, truth = seg > 127, gt > 127
    # k = 0: the ground truth on the coarse boundary pixels only; larger k: closer and closer to the ground truth
    band = cv2.morphologyEx(coarse.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    assert np.array_equal(headroom.band_oracle(coarse, truth, 0), np.where(band, truth, coarse))
    scores = [boundary_accuracy(headroom.band_oracle(coarse, truth, k), truth) for k in (1, 3, 100)]
    assert boundary_accuracy(coarse, truth) < scores[0] <= scores[1] <= scores[2] == 1.0
    assert headroom.offset(coarse, 1).sum() > coarse.sum() > headroom.offset(coarse, -1).sum()
    assert np.array_equal(headroom.offset(coarse, 0), coarse)

    _write_flat(tmp_path / "data", 3)
    assert headroom.main([str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "band oracle k=15" in out and "coarse dilated 1 px" in out
    (tmp_path / "empty").mkdir()
    assert headroom.main([str(tmp_path / "empty")]) == 2
    assert "error: directory: no <name>_im" in capsys.readouterr().err


def test_evaluate_sets_scores_each_set_its_small_photos_and_each_kind(tmp_path):
    _write_flat(tmp_path / "a_real", 3)
    _write_flat(tmp_path / "b_real", 2)
    sets = {name: find_triplets(tmp_path / name) for name in ("a_real", "b_real")}
    scores = evaluate_sets(sets, {"morph": BASELINES["morph"]}, small_side=60)  # the 48x64 photos are not small
    assert set(scores) == {"a_real", "b_real", "all_real"}
    assert scores["all_real"][COARSE]["n_images"] == 5 and scores["a_real"]["morph"]["n_images"] == 3
    one = evaluate_pairs(sets["a_real"], {"morph": BASELINES["morph"]}).summary
    assert scores["a_real"]["morph"]["mba"] == pytest.approx(one["morph"]["mba"])
    assert scores["a_real"][COARSE]["iou"] == pytest.approx(one[COARSE]["iou"])
    small = evaluate_sets(sets, {"morph": BASELINES["morph"]}, small_side=65)
    assert small["a_real/small"][COARSE]["n_images"] == 3 and "b_real/small" in small
    table = format_sets_table(scores)
    assert "| all_real | 5 |" in table and "morph dIoU / dmBA" in table


def test_model_card_renders_the_files_metadata(tmp_path, small_model):
    from cascadepsp.evaluation.model_card import render_model_card

    _write_flat(tmp_path / "h_real", 2)
    scores = evaluate_sets({"h_real": find_triplets(tmp_path / "h_real")}, {"morph": BASELINES["morph"]})
    data = {"duts": {"train": 10053, "dev": 500, "repeat": 1}, "davis": {"train": 834, "val_sequences": ["parkour"]},
            "backgrounds": {"count": 5}}
    path = cascadepsp.save_model(small_model, tmp_path / "w.safetensors", metadata={
        "note": "a test file", "steps": 12, "data": data, "train_command": "train_refiner.py --iters 12",
        "evaluation": {"dev": {"command": "evaluate_dev.py X", "scores": scores},
                       "val": {"command": "evaluate.py Y", "summary": {"coarse": {"iou": 0.5, "mba": 0.6},
                                                                      "cascadepsp": {"iou": 0.55, "mba": 0.7}}}}})
    card = render_model_card(path, "default")
    assert card.startswith("# Model card: `default`") and "- note: a test file" in card
    assert "| duts | 10053 | 500 |" in card and "val: parkour" in card and "CC BY 4.0" in card
    assert "`evaluate_dev.py X`" in card and "| h_real | 2 |" in card
    assert "| cascadepsp | 55.00 | 70.00 | +5.00 | +10.00 |" in card
    assert '| backbone | `"resnet18"` |' in card
