"""The fast path agrees with the reference path and its pieces behave."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_scene

from cascadepsp import Refiner
from cascadepsp.inference.batched import BatchedOptions, BatchedRunner
from cascadepsp.inference.resize import bilinear_crop, bilinear_rows


@pytest.mark.parametrize("h,w,H,W", [(90, 120, 400, 533), (113, 57, 900, 450), (37, 53, 37, 53), (60, 90, 61, 91)])
def test_bilinear_crop_matches_interpolate(h, w, H, W):
    small = torch.rand(h, w, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(small[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    crop = bilinear_crop(small, H, W, H // 3, H - 2, W // 5, W)
    # Bit-exact with PyTorch's CPU kernel (its coordinate and blend arithmetic is reproduced).
    assert torch.equal(bilinear_crop(small, H, W, 0, H, 0, W), full)
    assert torch.equal(crop, full[H // 3:H - 2, W // 5:])


def _pair(model, **fast_kw):
    return (Refiner(device="cpu", weights=model, engine="reference"),
            Refiner(device="cpu", weights=model, engine="batched", **fast_kw))


@pytest.mark.parametrize("size,L", [pytest.param((120, 200), 96, marks=pytest.mark.slow), ((70, 90), 96),
                                    ((96, 96), 96), ((61, 203), 80)])
def test_fast_fp32_equals_reference(small_model, size, L):
    image, mask = make_scene(*size, seed=1)
    ref, fast = _pair(small_model, batch_size=3, precision="fp32")
    a = ref.refine_probability(image, mask, L=L)
    b = fast.refine_probability(image, mask, L=L)
    assert a.shape == b.shape == size
    diff = np.abs(a - b)
    assert diff.max() < 1 / 255  # float16 accumulators are the only rounding
    # Global step only: the same arithmetic up to channels_last rounding (the engines no longer share a module).
    g_ref, g_fast = ref.refine(image, mask, L=L, fast=True), fast.refine(image, mask, L=L, fast=True)
    assert np.abs(g_ref.astype(int) - g_fast).max() <= 1 and np.mean(g_ref == g_fast) > 0.99


@pytest.mark.slow
def test_batch_size_does_not_change_the_result(small_model):
    image, mask = make_scene(112, 200, seed=2)
    one = Refiner(device="cpu", weights=small_model, batch_size=1).refine_probability(image, mask, L=96)
    four = Refiner(device="cpu", weights=small_model, batch_size=4).refine_probability(image, mask, L=96)
    assert np.abs(one - four).max() < 1e-3


def test_windows_are_batched(small_model):
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, seg, inter_s8=None, inter_s4=None):
            calls.append(x.shape[0])
            return self.inner(x, seg, inter_s8, inter_s4)

    image, mask = make_scene(112, 180, seed=3)
    Refiner(device="cpu", weights=Counting(small_model), batch_size=4).refine(image, mask, L=96)
    assert calls[0] == 1 and max(calls[1:]) > 1 and all(b <= 4 for b in calls)


def test_bf16_on_cpu_is_close(small_model):
    image, mask = make_scene(96, 128, seed=4)
    ref = Refiner(device="cpu", weights=small_model, precision="fp32").refine_probability(image, mask, L=96)
    low = Refiner(device="cpu", weights=small_model, precision="bf16").refine_probability(image, mask, L=96)
    assert low.dtype == np.float32 and np.abs(ref - low).mean() < 0.05


@pytest.mark.parametrize("kwargs,message", [({"precision": "int8"}, "precision"), ({"batch_size": 0}, "batch_size")])
def test_bad_fast_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchedOptions(**kwargs)


def test_bad_engine(small_model):
    with pytest.raises(ValueError, match="engine"):
        Refiner(device="cpu", weights=small_model, engine="turbo")


def test_bilinear_rows_match_interpolate():
    small = torch.rand(45, 70, generator=torch.Generator().manual_seed(1))
    full = F.interpolate(small[None, None], size=(301, 433), mode="bilinear", align_corners=False)[0, 0]
    strips = list(bilinear_rows(small, 301, 433, strip=64))
    assert [(a, b) for a, b, _ in strips][-1] == (256, 301)
    assert torch.equal(torch.cat([rows for _, _, rows in strips]), full)


def test_refiner_never_changes_the_module_it_was_handed(small_model):
    model = copy.deepcopy(small_model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image, mask = make_scene(96, 128, seed=5)
    first = Refiner(device="cpu", weights=model, engine="reference").refine_probability(image, mask, L=96)
    batched = Refiner(device="cpu", weights=model, engine="batched")
    reference = Refiner(device="cpu", weights=model, engine="reference")
    assert model.training and model.feats.conv1.weight.is_contiguous()  # not eval()-ed, not channels_last
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert batched.model.feats.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert reference.model.feats.conv1.weight.is_contiguous()  # channels_last would alter the reference arithmetic
    # a reference Refiner built after a batched one on the same module stays bit-exact
    assert np.array_equal(reference.refine_probability(image, mask, L=96), first)


def test_old_engine_spelling_says_the_new_name(small_model):
    with pytest.raises(TypeError, match=r"mode= is now engine="):
        Refiner(device="cpu", weights=small_model, mode="fast")
    with pytest.raises(ValueError, match="engine"):
        Refiner(device="cpu", weights=small_model, engine="fast")


def test_read_only_inputs_are_used_in_place_without_a_warning(small_model):
    image, mask = make_scene(70, 90, seed=3)
    image.setflags(write=False)  # as np.asarray gives a PIL image (the calibration photos), or a read-only map
    mask.setflags(write=False)
    before = image.copy(), mask.copy()
    runner = BatchedRunner(small_model, torch.device("cpu"), BatchedOptions(precision="fp32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about tensors made from read-only arrays
        out = runner.refine(image, mask, L=96)
    assert out.shape == mask.shape
    assert np.array_equal(image, before[0]) and np.array_equal(mask, before[1])  # inputs untouched
