"""Trainer: optimisation makes progress, resume is exact, time budget, validation, logging and export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script
from synthetic_data import write_shapes_dataset

from cascadepsp.training.trainer import CHECKPOINT_NAME, TrainConfig, Trainer, build_data, config_replace
from cascadepsp.weights.files import read_metadata
from cascadepsp.weights.registry import load_model


def write_folder(root: Path, n: int = 6) -> Path:
    """Textured ellipses on textured backgrounds, with a real-coarse ``_seg`` for half of them."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        h, w = 64 + 16 * (i % 2), 80 + 8 * (i % 3)
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        gt = (((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.25 * w)) ** 2 <= 1).astype(np.uint8) * 255
        im = rng.integers(0, 90, size=(h, w, 3)).astype(np.uint8)
        im[gt > 0] = rng.integers(150, 255, size=(int((gt > 0).sum()), 3)).astype(np.uint8)
        cv2.imwrite(str(root / f"s{i}_im.png"), im)
        cv2.imwrite(str(root / f"s{i}_gt.png"), gt)
        if i % 2 == 0:
            cv2.imwrite(str(root / f"s{i}_seg.png"), cv2.dilate(gt, np.ones((5, 5), np.uint8)))
    return root


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "hs")


def tiny_config(folder: Path, out: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(preset="resnet18", human_seg=str(folder), human_seg_val_fraction=0.34, human_seg_repeat=1,
                      human_seg_dev_fraction=0.25,
                      batch_size=2, iterations=40, workers=0, out_dir=str(out), val_every=0, checkpoint_every=0,
                      log_every=1, val_max_items=2, val_max_side=64, val_L=64, val_crop_batches=1,
                      progress=False, device="cpu")
    return config_replace(cfg, augment__crop_size=64, **kw)


def test_steps_on_a_fixed_batch_reduce_the_loss(folder, tmp_path):
    trainer = Trainer(tiny_config(folder, tmp_path, lr=1e-3))
    batch = next(iter(trainer.loader(0, 1)))
    losses = [trainer.train_step(batch)["total"] for _ in range(8)]
    assert all(np.isfinite(losses))
    assert min(losses[-2:]) < 0.6 * losses[0], losses


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(folder, tmp_path):
    n = 2
    straight = Trainer(tiny_config(folder, tmp_path / "a")).run(max_steps=n + 2)["losses"]
    first = Trainer(tiny_config(folder, tmp_path / "b"))
    part1 = first.run(max_steps=n)
    assert part1["step"] == n and not part1["finished"]
    assert (tmp_path / "b" / CHECKPOINT_NAME).is_file()
    again = Trainer(tiny_config(folder, tmp_path / "b"))
    assert again.resume() and again.step == n
    part2 = again.run(max_steps=2)["losses"]
    np.testing.assert_allclose(part1["losses"] + part2, straight, rtol=0, atol=1e-5)
    assert part2[0] != straight[0]  # the resumed steps are really later steps, not a restart
    rows = list(csv.DictReader((tmp_path / "b" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["total"]) == pytest.approx(straight[-1], abs=1e-4)


def test_resume_refuses_a_different_architecture(folder, tmp_path):
    Trainer(tiny_config(folder, tmp_path)).save_checkpoint()
    with pytest.raises(ValueError, match="preset"):
        Trainer(tiny_config(folder, tmp_path, preset="resnet34")).resume()


def test_init_warm_starts_from_exported_weights(folder, tmp_path):
    first = Trainer(tiny_config(folder, tmp_path / "a", lr=1e-2))
    first.run(max_steps=2)
    path = first.export(tmp_path / "a.safetensors")
    warm = Trainer(tiny_config(folder, tmp_path / "b", init=str(path)))
    assert warm.step == 0  # a new run (fresh optimizer and schedule) from the saved weights
    for key, value in first.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(warm.model.state_dict()[key], value, atol=1e-2, rtol=1e-3)
    cold = Trainer(tiny_config(folder, tmp_path / "c"))
    assert (cold.model.final_21.weight - warm.model.final_21.weight).abs().max() > 1e-2
    with pytest.raises(ValueError, match="init"):
        Trainer(tiny_config(folder, tmp_path / "d", init=str(path), residual=4.0))


def test_time_budget_stops_with_a_checkpoint(folder, tmp_path):
    trainer = Trainer(tiny_config(folder, tmp_path))
    result = trainer.run(max_minutes=1e-6)
    assert result["stopped_early"] and not result["finished"] and result["step"] < 40
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["step"] == result["step"]
    assert json.loads(read_metadata(tmp_path / "model_last.safetensors")["steps"]) == result["step"]
    assert not (tmp_path / "model_final.safetensors").exists()  # the schedule did not finish


def test_lr_schedule_steps_at_the_milestones(folder, tmp_path):
    trainer = Trainer(tiny_config(folder, tmp_path, iterations=6, milestones=(0.5, 5 / 6), lr=1e-3))
    lrs = []
    for _ in range(6):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()  # no gradients: a no-op that keeps the scheduler's call-order check quiet
        trainer.scheduler.step()
    np.testing.assert_allclose(lrs, [1e-3] * 3 + [1e-4] * 2 + [1e-5], rtol=1e-9)


def test_validation_finish_and_export(folder, tmp_path):
    cfg = tiny_config(folder, tmp_path, iterations=2, val_every=1, checkpoint_every=1)
    trainer = Trainer(cfg)
    val = trainer.validate()
    keys = {"val_human_seg_synthetic_coarse_iou", "val_human_seg_synthetic_refined_iou",
            "val_human_seg_synthetic_coarse_mba", "val_human_seg_synthetic_refined_mba", "val_loss"}
    assert keys <= set(val)
    assert all(0.0 <= val[k] <= 1.0 for k in keys - {"val_loss"})
    assert val["val_human_seg_synthetic_coarse_iou"] < 1.0
    if "val_human_seg_real_coarse_iou" in val:  # the dilated _seg masks are real-coarse inputs
        assert val["val_human_seg_real_coarse_iou"] < 1.0
    result = trainer.run()
    assert result["finished"] and result["step"] == 2
    final = tmp_path / "model_final.safetensors"
    assert final.is_file() and (tmp_path / "model_best.safetensors").is_file()
    meta = read_metadata(final)
    assert json.loads(meta["steps"]) == 2 and meta["git_commit"]
    assert json.loads(meta["train_config"])["preset"] == "resnet18"
    assert "val_human_seg_synthetic_refined_iou" in json.loads(meta["val"])
    model = load_model(final)
    assert model.config.backbone == "resnet18"
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert rows[1]["val_human_seg_synthetic_refined_mba"] != ""  # validated at every step


def test_build_data_splits_and_rejects_empty(folder, tmp_path):
    bundle = build_data(tiny_config(folder, tmp_path))
    hs = bundle.summary["human_seg"]
    assert (hs["train"], hs["dev"], hs["val"]) == (3, 1, 2)
    # validation during training reads the dev part, held back from the training split, not the val split
    assert len(bundle.train) == 3 and len(bundle.val_examples["human_seg"]) == 1
    on_val = build_data(tiny_config(folder, tmp_path, validate_on="val"))
    assert len(on_val.train) == 4 and len(on_val.val_examples["human_seg"]) == 2
    names = {ex.name for ex in bundle.val_examples["human_seg"]}
    assert not names & {ex.name for ex in on_val.val_examples["human_seg"]}
    assert not names & {it.name for it in bundle.train.store.items}
    # the training seed never moves an image between train / dev / val (a warm start with a new seed
    # must not train on the validation split)
    reseeded = build_data(tiny_config(folder, tmp_path, seed=7))
    assert names == {ex.name for ex in reseeded.val_examples["human_seg"]}
    assert {it.name for it in reseeded.train.store.items} == {it.name for it in bundle.train.store.items}
    # real segmenter masks reach training only from the sources asked for; dev keeps them for scoring
    assert any(it.mask is not None for it in bundle.train.store.items)
    synthetic_only = build_data(tiny_config(folder, tmp_path, real_coarse_sources=("davis",)))
    assert all(it.mask is None for it in synthetic_only.train.store.items)
    assert any(ex.coarse_real is not None for ex in synthetic_only.val_examples["human_seg"]) == \
        any(ex.coarse_real is not None for ex in bundle.val_examples["human_seg"])
    with pytest.raises(ValueError, match="real_coarse_sources"):
        tiny_config(folder, tmp_path, real_coarse_sources=("coco",))
    with pytest.raises(ValueError, match="data source"):
        build_data(tiny_config(folder, tmp_path, human_seg=None))
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(preset="vgg")


def test_duts_real_coarse_masks_reach_training_only_when_asked_and_repeat(tmp_path):
    root = tmp_path / "duts"
    hs = write_folder(tmp_path / "hs", n=6)
    for sub in ("DUTS-TR-Image", "DUTS-TR-Mask", "coarse_pspnet"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        (root / "DUTS-TR-Image" / f"ILSVRC_{i:04d}.png").write_bytes((hs / f"s{i}_im.png").read_bytes())
        (root / "DUTS-TR-Mask" / f"ILSVRC_{i:04d}.png").write_bytes((hs / f"s{i}_gt.png").read_bytes())
    for stem in ("ILSVRC_0001", "ILSVRC_0004"):
        gt = root / "DUTS-TR-Mask" / f"{stem}.png"
        (root / "coarse_pspnet" / f"{stem}.png").write_bytes(gt.read_bytes())

    def items(**kw) -> list:
        cfg = tiny_config(tmp_path, tmp_path / "out", human_seg=None, duts=str(root), duts_dev_count=0, **kw)
        return build_data(cfg).train.store.items

    plain = items()  # the default sources leave DUTS's masks out
    assert len(plain) == 6 and all(it.mask is None for it in plain)
    real = items(real_coarse_sources=("duts",), duts_coarse_repeat=3)
    assert len(real) == 6 + 2 * 2
    assert sorted(it.name for it in real if it.mask is not None) == ["ILSVRC_0001"] * 3 + ["ILSVRC_0004"] * 3


def test_script_trains_and_resumes(folder, tmp_path, capsys):
    script = load_script("train_refiner")
    out = tmp_path / "run"
    args = ["--human-seg", str(folder), "--preset", "resnet18", "--iterations", "2", "--batch-size", "2", "--crop", "64",
            "--workers", "0", "--out", str(out), "--val-every", "0", "--val-items", "2", "--device", "cpu",
            "--no-progress", "--human-seg-repeat", "1"]
    assert script.main(args) == 0
    assert (out / "model_final.safetensors").is_file() and (out / CHECKPOINT_NAME).is_file()
    step_of = lambda: torch.load(out / CHECKPOINT_NAME, weights_only=False)["step"]  # noqa: E731
    assert script.main(args) == 0 and step_of() == 2  # the same command continues the run: nothing left to do
    with pytest.warns(UserWarning, match="iterations changed from 2 to 3"):
        assert script.main([*args, "--iterations", "3"]) == 0 and step_of() == 3  # resumed, one more step
    args[args.index("--iterations") + 1] = "3"
    with pytest.raises(SystemExit) as stop:  # the flags both trainers renamed: one line naming the new one
        script.parse_args([*args, "--iters", "2"])
    assert stop.value.code == 2 and "--iters was renamed --iterations" in capsys.readouterr().err
    assert script.main([*args, "--export", str(tmp_path / "x.safetensors")]) == 0
    assert json.loads(read_metadata(tmp_path / "x.safetensors")["steps"]) == 3
    # a final model on train + dev: nothing held back from the training split
    def data_with_dev_fraction(fraction: str):
        return build_data(script.build_config(script.parse_args([*args, "--human-seg-dev-fraction", fraction])))

    held, final = data_with_dev_fraction("0.2").summary["human_seg"], data_with_dev_fraction("0")
    # the weak-mask knobs reach the augmentation config (defaults: the original's perturbation)
    weak = script.build_config(script.parse_args([*args, "--perturb-iou", "0.5", "0.9", "--real-coarse-min-iou",
                                                  "0.3", "--keep-weight", "2", "--keep-min-iou", "0.85"]))
    assert weak.augment.perturb.iou_range == (0.5, 0.9) and weak.augment.real_coarse_min_iou == 0.3
    assert weak.keep_min_iou == 0.85
    assert script.build_config(script.parse_args(args)).augment.perturb.iou_range == (0.8, 1.0)
    assert held["dev"] == 1 and final.summary["human_seg"]["dev"] == 0
    assert final.summary["human_seg"]["train"] == held["train"] + 1 == len(final.train)


def test_davis_dev_holds_back_sequences_and_scores_frames_with_real_masks(tmp_path):
    root = write_shapes_dataset(tmp_path / "davis", count=12, layout="davis", sequences=4)
    for seq in ("seq1", "seq2"):  # real masks on one frame of each dev sequence
        frame = sorted((root / "Annotations" / seq).iterdir())[0]
        (root / "coarse_u2netp" / seq).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "coarse_u2netp" / seq / frame.name), cv2.imread(str(frame), cv2.IMREAD_GRAYSCALE))
    cfg = tiny_config(tmp_path, tmp_path / "run", human_seg=None, davis=str(root), davis_n_val=1, davis_n_dev=2,
                      val_max_items=None, boundary_weight=4.0, boundary_radius=2)
    bundle = build_data(cfg)
    dv = bundle.summary["davis"]
    assert (dv["train_sequences"], dv["dev_sequences"], dv["val_sequences"]) == (["seq0"], ["seq1", "seq2"], ["seq3"])
    assert sorted(ex.name for ex in bundle.val_examples["davis"]) == ["seq1/00001", "seq2/00002"]
    assert all(ex.coarse_real is not None for ex in bundle.val_examples["davis"])
    trainer = Trainer(cfg, bundle)  # the boundary-weighted loss trains
    assert np.isfinite(trainer.train_step(next(iter(trainer.loader(0, 1))))["total"])
    with pytest.raises(ValueError, match="davis_n_dev"):
        build_data(config_replace(cfg, davis_n_dev=3))
    # --davis-repeat weights the training frames up, never the held-back ones
    twice = build_data(config_replace(cfg, davis_repeat=2))
    assert len(twice.train) == 2 * len(bundle.train) and twice.summary["davis"]["repeat"] == 2
    assert sorted(ex.name for ex in twice.val_examples["davis"]) == ["seq1/00001", "seq2/00002"]


def test_config_round_trip_keeps_lowres_settings():
    from cascadepsp.training.perturb import LowResConfig
    cfg = config_replace(TrainConfig(), augment__lowres_prob=0.4,
                         augment__lowres=LowResConfig(factor_range=(2.0, 5.0), shift=1.0))
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.augment.lowres_prob == 0.4 and back.augment.lowres == cfg.augment.lowres
    assert back == cfg


def test_init_adds_a_guided_output_stage_to_a_network_without_one(folder, tmp_path):
    plain = Trainer(tiny_config(folder, tmp_path / "a", preset="lite0", pretrained=False))
    path = plain.export(tmp_path / "a.safetensors")
    guided = Trainer(tiny_config(folder, tmp_path / "b", preset="lite0_guided", init=str(path)))
    own = guided.model.state_dict()
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(own[key], value, atol=1e-2, rtol=1e-3)  # fp16 export
    assert any(k.startswith("guided.") for k in own) and guided.model.config.guided_radius == 4
    back = guided.export(tmp_path / "b.safetensors")  # the other way round is not a warm start: refused
    with pytest.raises(ValueError, match="init"):
        Trainer(tiny_config(folder, tmp_path / "c", preset="lite0", pretrained=False, init=str(back)))


def test_guided_stage_gets_its_own_learning_rate(folder, tmp_path):
    scaled = Trainer(tiny_config(folder, tmp_path / "a", preset="lite0_guided", pretrained=False, lr=1e-3,
                                 guided_lr_scale=10.0))
    plain_group, guided_group = scaled.optimizer.param_groups
    assert guided_group["lr"] == pytest.approx(1e-2) and plain_group["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in guided_group["params"]} == {id(p) for p in scaled.model.guided.parameters()}
    assert len(plain_group["params"]) + len(guided_group["params"]) == len(list(scaled.model.parameters()))
    one = Trainer(tiny_config(folder, tmp_path / "b", preset="lite0_guided", pretrained=False))
    assert len(one.optimizer.param_groups) == 1  # scale 1: the layout older checkpoints resume into
    with pytest.raises(ValueError, match="guided_lr_scale"):
        tiny_config(folder, tmp_path / "c", guided_lr_scale=0.0)
