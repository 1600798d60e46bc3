"""The refinement module: architecture facts, key names, cascade outputs, padding."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from official_keys import official_shapes

import cascadepsp
from cascadepsp.inference.reference import safe_forward
from cascadepsp.models.config import RMConfig

PASS1 = {"out_28", "pred_28"}
PASS2 = {"out_28_2", "pred_28_2", "out_56", "pred_56"}
PASS3 = {"out_28_3", "pred_28_3", "out_56_2", "pred_56_2", "out_224", "pred_224"}


@pytest.fixture(scope="module")
def official_model() -> cascadepsp.RefinementModule:
    return cascadepsp.create_model("resnet50")


def test_official_parameter_count(official_model):
    assert cascadepsp.count_parameters(official_model) == 67_683_433


def test_small_preset_fits_budget():
    assert cascadepsp.count_parameters(cascadepsp.create_model("resnet18")) <= 15_000_000


def test_state_dict_matches_official_names_and_shapes(official_model):
    ours = {k: tuple(v.shape) for k, v in official_model.state_dict().items()}
    assert ours == official_shapes(with_nbt=True)
    assert len(ours) == 426


def test_dilation_pattern_keeps_first_block_undilated(official_model):
    feats = official_model.feats
    assert feats.layer3[0].conv2.dilation == (1, 1) and feats.layer3[0].downsample[0].stride == (1, 1)
    assert all(b.conv2.dilation == (2, 2) for b in list(feats.layer3)[1:])
    assert feats.layer4[0].conv2.dilation == (1, 1)
    assert all(b.conv2.dilation == (4, 4) for b in list(feats.layer4)[1:])


def test_backbone_strides(small_model):
    x = torch.zeros(1, 6, 64, 96)
    with torch.no_grad():
        f, stem, skip = small_model.feats(x)
    assert f.shape[-2:] == (8, 12) and stem.shape[-2:] == (32, 48) and skip.shape[-2:] == (16, 24)
    assert stem.shape[1] == 64


def _inputs(h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, h, w, generator=g)
    seg = (torch.rand(1, 1, h, w, generator=g) > 0.5).float() * 2 - 1
    return x, seg


def test_cascade_outputs_per_pass(small_model):
    x, seg = _inputs()
    with torch.no_grad():
        full = small_model(x, seg)
        from_s8 = small_model(x, seg, inter_s8=seg)
        from_both = small_model(x, seg, inter_s8=seg, inter_s4=seg)
    assert set(full) == PASS1 | PASS2 | PASS3
    assert set(from_s8) == PASS2 | PASS3
    assert set(from_both) == PASS3
    for out in (full, from_s8, from_both):
        for key, value in out.items():
            assert value.shape == (1, 1, 64, 96), key
            if key.startswith("pred"):
                assert torch.allclose(value, torch.sigmoid(out["out" + key[4:]]))


def test_supplied_intermediate_changes_result(small_model):
    x, seg = _inputs()
    with torch.no_grad():
        a = small_model(x, seg)["out_224"]
        b = small_model(x, seg, inter_s8=-seg)["out_224"]
    assert not torch.allclose(a, b)


def test_forward_rejects_sizes_not_multiple_of_8(small_model):
    x, seg = _inputs(60, 96)
    with pytest.raises(ValueError, match="multiples of 8"):
        small_model(x, seg)


class _Spy(torch.nn.Module):
    """Records the inputs of each call and echoes the mask as prediction."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, seg, inter_s8=None, inter_s4=None):
        self.calls.append((x.clone(), seg.clone(), None if inter_s8 is None else inter_s8.clone()))
        p = (seg + 1) / 2
        return {"pred_224": p, "pred_28_3": p, "pred_56_2": p}


@pytest.mark.parametrize("h,w,ph,pw", [(37, 53, 40, 56), (40, 53, 48, 56), (40, 48, 40, 48)])
def test_safe_forward_pads_like_original(h, w, ph, pw):
    spy = _Spy()
    im = torch.ones(1, 3, h, w)
    seg = torch.ones(1, 1, h, w)
    out = safe_forward(spy, im, seg, inter_s8=seg)
    x, s, s8 = spy.calls[0]
    assert x.shape[-2:] == (ph, pw) and s.shape[-2:] == (ph, pw) and s8.shape[-2:] == (ph, pw)
    assert out["pred_224"].shape[-2:] == (h, w)
    if (ph, pw) != (h, w):
        assert x[..., h:, :].abs().sum() == 0 and x[..., :, w:].abs().sum() == 0  # image padded with 0
        assert (s[..., h:, :] == -1).all() and (s[..., :, w:] == -1).all()  # masks padded with -1
        assert (s8[..., h:, :] == -1).all()


def test_local_fg_band_round_trips_and_is_checked():
    cfg = cascadepsp.get_config("lite0_guided")
    assert cfg.local_fg_band == (0.0, 1.0) and cascadepsp.get_config("resnet50").local_fg_band == (0.1, 0.9)
    back = RMConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and isinstance(back.local_fg_band, tuple)
    old_file = {k: v for k, v in cfg.to_dict().items() if k != "local_fg_band"}  # written before the field
    assert RMConfig.from_dict(old_file).local_fg_band == (0.1, 0.9)
    for bad in [(0.5, 0.4), (-0.1, 0.9), (0.1, 1.5), (0.1,)]:
        with pytest.raises(ValueError, match="local_fg_band"):
            RMConfig(local_fg_band=bad)


def _with_local_step(model, local_step):
    other = copy.deepcopy(model)
    other.config = dataclasses.replace(model.config, local_step=local_step)
    return other


def test_local_step_changes_window_calls_only():
    """RMConfig.local_step: a window call (an OS8 estimate given) runs passes 2 and 3 ("two_pass"), or pass 3 only,
    with that estimate as both its OS8 and OS4 inputs and without the guided output stage ("light"); the global
    step's call (no estimate) is the same for both."""
    torch.manual_seed(0)
    two = cascadepsp.create_model("lite0_guided").eval()
    light = _with_local_step(two, "light")
    bare = copy.deepcopy(two)
    bare.guided = None
    x, seg, s8 = torch.randn(1, 3, 64, 96), torch.rand(1, 1, 64, 96) * 2 - 1, torch.rand(1, 1, 64, 96) * 2 - 1
    with torch.no_grad():
        w_two, w_light = two(x, seg, s8), light(x, seg, s8)
        pass3, pass3_bare = two(x, seg, s8, s8), bare(x, seg, s8, s8)
        global_two, global_light = two(x, seg), light(x, seg)
    assert set(w_light) == PASS3 and set(w_two) == PASS2 | PASS3
    assert all(torch.equal(w_light[k], pass3_bare[k]) for k in PASS3)
    assert (pass3["pred_224"] - w_two["pred_224"]).abs().max() > 1e-3  # pass 2 matters
    assert (pass3["pred_224"] - pass3_bare["pred_224"]).abs().max() > 1e-4  # so does the guided stage
    assert all(torch.equal(global_light[k], global_two[k]) for k in global_two)


def test_local_step_round_trips_and_is_checked():
    cfg = dataclasses.replace(cascadepsp.get_config("lite1_guided"), local_step="light")
    assert RMConfig.from_dict(json.loads(cfg.to_json())) == cfg
    old_file = {k: v for k, v in cfg.to_dict().items() if k != "local_step"}  # written before the field
    assert RMConfig.from_dict(old_file).local_step == "two_pass"
    for bad in (1, 2, "one_pass", None):
        with pytest.raises(ValueError, match="local_step must be one of two_pass, light"):
            RMConfig(local_step=bad)
