"""Losses of the refinement module on hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cascadepsp.training.losses import (
    LossWeights,
    boundary_band,
    gradient_loss,
    gradient_magnitude,
    keep_mask,
    refinement_loss,
)

KEYS = ("224", "28", "56", "28_2", "28_3", "56_2")


def disk_gt(size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - 15.5) ** 2 + (xx - 14.0) ** 2) < 81).float()[None, None]


def outputs_from_probs(probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, p in probs.items():
        p = p.clamp(1e-7, 1 - 1e-7)
        out["out_" + key] = torch.log(p) - torch.log1p(-p)
        out["pred_" + key] = p
    return out


def test_gradient_magnitude_of_constant_is_sqrt_eps_inside():
    g = gradient_magnitude(torch.full((1, 1, 16, 16), 0.7))
    inner = g[..., 2:-2, 2:-2]  # borders see the zero padding
    assert torch.allclose(inner, torch.full_like(inner, math.sqrt(1e-4)))
    # Constant vs another constant: the gradient loss only sees the (identical) zero-padded borders.
    assert gradient_loss(torch.full((1, 1, 16, 16), 0.3), torch.full((1, 1, 16, 16), 0.3)).item() == 0.0


def test_gradient_magnitude_of_a_ramp():
    # x = a * column: the 3x3 average keeps the ramp, Sobel gx = (x[j-1] - x[j+1]) * 4/4 = -2a, gy = 0.
    a = 0.05
    ramp = (torch.arange(20).float() * a).expand(20, 20)[None, None].contiguous()
    g = gradient_magnitude(ramp)[..., 3:-3, 3:-3]
    assert torch.allclose(g, torch.full_like(g, math.sqrt((2 * a) ** 2 + 1e-4)), atol=1e-6)
    # transposed ramp: same magnitude via gy
    g_t = gradient_magnitude(ramp.transpose(-1, -2).contiguous())[..., 3:-3, 3:-3]
    assert torch.allclose(g_t, g, atol=1e-6)


def test_perfect_prediction_has_near_zero_loss():
    gt = disk_gt()
    out = outputs_from_probs({k: gt.clone() for k in KEYS})
    total, parts = refinement_loss(out, gt)
    for name in ("s0_l1", "s0_l2", "s0_grad", "s2_l1", "s2_l2", "s5_l1", "s5_l2"):
        assert parts[name].item() < 1e-6, name
    for name in ("s1_ce", "s2_ce", "s3_ce", "s4_ce", "s5_ce"):
        assert parts[name].item() < 1e-6, name
    assert total.item() < 1e-5


def test_total_is_the_original_weighted_sum():
    torch.manual_seed(0)
    gt = disk_gt()
    gt = F.avg_pool2d(gt, 3, 1, 1)  # soft GT
    probs = {k: torch.rand_like(gt) for k in KEYS}
    out = outputs_from_probs(probs)
    total, parts = refinement_loss(out, gt)
    hard = (gt > 0.5).float()

    def ce(k: str) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out["out_" + k], hard)

    def l1(k: str) -> torch.Tensor:
        return (probs[k].clamp(1e-7, 1 - 1e-7) - gt).abs().mean()

    def l2(k: str) -> torch.Tensor:
        return ((probs[k].clamp(1e-7, 1 - 1e-7) - gt) ** 2).mean()

    expected = (l1("224") + l2("224") + 5 * gradient_loss(out["pred_224"], gt)
                + ce("28") + 0.5 * ce("56") + 0.25 * l1("56") + 0.25 * l2("56") + ce("28_2") + ce("28_3")
                + 0.5 * ce("56_2") + 0.25 * l1("56_2") + 0.25 * l2("56_2"))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["total"].item() == pytest.approx(total.item())
    assert set(parts) == {"s0_l1", "s0_l2", "s0_grad", "s1_ce", "s2_ce", "s2_l1", "s2_l2", "s3_ce", "s4_ce",
                          "s5_ce", "s5_l1", "s5_l2", "total"}
    assert parts["s0_l1"].item() == pytest.approx(l1("224").item(), rel=1e-5)


def test_weights_and_missing_slots():
    torch.manual_seed(1)
    gt = disk_gt()
    out = outputs_from_probs({k: torch.rand_like(gt) for k in KEYS})
    full, _ = refinement_loss(out, gt)
    no_grad, parts = refinement_loss(out, gt, LossWeights(s0_grad=0.0))
    assert "s0_grad" not in parts
    assert full.item() - no_grad.item() == pytest.approx(5 * gradient_loss(out["pred_224"], gt).item(), rel=1e-4)
    # passes 1 and 2 skipped (inter_s8 / inter_s4 given): only s0, s4, s5 remain
    partial = {k: v for k, v in out.items() if k.split("_", 1)[1] in ("224", "28_3", "56_2")}
    _, parts = refinement_loss(partial, gt)
    assert {p.split("_")[0] for p in parts if p != "total"} == {"s0", "s4", "s5"}


def test_gradients_flow_and_bad_gt_shape():
    gt = disk_gt()
    logits = {k: torch.zeros_like(gt, requires_grad=True) for k in KEYS}
    out = {**{"out_" + k: v for k, v in logits.items()}, **{"pred_" + k: torch.sigmoid(v) for k, v in logits.items()}}
    total, _ = refinement_loss(out, gt)
    total.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in logits.values())
    with pytest.raises(ValueError, match="gt"):
        refinement_loss(out, gt[0])


def test_boundary_band_marks_pixels_near_the_edge():
    gt = torch.zeros(1, 1, 20, 20)
    gt[..., 5:15, 5:15] = 1
    band = boundary_band(gt, 2)
    assert band[0, 0, 10, 10] == 0 and band[0, 0, 0, 0] == 0  # deep inside / far outside
    assert band[0, 0, 5, 10] == 1 and band[0, 0, 3, 10] == 1 and band[0, 0, 16, 10] == 1
    assert band[0, 0, 2, 10] == 0 and band[0, 0, 8, 10] == 0
    assert boundary_band(torch.ones(1, 1, 8, 8), 2).sum() == 0  # no boundary in a full mask
    with pytest.raises(ValueError, match="radius"):
        boundary_band(gt, 0)


def test_boundary_weight_counts_errors_on_the_boundary_more():
    gt = disk_gt()
    band = boundary_band(gt, 3)
    inside = (gt > 0) & (band == 0)
    # same number of wrong pixels, once on the boundary band and once deep inside the object
    on_edge, deep = gt.clone(), gt.clone()
    edge_idx = torch.nonzero(((band > 0) & (gt > 0)).flatten())[:10, 0]
    deep_idx = torch.nonzero(inside.flatten())[:10, 0]
    on_edge.view(-1)[edge_idx] = 0
    deep.view(-1)[deep_idx] = 0
    w = LossWeights(s0_grad=0.0)

    def loss(pred, bw):
        return refinement_loss(outputs_from_probs({k: pred for k in KEYS}), gt, w, bw, 3)[0].item()

    assert loss(on_edge, 0.0) == pytest.approx(loss(deep, 0.0), rel=1e-5)  # the original loss cannot tell
    assert loss(on_edge, 4.0) > 2 * loss(deep, 4.0)
    assert loss(gt, 4.0) < 1e-4  # a perfect prediction stays (near) zero
    with pytest.raises(ValueError, match="boundary_weight"):
        refinement_loss(outputs_from_probs({k: gt for k in KEYS}), gt, w, -1.0)


def test_keep_mask_marks_right_pixels_near_the_coarse_edge_only():
    gt = disk_gt()
    coarse = gt.clone()
    coarse[..., :, 20:] = 0  # the coarse mask misses the disk's right part
    keep = keep_mask(coarse, gt, radius=2)
    assert keep.sum() > 0
    assert torch.all(keep[(coarse != gt)] == 0)  # wrong pixels are never "kept"
    far = boundary_band(coarse, 2) == 0
    assert torch.all(keep[far] == 0)  # nor pixels away from the coarse edge


def test_keep_weight_makes_flipping_a_right_edge_cost_more():
    gt = disk_gt()
    coarse = gt.clone()  # a good coarse mask
    harmed = gt.clone()
    harmed[..., 10:22, 4:9] = 0  # the refiner erased a part the coarse mask had right
    out = outputs_from_probs({k: harmed for k in KEYS})
    plain, _ = refinement_loss(out, gt)
    kept, _ = refinement_loss(out, gt, coarse=coarse, keep_weight=4.0, keep_radius=6)
    assert kept > plain * 1.1  # a weighted mean: the weight also grows the denominator
    # a right prediction costs (almost) nothing either way
    right = outputs_from_probs({k: gt for k in KEYS})
    assert refinement_loss(right, gt, coarse=coarse, keep_weight=4.0)[0] < 0.05
    with pytest.raises(ValueError, match="coarse"):
        refinement_loss(out, gt, keep_weight=1.0)
    with pytest.raises(ValueError, match="keep_weight"):
        refinement_loss(out, gt, coarse=coarse, keep_weight=-1.0)


def test_keep_min_iou_protects_good_coarse_masks_only():
    gt = disk_gt()
    good = gt.clone()  # a right coarse mask: the keep term applies
    bad = torch.zeros_like(gt)
    bad[..., 2:8, 2:8] = 1  # a coarse mask far from the GT: the keep term is off
    harmed = gt.clone()
    harmed[..., 10:22, 4:9] = 0
    out = outputs_from_probs({k: harmed for k in KEYS})
    plain, _ = refinement_loss(out, gt)
    gated_good, parts = refinement_loss(out, gt, coarse=good, keep_weight=4.0, keep_radius=6, keep_min_iou=0.8)
    ungated_good, _ = refinement_loss(out, gt, coarse=good, keep_weight=4.0, keep_radius=6)
    assert float(gated_good) == pytest.approx(float(ungated_good))
    assert float(parts["keep_share"]) == 1.0
    gated_bad, parts = refinement_loss(out, gt, coarse=bad, keep_weight=4.0, keep_radius=6, keep_min_iou=0.8)
    assert float(gated_bad) == pytest.approx(float(plain))  # the bad mask's few right pixels get no extra weight
    assert float(parts["keep_share"]) == 0.0
    ungated_bad, _ = refinement_loss(out, gt, coarse=bad, keep_weight=4.0, keep_radius=6)
    assert float(ungated_bad) != pytest.approx(float(plain))  # without the gate they do
    both, parts = refinement_loss(outputs_from_probs({k: torch.cat([harmed, harmed]) for k in KEYS}),
                                  torch.cat([gt, gt]), coarse=torch.cat([good, bad]), keep_weight=4.0,
                                  keep_radius=6, keep_min_iou=0.8)
    assert float(parts["keep_share"]) == 0.5
    with pytest.raises(ValueError, match="keep_min_iou"):
        refinement_loss(out, gt, coarse=good, keep_weight=1.0, keep_min_iou=1.5)
