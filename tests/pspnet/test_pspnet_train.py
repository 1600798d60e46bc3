"""PSPNet training: schedule, optimiser groups, data discovery, augmentation alignment, a tiny run and resume."""

from __future__ import annotations

import os
import signal

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script
from synthetic_data import write_shapes_dataset

import pspnet
from cascadepsp.evaluation.metrics import confusion_matrix, iou_from_confusion
from cascadepsp.training.runfiles import read_log
from pspnet.augment import (
    IGNORE_INDEX,
    MEAN_PIXEL,
    SegAugmentConfig,
    augment_pair,
    composite_pair,
    normalize,
    rotate_pair,
)
from pspnet.data import SegmentationDataset, find_samples, load_mask
from pspnet.losses import segmentation_loss
from pspnet.schedule import build_optimizer, poly_lr, set_poly_lr
from pspnet.train import PSPNetTrainConfig, epoch_batches, train

TINY = {"encoder_name": "resnet18", "head_channels": 64, "aux_channels": 32, "crop_size": 48, "base_size": 64,
        "batch_size": 4, "workers": 0, "progress": False, "val_max_items": 3}


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- schedule and optimiser

def test_poly_schedule_values():
    assert poly_lr(0.01, 0, 100) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 90, 100, power=0.9) == pytest.approx(0.01 * 0.1 ** 0.9)
    assert poly_lr(0.01, 100, 100) == 0.0 and poly_lr(0.01, 150, 100) == 0.0
    lrs = [poly_lr(1.0, s, 20) for s in range(21)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    with pytest.raises(ValueError, match="max_steps"):
        poly_lr(0.01, 0, 0)


def test_optimizer_gives_heads_ten_times_the_lr(tmp_path):
    cfg = PSPNetTrainConfig(data=(str(tmp_path),), out_dir=str(tmp_path / "run"), iterations=10, lr=0.02, **{
        k: v for k, v in TINY.items() if k in ("encoder_name", "head_channels", "aux_channels")})
    model = pspnet.PSPNet(config=cfg.model_config())
    opt = build_optimizer(model, cfg)
    enc, head = opt.param_groups
    assert enc["name"] == "encoder" and head["name"] == "head"
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    lr = set_poly_lr(opt, cfg, 3)
    assert lr == pytest.approx(0.02 * 0.7 ** 0.9)
    assert enc["lr"] == pytest.approx(lr) and head["lr"] == pytest.approx(10 * lr)


def test_loss_adds_point_four_times_aux_and_ignores_255():
    torch.manual_seed(0)
    main, aux = torch.randn(2, 2, 5, 6), torch.randn(2, 2, 5, 6)
    target = torch.randint(0, 2, (2, 5, 6))
    target[0, 0] = IGNORE_INDEX
    total, parts = segmentation_loss((main, aux), target, 0.4)
    assert total.item() == pytest.approx(parts["main"] + 0.4 * parts["aux"], rel=1e-6)
    keep = target != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(main.permute(0, 2, 3, 1)[keep], target[keep])
    assert parts["main"] == pytest.approx(manual.item(), rel=1e-6)
    only_main, parts2 = segmentation_loss(main, target)
    assert "aux" not in parts2 and only_main.item() == pytest.approx(parts["main"], rel=1e-6)


def test_miou_from_confusion():
    target = np.array([[0, 0, 1, 1], [0, 255, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 1, 0, 1]], np.uint8)
    conf = confusion_matrix(pred, target, 2)
    assert conf.tolist() == [[2, 1], [1, 3]]  # the ignored pixel is not counted
    res = iou_from_confusion(conf)
    assert res["iou"] == pytest.approx([2 / 4, 3 / 5])
    assert res["miou"] == pytest.approx((0.5 + 0.6) / 2) and res["pixel_acc"] == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="classes"):
        confusion_matrix(pred, np.full_like(target, 3), 2)


