"""Trainable guided-filter output stage: matches the reference filter, snaps edges, gates, trains, loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cascadepsp
from cascadepsp.evaluation.baselines import guided_filter
from cascadepsp.inference.reference import image_to_tensor
from cascadepsp.models.guided import GuidedOutput, box_mean, colour_guided_filter


def test_matches_the_reference_guided_filter_away_from_the_border():
    rng = np.random.default_rng(0)
    guide, src = rng.random((40, 52, 3)), (rng.random((40, 52)) > 0.5).astype(np.float64)
    ref = guided_filter(guide, src, 3, 1e-2)
    out = colour_guided_filter(torch.from_numpy(guide).permute(2, 0, 1)[None], torch.from_numpy(src)[None, None],
                               3, 1e-2)[0, 0].numpy()
    # the reference reflects at the border, this one averages only pixels inside: compare 2r px inside
    np.testing.assert_allclose(out[6:-6, 6:-6], ref[6:-6, 6:-6], atol=1e-9)


def test_box_mean_counts_only_pixels_inside_the_image():
    x = torch.full((1, 2, 9, 7), 3.0)
    torch.testing.assert_close(box_mean(x, 4), x)
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5)
    assert box_mean(ramp, 1)[0, 0, 1].tolist() == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.5])


def test_filter_moves_a_shifted_mask_edge_onto_the_colour_edge():
    h, w, edge = 32, 40, 20
    guide = torch.zeros(1, 3, h, w)
    guide[..., edge:] = torch.tensor([0.9, 0.6, 0.3]).view(1, 3, 1, 1)
    src = torch.zeros(1, 1, h, w)
    src[..., edge - 2:] = 1.0  # the coarse edge sits 2 px left of the image edge
    out = colour_guided_filter(guide, src, 6, 1e-4)[0, 0] > 0.5
    assert out[:, edge:].all() and not out[:, :edge].any()


def test_bad_shapes_and_radius_are_refused():
    with pytest.raises(ValueError, match="guide/src"):
        colour_guided_filter(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 2, 1e-3)
    with pytest.raises(ValueError, match="radius"):
        colour_guided_filter(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8), 0, 1e-3)
    with pytest.raises(ValueError, match="guided_radius"):
        cascadepsp.RMConfig(guided_radius=-1)


def _stage_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    u8 = np.zeros((24, 32, 3), np.uint8)
    u8[:, 16:] = (200, 150, 90)
    logits = torch.full((1, 1, 24, 32), -3.0)
    logits[..., 14:] = 3.0  # 2 px off the image edge
    return logits, torch.randn(1, 4, 24, 32), image_to_tensor(u8)


def test_closed_gate_passes_logits_through_and_open_gate_filters():
    logits, feats, x = _stage_inputs()
    stage = GuidedOutput(4, radius=6, init_eps=1e-4)
    with torch.no_grad():
        stage.gate[2].bias.fill_(-30.0)
        torch.testing.assert_close(stage(logits, feats, x), logits, atol=1e-4, rtol=0)
        stage.gate[2].bias.fill_(30.0)
        snapped = stage(logits, feats, x)[0, 0] > 0
    assert snapped[:, 16:].all() and not snapped[:, :16].any()


def test_gradients_reach_the_gate_and_the_regulariser():
    logits, feats, x = _stage_inputs()
    stage = GuidedOutput(4, radius=4)
    target = torch.zeros_like(logits)
    target[..., 16:] = 1.0
    loss = torch.nn.functional.l1_loss(torch.sigmoid(stage(logits, feats, x)), target)
    loss.backward()
    assert stage.gate[2].weight.grad.abs().sum() > 0 and stage.log_eps.grad != 0


def test_guided_preset_runs_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = cascadepsp.create_model("lite0_guided").eval()
    assert model.config.guided_radius == 4 and cascadepsp.create_model("lite0").guided is None
    with torch.no_grad():
        model.guided.gate[2].bias.fill_(2.0)  # the stage must change the output for this test to mean anything
    x, seg = torch.randn(1, 3, 64, 64), torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        out = model(x, seg)
    assert out["pred_224"].shape == (1, 1, 64, 64) and torch.isfinite(out["out_224"]).all()
    path = cascadepsp.save_model(model, tmp_path / "g.safetensors")
    loaded = cascadepsp.load_model(path)
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, seg)["pred_224"], out["pred_224"])


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 7, 40])
def test_box_mean_equals_average_pooling_over_the_inside_pixels(radius):
    # window sums must give the windowed mean of excluded-padding average pooling, also for radii wider
    # than the image and for maps far from zero
    x = torch.rand(2, 3, 37, 52) * 4.0 + 100.0
    h, w = x.shape[-2:]
    exact = torch.empty_like(x, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            exact[..., i, j] = x.double()[..., max(0, i - radius):i + radius + 1,
                                          max(0, j - radius):j + radius + 1].mean(dim=(-2, -1))
    torch.testing.assert_close(box_mean(x, radius).double(), exact, atol=2e-4, rtol=0)
