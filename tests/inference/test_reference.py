"""Local-step window layout, the skip rule, blending, and fast vs full paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_scene

import cascadepsp
from cascadepsp import Refiner
from cascadepsp.inference.reference import (
    confine_to_band,
    distance_to_boundary,
    global_step,
    iter_windows_to_refine,
    local_band,
    needs_refinement,
    refine_reference,
    refine_single_pass,
    window_grid,
)
from cascadepsp.models.config import RMConfig


def test_window_grid_layout_wide_image():
    wins = window_grid(1000, 2000, L=900)
    assert sorted({w.x0 for w in wins}) == [0, 418, 836, 1100]
    assert sorted({w.y0 for w in wins}) == [0, 100]
    assert len(wins) == 8
    assert all(w.y1 - w.y0 == 900 and w.x1 - w.x0 == 900 for w in wins)
    assert all(0 <= w.x0 and w.x1 <= 2000 and 0 <= w.y0 and w.y1 <= 1000 for w in wins)


def test_window_grid_small_image_is_one_window():
    wins = window_grid(300, 500, L=900)
    assert [(w.y0, w.y1, w.x0, w.x1) for w in wins] == [(0, 300, 0, 500)]


def test_window_grid_covers_every_pixel_after_trimming():
    h, w = 1234, 2345
    covered = np.zeros((h, w), bool)
    for win in window_grid(h, w, L=900):
        iy, ix, py, px = win.kept(h, w)
        covered[iy, ix] = True
        assert (py.stop - py.start, px.stop - px.start) == (iy.stop - iy.start, ix.stop - ix.start)
    assert covered.all()


def test_trim_only_on_inner_sides():
    h, w = 1000, 2000
    first = window_grid(h, w, 900)[0]
    iy, ix, py, px = first.kept(h, w)
    assert (iy.start, ix.start, iy.stop, ix.stop) == (0, 0, 900 - 16, 900 - 16)
    last = [win for win in window_grid(h, w, 900) if win.x1 == w and win.y1 == h][0]
    iy, ix, _, _ = last.kept(h, w)
    assert (iy.start, ix.start, iy.stop, ix.stop) == (100 + 16, 1100 + 16, h, w)


@pytest.mark.parametrize("share,expected", [(0.0, False), (0.09, False), (0.1, True), (0.5, True),
                                            (0.9, True), (0.91, False), (1.0, False)])
def test_skip_rule(share, expected):
    assert needs_refinement(share) is expected


@pytest.mark.parametrize("share,expected", [(0.0, False), (0.001, True), (0.09, True), (0.999, True), (1.0, False)])
def test_skip_rule_of_the_any_boundary_band(share, expected):
    assert needs_refinement(share, (0.0, 1.0)) is expected


def test_reference_local_step_follows_the_models_band():
    h, w, L = 200, 200, 200  # one window; the object covers 4 % of it: the original band skips the window
    seg = -torch.ones(1, 1, h, w)
    seg[..., 80:120, 80:120] = 1
    im = torch.zeros(1, 3, h, w)
    original = _Scripted()
    assert torch.equal(refine_reference(original, im, seg, L=L), (seg > 0).float())
    assert original.local_calls == 0
    boundary = _Scripted()
    boundary.config = RMConfig(local_fg_band=(0.0, 1.0))
    out = refine_reference(boundary, im, seg, L=L)
    assert boundary.local_calls == 1 and torch.allclose(out, torch.tensor(0.25))
    assert local_band(boundary) == (0.0, 1.0) and local_band(original) == (0.1, 0.9)


def test_the_models_band_applies_to_one_window_images_only():
    seg = -torch.ones(1, 1, 200, 200)
    seg[..., 80:120, 80:120] = 1  # 4 % foreground
    assert len(list(iter_windows_to_refine(seg, 200, (0.0, 1.0)))) == 1
    wide = -torch.ones(1, 1, 200, 500)
    wide[..., 80:120, 80:120] = 1  # several windows: the original band (and its bounded window count) applies
    assert len(window_grid(200, 500, 200)) > 1
    assert list(iter_windows_to_refine(wide, 200, (0.0, 1.0))) == list(iter_windows_to_refine(wide, 200)) == []


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_refiner_engines_follow_the_models_band(engine):
    image = np.zeros((200, 200, 3), np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[80:120, 80:120] = True  # 4 % of the one window
    model = _Scripted()
    skipped = Refiner(device="cpu", weights=model, engine=engine).refine_probability(image, mask, L=200)
    assert np.array_equal(skipped, mask.astype(np.float32))
    model.config = RMConfig(local_fg_band=(0.0, 1.0))
    refined = Refiner(device="cpu", weights=model, engine=engine).refine_probability(image, mask, L=200)
    assert np.allclose(refined, 0.25, atol=1e-3)


def test_only_boundary_windows_are_selected():
    h, w = 1000, 2000
    binary = -torch.ones(1, 1, h, w)
    binary[..., :, :600] = 1  # a vertical boundary at x = 600
    chosen = list(iter_windows_to_refine(binary, 900))
    expected = []
    for win in window_grid(h, w, 900):
        share = (binary[..., win.y0:win.y1, win.x0:win.x1] > 0).float().mean().item()
        if 0.1 <= share <= 0.9:
            expected.append(win)
    assert chosen == expected
    assert {win.x0 for win in chosen} == {0, 418}  # windows that contain x = 600 with enough of each side


class _Scripted(torch.nn.Module):
    """Global pass: echoes the mask. Local pass (inter_s8 given): predicts a constant 0.25."""

    def __init__(self):
        super().__init__()
        self.local_calls = 0

    def forward(self, x, seg, inter_s8=None, inter_s4=None):
        if inter_s8 is None:
            p = (seg > 0).float()
            return {"pred_224": p, "pred_28_3": p, "pred_56_2": p}
        self.local_calls += 1
        p = torch.full_like(seg, 0.25)
        return {"pred_224": p, "pred_28_3": p, "pred_56_2": p}


def test_reference_blending_and_untouched_pixels():
    h, w, L = 400, 800, 200
    seg = -torch.ones(1, 1, h, w)
    seg[..., :, :100] = 1  # boundary at x = 100; most windows are pure background
    im = torch.zeros(1, 3, h, w)
    model = _Scripted()
    out = refine_reference(model, im, seg, L=L)
    refined = list(iter_windows_to_refine(seg, L))
    assert model.local_calls == len(refined) > 0
    covered = torch.zeros(h, w, dtype=torch.bool)
    for win in refined:
        iy, ix, _, _ = win.kept(h, w)
        covered[iy, ix] = True
    res = out[0, 0]
    assert torch.allclose(res[covered], torch.tensor(0.25))  # averaged window predictions
    assert torch.equal(res[~covered], (seg[0, 0][~covered] > 0).float())  # binarised global result elsewhere


def test_fast_equals_global_pass_and_full_refines_windows(small_model):
    g = torch.Generator().manual_seed(0)
    im = torch.randn(1, 3, 72, 96, generator=g)
    seg = -torch.ones(1, 1, 72, 96)
    seg[..., 20:50, 30:70] = 1
    with torch.no_grad():
        fast = refine_single_pass(small_model, im, seg, L=96)
        binary, _ = global_step(small_model, im, seg, L=96)
        full = refine_reference(small_model, im, seg, L=96)
    assert fast.shape == full.shape == (1, 1, 72, 96)
    assert torch.equal((fast > 0.5).float() * 2 - 1, binary)  # no resizing at L = long side
    share = (binary > 0).float().mean().item()
    if needs_refinement(share):  # the one window is refined: the result is the local prediction
        assert not torch.equal(full, (binary + 1) / 2)
    else:
        assert torch.equal(full, (binary + 1) / 2)


def _bright_is_foreground(calls: list | None = None) -> torch.nn.Module:
    """A stand-in network that ignores the mask it is given: foreground exactly where the (normalised) red
    channel of its input is above the ImageNet mean, i.e. where the photo is bright. What a correct pipeline
    returns is then known without the pipeline: the photo's bright region, up to resampling at its edge.
    ``calls`` gets (input height and width, local pass?) per call; the Refiner runs a copy of the module, so
    the list is reached through the closure, not an attribute."""

    class BrightIsForeground(torch.nn.Module):
        def forward(self, x, seg, inter_s8=None, inter_s4=None):
            if calls is not None:
                calls.append((tuple(x.shape[-2:]), inter_s8 is not None))
            p = (x[:, :1] > 0).float()
            return {"pred_224": p, "pred_28_3": p, "pred_56_2": p}

    return BrightIsForeground()


@pytest.mark.parametrize("fast", [True, False])
def test_refiner_keeps_size_on_odd_and_tiny_images(small_refiner, fast):
    rng = np.random.default_rng(0)
    bright_net = Refiner(device="cpu", weights=_bright_is_foreground())
    for h, w in [(37, 53), (3, 5), (1, 1), (130, 45)]:
        image = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
        edge = w * 2 // 5
        image[:, :edge] += 150  # bright on the left: across the coarse mask's top / bottom split
        mask = np.zeros((h, w), bool)
        mask[: max(1, h // 2)] = True
        if h * w == 1:
            mask[:] = True
        out = small_refiner.refine(image, mask, fast=fast, L=96)
        assert out.shape == (h, w) and out.dtype == np.uint8
        # the values land where they belong at every odd size: the stand-in's answer (the bright columns)
        # comes back in place, wrong at most in the one column at the bright edge (resampling)
        got = bright_net.refine(image, mask, fast=fast, L=96) >= 128
        if h * w == 1:
            assert got.all()  # a full mask is returned as it is
            continue
        wrong = got != (np.arange(w) < edge)[None, :]
        assert not wrong[:, np.r_[0:edge - 1, edge + 1:w]].any(), (h, w)


def test_downscaled_global_step_on_larger_image(small_refiner, scene):
    image, mask = scene  # 96x128 refined at L = 80: global step downsamples with area
    out = small_refiner.refine(image, mask, fast=False, L=80)
    assert out.shape == mask.shape
    # The scene's object is exactly its bright pixels: from a coarse mask shifted 8 px to the right, the
    # stand-in network's answer is the object itself, seen at 60x80 in the global step (padded to 64x88: both
    # sides go to the next multiple of 8, as the original) and at full resolution in the local step's 80x80 windows.
    calls = []
    coarse = np.roll(mask, 8, axis=1)
    got = Refiner(device="cpu", weights=_bright_is_foreground(calls)).refine(image, coarse, fast=False, L=80) >= 128
    assert calls[0] == ((64, 88), False) and calls[1:] and all(c == ((80, 80), True) for c in calls[1:])
    near_edge = distance_to_boundary(mask) <= 1.5
    assert np.array_equal(got[~near_edge], mask[~near_edge]) and (coarse != mask).sum() > 400


def test_threshold_gives_binary(small_refiner, scene):
    image, mask = scene
    out = small_refiner.refine(image, mask, fast=True, L=96, threshold=0.5)
    assert set(np.unique(out)) <= {0, 255}
    soft = small_refiner.refine_probability(image, mask, fast=True, L=96)
    assert np.array_equal(out == 255, soft >= 0.5)


def test_refiner_runs_under_inference_mode(scene):
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, seg, inter_s8=None, inter_s4=None):
            seen["inference"] = torch.is_inference_mode_enabled()
            p = (seg > 0).float()
            return {"pred_224": p, "pred_28_3": p, "pred_56_2": p}

    image, mask = scene
    Refiner(device="cpu", weights=Probe()).refine(image, mask, fast=True, L=96)
    assert seen["inference"] is True


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_edit_band_keeps_the_coarse_label_away_from_its_boundary(engine):
    """Do no harm: with RMConfig.edit_band the refiner's output (a constant 0.25 here) is kept only within
    edit_band x (H + W) / 2 px of the coarse boundary; every pixel farther away keeps the coarse label."""
    image = np.zeros((200, 200, 3), np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[50:150, 50:150] = True
    model = _Scripted()
    model.config = RMConfig(local_fg_band=(0.0, 1.0), edit_band=0.05)  # 10 px
    prob = Refiner(device="cpu", weights=model, engine=engine).refine_probability(image, mask, L=200)
    dist = distance_to_boundary(mask)
    near = dist <= 10
    assert np.allclose(prob[near], 0.25, atol=1e-3)
    assert np.array_equal(prob[~near], mask[~near].astype(np.float32))
    assert near.any() and (~near & mask).any() and (~near & ~mask).any()
    assert dist[100, 100] == 50 and dist[50, 100] == 1 and dist[49, 100] == 1  # distance to the other class
    unconfined = Refiner(device="cpu", weights=_Scripted_with(RMConfig(local_fg_band=(0.0, 1.0))), engine=engine)
    assert np.allclose(unconfined.refine_probability(image, mask, L=200), 0.25, atol=1e-3)
    assert confine_to_band(prob, mask, 0.0) is prob
    with pytest.raises(ValueError, match="edit_band"):
        RMConfig(edit_band=-0.1)


def _Scripted_with(config: RMConfig) -> _Scripted:
    model = _Scripted()
    model.config = config
    return model


class _Growing(torch.nn.Module):
    """Every pass predicts the mask it was given grown by ``radius`` px (a square max filter)."""

    def __init__(self, radius: int, config: RMConfig):
        super().__init__()
        self.radius, self.config, self.calls = radius, config, 0

    def forward(self, x, seg, inter_s8=None, inter_s4=None):
        self.calls += 1
        p = torch.nn.functional.max_pool2d((seg > 0).float(), 2 * self.radius + 1, 1, self.radius)
        return {"pred_224": p, "pred_28_3": p, "pred_56_2": p}


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_a_second_pass_runs_only_where_the_first_changed_the_mask_a_lot(engine):
    """RMConfig.second_pass_iou: the refinement runs again from its binarised result when that differs from the
    coarse mask by an IoU below the threshold (a weak mask), and once otherwise (a good one)."""
    image = np.zeros((200, 200, 3), np.uint8)

    def refined_side(side: int, radius: int, threshold: float) -> tuple[int, int]:
        mask = np.zeros((200, 200), bool)
        mask[100 - side // 2:100 + side // 2, 100 - side // 2:100 + side // 2] = True
        model = _Growing(radius, RMConfig(second_pass_iou=threshold))
        refiner = Refiner(device="cpu", weights=model, engine=engine)
        model = refiner.model  # the Refiner's own copy counts its calls
        out = refiner.refine_probability(image, mask, fast=True, L=200) >= 0.5
        return int(out.any(0).sum()), model.calls

    assert refined_side(20, 5, 0.9) == (40, 2)  # 20 -> 30 px (IoU 0.44): a second pass, 30 -> 40
    assert refined_side(150, 2, 0.9) == (154, 1)  # 150 -> 154 px (IoU 0.95): one pass
    assert refined_side(20, 5, 0.0) == (30, 1)  # off: the original's one pass
    with pytest.raises(ValueError, match="second_pass_iou"):
        RMConfig(second_pass_iou=1.5)
    # the Refiner's own setting replaces the weights' (None keeps it)
    stored = RMConfig(second_pass_iou=0.9)
    assert Refiner(device="cpu", weights=_Growing(1, stored), second_pass_iou=0.0).second_pass_iou == 0.0
    assert Refiner(device="cpu", weights=_Growing(1, stored)).second_pass_iou == 0.9
    with pytest.raises(ValueError, match="second_pass_iou: expected a value in"):
        Refiner(device="cpu", weights=_Growing(1, stored), second_pass_iou=2.0)


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_refiner_local_step_replaces_the_weights_setting(engine):
    """Refiner(local_step="light") runs each window's pass 3 without the guided stage, on its own copy of the
    weights (both engines agree); the caller's module keeps its setting; a bad value is refused in one line."""
    torch.manual_seed(0)
    model = cascadepsp.create_model("lite0_guided").eval()
    image, mask = make_scene(120, 160, seed=3)
    light = Refiner(device="cpu", weights=model, engine=engine, local_step="light")
    assert light.model.config.local_step == "light" and model.config.local_step == "two_pass"
    two = Refiner(device="cpu", weights=model, engine=engine)
    p1, p2 = light.refine_probability(image, mask, L=96), two.refine_probability(image, mask, L=96)
    assert np.abs(p1 - p2).max() > 1e-3  # the windows ran differently
    other = Refiner(device="cpu", weights=model, engine="batched" if engine == "reference" else "reference",
                    local_step="light")
    assert np.abs(other.refine_probability(image, mask, L=96) - p1).max() <= 1 / 255
    with pytest.raises(ValueError, match="local_step must be one of two_pass, light, got 'fast'"):
        Refiner(device="cpu", weights=model, local_step="fast")
    with pytest.raises(ValueError, match="local_step: these weights carry no RMConfig"):
        Refiner(device="cpu", weights=torch.nn.Identity(), local_step="light")