def test_epoch_batches_are_deterministic_permutations():
    a = epoch_batches(10, 4, seed=1, epoch=2)
    assert a == epoch_batches(10, 4, seed=1, epoch=2) and a != epoch_batches(10, 4, seed=1, epoch=3)
    assert len(a) == 2 and all(len(b) == 4 for b in a) and len(set(sum(a, []))) == 8
    assert epoch_batches(3, 4, 0, 0)[0] and sorted(epoch_batches(3, 4, 0, 0)[0]) == [0, 1, 2]


# ---------------------------------------------------------------- data

def test_find_samples_davis_split_holds_out_last_three_sequences(tmp_path):
    write_shapes_dataset(tmp_path / "davis", count=10, size=(20, 24), layout="davis", sequences=5)
    train_s = find_samples(tmp_path / "davis", "train")
    val_s = find_samples(tmp_path / "davis", "val")
    assert {s.group for s in train_s} == {"seq0", "seq1"} and {s.group for s in val_s} == {"seq2", "seq3", "seq4"}
    assert len(train_s) + len(val_s) == 10 == len(find_samples(tmp_path / "davis", "all"))
    assert all(s.image.parent.name == s.gt.parent.name for s in train_s)
    only = find_samples(tmp_path / "davis", "train", sequences=["seq1"], frame_step=2)
    assert {s.group for s in only} == {"seq1"} and len(only) == 1
    with pytest.raises(ValueError, match="sequences"):
        find_samples(tmp_path / "davis", "train", sequences=["nope"])


def test_find_samples_pairs_split_matches_the_refiners_split(tmp_path):
    from cascadepsp.io.splits import split_by_name
    from cascadepsp.training.data import list_im_gt

    write_shapes_dataset(tmp_path / "pairs", count=40, size=(16, 16))
    val = find_samples(tmp_path / "pairs", "val")
    train_s = find_samples(tmp_path / "pairs", "train")
    assert len(val) == 8 and len(train_s) == 32 and not {s.name for s in val} & {s.name for s in train_s}
    ref_train, ref_val = split_by_name(list_im_gt(tmp_path / "pairs"), 0.2)
    assert {s.name for s in val} == {it.name for it in ref_val}
    assert {s.name for s in train_s} == {it.name for it in ref_train}
    assert [s.name for s in val] == [s.name for s in find_samples(tmp_path / "pairs", "val")]  # deterministic
    assert all(s.gt.name == f"{s.name}_gt.png" and s.image.name == f"{s.name}_im.png" for s in val)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="data root"):
        find_samples(tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        find_samples(tmp_path / "pairs", "test")


def test_dev_split_is_held_back_from_training_and_is_the_refiners_dev(tmp_path):
    from cascadepsp.training.trainer import TrainConfig, build_data

    write_shapes_dataset(tmp_path / "davis", count=16, size=(20, 24), layout="davis", sequences=8)
    parts = {k: find_samples(tmp_path / "davis", k, dev_sequences=3) for k in ("train", "dev", "val")}
    assert [sorted({s.group for s in parts[k]}) for k in ("train", "dev", "val")] == [
        ["seq0", "seq1"], ["seq2", "seq3", "seq4"], ["seq5", "seq6", "seq7"]]
    assert find_samples(tmp_path / "davis", "dev") == []  # no dev part unless asked for
    with pytest.raises(ValueError, match="dev_sequences"):
        find_samples(tmp_path / "davis", "train", dev_sequences=2, val_sequences=6)
    write_shapes_dataset(tmp_path / "pairs", count=40, size=(16, 16))
    dev = find_samples(tmp_path / "pairs", "dev", dev_fraction=0.1)
    train_s = find_samples(tmp_path / "pairs", "train", dev_fraction=0.1)
    assert len(dev) == 3 and len(train_s) == 29 and not {s.name for s in dev} & {s.name for s in train_s}
    # the refiner trainer holds back the same images, so neither model selects on the other's training data
    refiner = build_data(TrainConfig(human_seg=str(tmp_path / "pairs"), human_seg_repeat=1, val_max_items=None,
                                     val_crop_batches=0))
    assert {ex.name for ex in refiner.val_examples["human_seg"]} == {s.name for s in dev}


def test_composite_pair_pastes_the_object_and_keeps_the_backgrounds_foreground():
    h, w = 60, 80
    image = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[20:40, 30:50] = 1
    image[mask == 1] = (250, 10, 10)
    background = np.full((h, w, 3), (10, 10, 250), np.uint8)
    bg_mask = np.zeros((h, w), np.uint8)
    bg_mask[:, :30] = 1  # a (green) object already in the background picture
    background[:, :30] = (10, 250, 10)
    seen = 0
    for seed in range(8):
        out = composite_pair(image, mask, background, bg_mask, np.random.default_rng(seed))
        if out is None:
            continue
        comp, label = out
        assert comp.shape == (h, w, 3) and label.shape == (h, w) and set(np.unique(label)) <= {0, 1}
        red = (comp[..., 0] > 150) & (comp[..., 1] < 80) & (comp[..., 2] < 80)  # the pasted object
        green = (comp[..., 1] > 200) & (comp[..., 0] < 60)  # the background's own object, label moved with it
        blue = (comp[..., 2] > 200) & (comp[..., 0] < 60)
        assert red.sum() > 30 and label[red].all() and label[green].all() and not label[blue].any()
        seen += 1
    assert seen >= 4
    assert composite_pair(image, np.zeros_like(mask), background, bg_mask, np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="match"):
        composite_pair(image, mask[:10], background, bg_mask, np.random.default_rng(0))


def test_dataset_compositing_serves_valid_crops_and_needs_binary_masks(tmp_path):
    root = write_shapes_dataset(tmp_path / "d", count=4, size=(40, 48))
    samples = find_samples(root, "all")
    bgs = [np.full((100, 120, 3), 90, np.uint8)]
    ds = SegmentationDataset(samples, crop_size=32, base_size=40, composite_prob=1.0, backgrounds=bgs)
    torch.manual_seed(0)
    for i in range(8):
        x, y = ds[i % 4]
        assert x.shape == (3, 32, 32) and set(torch.unique(y).tolist()) <= {0, 1, IGNORE_INDEX}
    with pytest.raises(ValueError, match="binary"):
        SegmentationDataset(samples, 32, 40, mask_mode="labels", composite_prob=0.5)
    with pytest.raises(ValueError, match="composite_prob"):
        SegmentationDataset(samples, 32, 40, composite_prob=1.5)


def test_find_samples_images_masks_folders(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(5):
        cv2.imwrite(str(tmp_path / "images" / f"a{i}.jpg"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"a{i}.png"), np.zeros((8, 8), np.uint8))
    assert len(find_samples(tmp_path, "all")) == 5


def test_load_mask_binary_and_label_modes(tmp_path):
    from PIL import Image

    grey = np.array([[0, 127, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    assert load_mask(tmp_path / "g.png").tolist() == [[0, 0, 1, 1]]
    cv2.imwrite(str(tmp_path / "b.png"), np.array([[0, 1, 1, 0]], np.uint8))
    assert load_mask(tmp_path / "b.png").tolist() == [[0, 1, 1, 0]]
    pal = Image.fromarray(np.array([[0, 3, 7, 255]], np.uint8), mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    pal.save(tmp_path / "p.png")
    assert load_mask(tmp_path / "p.png", "labels").tolist() == [[0, 3, 7, 255]]
    with pytest.raises(ValueError, match="mask_mode"):
        load_mask(tmp_path / "p.png", "soft")


# ---------------------------------------------------------------- augmentation

def _coloured_pair(h: int = 80, w: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Red foreground (an asymmetric L shape) on blue: colour tells the class of every pixel."""
    mask = np.zeros((h, w), np.uint8)
    mask[10:70, 15:35] = 1
    mask[55:70, 15:80] = 1
    image = np.where(mask[:, :, None] == 1, np.array([220, 30, 30], np.uint8), np.array([30, 30, 220], np.uint8))
    return image.astype(np.uint8), mask


def _misaligned_pixels(image: np.ndarray, mask: np.ndarray, margin: int = 2) -> int:
    """Pixels well inside a labelled region whose colour says the other class (or the ignore padding)."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)

    def core(region: np.ndarray) -> np.ndarray:  # outside the crop counts as unknown, hence not core
        return cv2.erode(region.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0

    bad = 0
    r, b = image[:, :, 0].astype(int), image[:, :, 2].astype(int)
    for label, ok in ((1, r > b + 60), (0, b > r + 60)):
        bad += int((core(mask == label) & ~ok).sum())
    bad += int((core(mask == IGNORE_INDEX) & (np.abs(image.astype(int) - MEAN_PIXEL).max(axis=2) > 10)).sum())
    return bad


def test_augmentation_keeps_image_and_mask_aligned():
    image, mask = _coloured_pair()
    saw_rotation_padding = saw_fg = False
    for seed in range(12):
        rng = np.random.default_rng(seed)
        im, m = augment_pair(image, mask, rng, crop=64, base_size=100, cfg=SegAugmentConfig(blur_p=0.5))
        assert im.shape == (64, 64, 3) and m.shape == (64, 64) and im.dtype == m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 1, IGNORE_INDEX}
        assert _misaligned_pixels(im, m) == 0, f"seed {seed}"
        saw_rotation_padding |= bool((m == IGNORE_INDEX).any())
        saw_fg |= bool((m == 1).sum() > 50)
    assert saw_rotation_padding and saw_fg


def test_alignment_check_catches_a_mask_rotated_differently():
    image, mask = _coloured_pair()
    im_rot, m_rot = rotate_pair(image, mask, 8.0)
    assert _misaligned_pixels(im_rot, m_rot) == 0
    _, m_wrong = rotate_pair(image, mask, 3.0)  # the mask turned by a different angle than its image
    assert _misaligned_pixels(im_rot, m_wrong) > 20
    _, m_opposite = rotate_pair(image, mask, -8.0)  # the sign of the angle differs
    assert _misaligned_pixels(im_rot, m_opposite) > 20
    assert _misaligned_pixels(im_rot, m_rot[:, ::-1]) > 20  # or flipped on its own


def test_augmentation_flip_scale_and_padding():
    image, mask = _coloured_pair(40, 50)
    cfg = SegAugmentConfig(scale=(1.0, 1.0), rotate_deg=0.0, flip_p=1.0, blur_p=0.0)
    im, m = augment_pair(image, mask, np.random.default_rng(0), crop=64, base_size=50, cfg=cfg)
    # 40x50 padded to 64x64 (centred): the content is the mirrored input, the border is ignore / mean colour.
    assert np.array_equal(m[12:52, 7:57], mask[:, ::-1]) and np.array_equal(im[12:52, 7:57], image[:, ::-1])
    assert (m[:12] == IGNORE_INDEX).all() and (im[:12] == MEAN_PIXEL).all()
    big, _ = augment_pair(image, mask, np.random.default_rng(0), crop=8, base_size=50,
                          cfg=SegAugmentConfig(scale=(2.0, 2.0)))
    assert big.shape == (8, 8, 3)


def test_normalize_and_dataset_items(tmp_path):
    x = normalize(np.full((4, 5, 3), MEAN_PIXEL, np.uint8))
    assert x.shape == (3, 4, 5) and x.abs().max() < 0.01  # the padding colour is zero after normalisation
    write_shapes_dataset(tmp_path / "d", count=3, size=(30, 40))
    ds = SegmentationDataset(find_samples(tmp_path / "d", "all"), crop_size=32, base_size=40)
    img, target = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert target.shape == (32, 32) and target.dtype == torch.int64
    assert set(target.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    with pytest.raises(ValueError, match="empty"):
        SegmentationDataset([], 32, 40)


# ---------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), count=16, size=(48, 64), seed=0)


def test_tiny_training_run_lowers_the_loss(shapes_root, tmp_path):
    torch.manual_seed(0)
    cfg = PSPNetTrainConfig(data=(str(shapes_root),), out_dir=str(tmp_path / "run"), iterations=24,
                            checkpoint_every=0, keep_every=10, seed=0, **TINY)
    result = train(cfg)
    assert result.step == 24 and not result.stopped_early
    losses = [h["main"] for h in result.history]
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    assert [h["step"] for h in result.history] == list(range(1, 25))
    val = result.validations[-1]
    assert val["step"] == 24 and 0.0 <= val["miou"] <= 1.0 and val["iou"][1] > 0.2, val
    assert (tmp_path / "run" / "final.safetensors").is_file() and (tmp_path / "run" / "ckpt_last.pt").is_file()
    rows = read_log(tmp_path / "run" / "log.csv")  # the refiner trainer's log format
    assert [r["step"] for r in rows if r["loss"]] == [str(i) for i in range(1, 25)] and rows[-1]["val_miou"]
    loaded, meta = pspnet.load_with_metadata(result.weights)
    assert loaded.config.crop_size == 48 and meta["step"] == "24" and float(meta["val_miou"]) == val["miou"]
    kept = sorted(p.name for p in (tmp_path / "run").glob("step_*.safetensors"))  # --keep-every 10
    assert kept == ["step_10.safetensors", "step_20.safetensors"]
    assert pspnet.load_with_metadata(tmp_path / "run" / "step_20.safetensors")[1]["step"] == "20"


def test_resume_continues_at_the_same_step_with_the_same_lr(shapes_root, tmp_path):
    common = dict(data=(str(shapes_root),), iterations=8, checkpoint_every=0, val_at_end=False, seed=3, **TINY)
    full = train(PSPNetTrainConfig(out_dir=str(tmp_path / "full"), **common))
    first = train(PSPNetTrainConfig(out_dir=str(tmp_path / "split"), stop_at_step=5, **common))
    assert first.stopped_early and first.step == 5 and first.weights.name == "step_5.safetensors"
    first.checkpoint.rename(first.checkpoint.with_name("last.pt"))  # a run started under the old file name
    second = train(PSPNetTrainConfig(out_dir=str(tmp_path / "split"), **common))
    assert second.history[0]["step"] == 6 and second.step == 8 and len(second.history) == 3
    assert second.history[0]["lr"] == pytest.approx(poly_lr(0.01, 5, 8))
    assert [h["lr"] for h in second.history] == pytest.approx([h["lr"] for h in full.history[5:]])
    # Same data order, augmentation and dropout draws, and momentum buffers: the resumed run lands on the
    # same weights as the uninterrupted one.
    assert [h["loss"] for h in second.history] == pytest.approx([h["loss"] for h in full.history[5:]], rel=1e-4)
    a, b = pspnet.load(full.weights).state_dict(), pspnet.load(second.weights).state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    fresh = train(PSPNetTrainConfig(out_dir=str(tmp_path / "split"), resume=True, **common))
    assert fresh.step == 8 and fresh.history == []  # already finished: nothing more to do


def test_ctrl_c_saves_a_checkpoint_and_weights_at_the_step_reached(shapes_root, tmp_path, monkeypatch):
    import pspnet.train as train_module

    real_loss, calls = train_module.segmentation_loss, []

    def interrupted_at_the_fourth_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "segmentation_loss", interrupted_at_the_fourth_step)
    common = dict(data=(str(shapes_root),), out_dir=str(tmp_path / "r"), iterations=8, checkpoint_every=0,
                  val_at_end=False, seed=3, **TINY)
    with pytest.warns(UserWarning, match="interrupted at step 3"):
        result = train(PSPNetTrainConfig(**common))
    assert result.stopped_early and result.step == 3 and result.weights.name == "step_3.safetensors"
    monkeypatch.setattr(train_module, "segmentation_loss", real_loss)
    resumed = train(PSPNetTrainConfig(**common))
    assert resumed.history[0]["step"] == 4 and resumed.step == 8


def test_kill_saves_a_checkpoint_and_weights_like_ctrl_c(shapes_root, tmp_path, monkeypatch):
    import pspnet.train as train_module

    real_loss, calls = train_module.segmentation_loss, []

    def killed_at_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` sends a background run
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "segmentation_loss", killed_at_the_third_step)
    before = signal.getsignal(signal.SIGTERM)
    common = dict(data=(str(shapes_root),), out_dir=str(tmp_path / "r"), iterations=8, checkpoint_every=0,
                  val_at_end=False, seed=3, **TINY)
    with pytest.warns(UserWarning, match="interrupted at step 2"):
        result = train(PSPNetTrainConfig(**common))
    assert result.stopped_early and result.step == 2 and result.weights.name == "step_2.safetensors"
    assert result.checkpoint.is_file() and signal.getsignal(signal.SIGTERM) == before  # handler restored


def test_resume_rejects_a_checkpoint_of_another_architecture(shapes_root, tmp_path):
    common = dict(data=(str(shapes_root),), out_dir=str(tmp_path / "r"), iterations=4, checkpoint_every=0,
                  val_at_end=False, **TINY)
    train(PSPNetTrainConfig(stop_at_step=1, **common))
    changed = dict(common, head_channels=32)
    with pytest.raises(ValueError, match="model config"):
        train(PSPNetTrainConfig(**changed))
    # the same rules as the refiner trainer (cascadepsp.training.runfiles.check_resume)
    with pytest.raises(ValueError, match="resume: checkpoint has seed=0 but the config says 5"):
        train(PSPNetTrainConfig(**dict(common, seed=5)))
    with pytest.warns(UserWarning, match="resume: lr changed"):
        train(PSPNetTrainConfig(**dict(common, lr=0.02, stop_at_step=2)))


def test_init_warm_starts_from_saved_weights_and_refuses_another_architecture(shapes_root, tmp_path):
    common = dict(data=(str(shapes_root),), iterations=2, checkpoint_every=0, val_at_end=False, **TINY)
    first = train(PSPNetTrainConfig(out_dir=str(tmp_path / "a"), **common))
    source = pspnet.load(first.weights).state_dict()
    # no steps: the warm-started model is written as it was loaded (a different crop is not architecture)
    warm = train(PSPNetTrainConfig(out_dir=str(tmp_path / "b"), init=str(first.weights), stop_at_step=0,
                                   **dict(common, crop_size=40)))
    loaded = pspnet.load(warm.weights).state_dict()
    assert all(torch.equal(source[k], loaded[k]) for k in source)
    # a shipped file's own threshold is a prediction setting, not architecture: warm start still works
    model = pspnet.load(first.weights)
    model.config = model.config.replace(threshold=0.3)
    cut = pspnet.save(model, tmp_path / "cut.safetensors")
    warm = train(PSPNetTrainConfig(out_dir=str(tmp_path / "d"), init=str(cut), stop_at_step=0, **common))
    assert all(torch.equal(source[k], v) for k, v in pspnet.load(warm.weights).state_dict().items())
    with pytest.raises(ValueError, match="init: .* is a different PSPNet .*head_channels=64"):
        train(PSPNetTrainConfig(out_dir=str(tmp_path / "c"), init=str(first.weights),
                                **dict(common, head_channels=32)))


def test_train_script_runs_and_resumes(shapes_root, tmp_path, capsys):
    script = load_script("train_pspnet")
    n = torch.get_num_threads()
    args = ["--data", str(shapes_root), "--out", str(tmp_path / "cli"), "--encoder", "resnet18", "--crop", "32",
            "--base-size", "48", "--batch-size", "4", "--iterations", "3", "--workers", "0", "--head-channels", "32",
            "--val-items", "2", "--threads", str(n)]
    assert script.main(args + ["--stop-at-step", "2"]) == 0
    assert "stopped early at step 2/3" in capsys.readouterr().out
    assert script.main(args) == 0
    out = capsys.readouterr().out
    assert "finished at step 3/3" in out and "validation mIoU" in out
    model, meta = pspnet.load_with_metadata(tmp_path / "cli" / "final.safetensors")
    assert model.config.head_channels == 32 and meta["step"] == "3"
