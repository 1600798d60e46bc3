"""PSPNet architecture: shapes, aux head semantics, pyramid pooling, config and weight files."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import pspnet
from pspnet import PSPNet, PSPNetConfig, PyramidPooling
from pspnet.losses import segmentation_loss

SMALL = {"head_channels": 32, "aux_channels": 16}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def r18() -> PSPNet:
    torch.manual_seed(0)
    return pspnet.create("resnet18", classes=2, **SMALL)


@pytest.mark.parametrize("encoder,stage3,last", [("resnet18", 256, 512), ("resnet34", 256, 512),
                                                  ("mobilenet_v2", 96, 1280), ("efficientnet-b0", 112, 320)])
def test_output_shapes_for_several_encoders(encoder, stage3, last):
    model = pspnet.create(encoder, classes=3, **SMALL)
    assert model.aux_in_channels == stage3 and model.feature_channels == last
    for size in [(64, 64), (65, 97), (33, 17)]:
        with torch.no_grad():
            out = model(torch.randn(1, 3, *size))
        assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *size)
        assert torch.isfinite(out).all()


def test_encoder_is_dilated_to_output_stride_8(r18):
    model = r18
    feats = model.encoder(torch.randn(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (8, 12) and feats[-2].shape[-2:] == (8, 12)
    assert model.encoder.layer4[0].conv2.dilation == (4, 4) and model.encoder.layer3[0].conv2.dilation == (2, 2)


def test_resnet50_uses_layer3_1024_channels_for_aux_and_4096_after_ppm():
    model = PSPNet("resnet50", classes=2)
    assert model.aux_in_channels == 1024 and model.feature_channels == 2048
    assert model.ppm.out_channels == 4096 and model.ppm.branch_channels == 512
    assert model.head.block[0].in_channels == 4096 and model.head.block[0].out_channels == 512
    assert model.head.block[0].kernel_size == (3, 3)
    assert model.aux_head.block[0].in_channels == 1024


def test_aux_output_only_in_training_mode(r18):
    model = r18
    x = torch.randn(2, 3, 48, 40)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    main, aux = out
    assert main.shape == aux.shape == (2, 2, 48, 40)
    assert not torch.allclose(main, aux)
    model.eval()
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)
    no_aux = pspnet.create("resnet18", aux=False, **SMALL).train()
    assert no_aux.aux_head is None
    assert no_aux(x[:1])[1] is None


def test_training_with_batch_size_one_works(r18):
    """A batch of one must train: the pyramid's 1x1 bin has one value per channel, which plain BatchNorm
    refuses in training mode. Three SGD steps on one image (left half foreground) must give finite, non-zero
    gradients, change the weights (the 1x1 bin's among them) and lower the loss."""
    model = copy.deepcopy(r18).train()  # r18 is shared by the module's other tests
    x = torch.randn(1, 3, 40, 40)
    target = torch.zeros(1, 40, 40, dtype=torch.long)
    target[..., :20] = 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(3):
        main, aux = model(x)
        assert main.shape == aux.shape == (1, 2, 40, 40)
        loss, _ = segmentation_loss((main, aux), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
        assert all(torch.isfinite(g).all() for g in grads if g is not None)
        opt.step()
        losses.append(loss.item())
    # measured (seeds 0-2): 0.92-0.97 on the first step, 0.47-0.49 on the third
    assert all(map(math.isfinite, losses)) and losses[-1] < 0.7 * losses[0], losses
    after = model.state_dict()
    for key in ("encoder.conv1.weight", "ppm.branches.0.1.0.weight", "head.classifier.weight",
                "aux_head.classifier.weight"):
        assert not torch.equal(after[key], before[key]), key


def test_pyramid_pooling_bins_and_channels():
    ppm = PyramidPooling(64, bins=(1, 2, 3, 6), reduction=4)
    assert ppm.out_channels == 64 + 4 * 16
    pooled = [branch[0].output_size for branch in ppm.branches]
    assert pooled == [1, 2, 3, 6]
    for branch, b in zip(ppm.branches, (1, 2, 3, 6), strict=True):
        convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in branch.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(convs) == 1 and convs[0].kernel_size == (1, 1) and convs[0].out_channels == 16
        assert len(bns) == (0 if b == 1 else 1)
    x = torch.randn(2, 64, 11, 13)
    y = ppm.eval()(x)
    assert y.shape == (2, 128, 11, 13)
    assert torch.equal(y[:, :64], x)  # the input features come first, unchanged
    # The 1x1 branch is constant over space (global context), the 6x6 branch is not.
    assert torch.allclose(y[:, 64:80], y[:, 64:80, :1, :1].expand(-1, -1, 11, 13))
    assert not torch.allclose(y[:, 112:], y[:, 112:, :1, :1].expand(-1, -1, 11, 13))


def test_custom_bins_and_reduction_from_config():
    model = pspnet.create("resnet18", ppm_bins=(1, 4), ppm_reduction=8, **SMALL)
    assert model.ppm.bins == (1, 4) and model.ppm.out_channels == 512 + 2 * 64


def test_head_and_encoder_parameter_groups_partition_the_model(r18):
    model = r18
    head = {id(p) for p in model.head_parameters()}
    enc = {id(p) for p in model.encoder_parameters()}
    assert head and enc and not head & enc
    assert head | enc == {id(p) for p in model.parameters()}


def test_config_validation_and_round_trip():
    cfg = PSPNetConfig(encoder_name="resnet18", classes=5, ppm_bins=[1, 2, 3, 6])
    assert cfg.ppm_bins == (1, 2, 3, 6)
    assert PSPNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="classes"):
        PSPNetConfig(classes=0)
    with pytest.raises(ValueError, match="ppm_bins"):
        PSPNetConfig(ppm_bins=(1, 0))
    with pytest.raises(ValueError, match="dropout"):
        PSPNetConfig(dropout=1.5)
    with pytest.raises(ValueError, match="unknown"):
        PSPNetConfig.from_dict({"encoder": "resnet18"})
    with pytest.raises(ValueError, match="encoder_name"):
        PSPNet("not-an-encoder")
    with pytest.raises(ValueError, match="output_stride=8"):
        PSPNet("vgg11")


def test_forward_rejects_wrong_input(r18):
    with pytest.raises(ValueError, match="x: expected"):
        r18(torch.randn(3, 32, 32))


def test_save_and_load_round_trip(tmp_path):
    model = pspnet.create("resnet18", classes=3, crop_size=64, **SMALL)
    for m in model.modules():  # non-trivial BN statistics must survive the round trip
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = pspnet.save(model, tmp_path / "m.safetensors", metadata={"note": "test"})
    loaded, meta = pspnet.load_with_metadata(path)
    assert loaded.config == model.config and meta["note"] == "test" and meta["format"] == pspnet.MODEL_FORMAT
    assert not loaded.training
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    half, _ = pspnet.load_with_metadata(pspnet.save(model, tmp_path / "h.safetensors", half=True))
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * path.stat().st_size
    with torch.no_grad():
        assert torch.allclose(model(x), half(x), atol=5e-2)


def test_load_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(pspnet.weights, "bundled_path", lambda filename=None: tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="default PSPNet weights"):
        pspnet.load("default")
    with pytest.raises(FileNotFoundError, match="no such file"):
        pspnet.load(tmp_path / "nope.safetensors")
    from cascadepsp.weights.files import save_weights

    other = save_weights({"w": torch.zeros(1)}, tmp_path / "rm.safetensors", model_format="cascadepsp-rm",
                         config={})
    with pytest.raises(ValueError, match="expected 'pspnet'"):
        pspnet.load(other)
    with pytest.raises(ValueError, match="model: expected"):
        pspnet.save(nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_default_weights_path_is_inside_the_package():
    path = pspnet.bundled_path()
    assert path.name == "pspnet_fg.safetensors" and path.parent.name == "weights"
    assert path.parent.parent.name == "pspnet"


def test_lite0_encoder_is_imagenet_initialised_at_output_stride_8():
    """PSPNet on EfficientNet-Lite0 loads the same local ImageNet weights as the refiner; its input stays
    ImageNet mean/std-normalised and is mapped to the encoder's own (x/255 - 0.5) / 0.5 inside."""
    import warnings

    from cascadepsp.weights.imagenet import load_imagenet_encoder, pretrained_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = pspnet.create("timm-tf_efficientnet_lite0", classes=2, **SMALL)
    src = torch.load(pretrained_file("timm-tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert not torch.equal(model.encoder.conv_stem.weight, src["_conv_stem.weight"])
    load_imagenet_encoder(model.encoder, "timm-tf_efficientnet_lite0")
    model.eval()
    assert torch.equal(model.encoder.conv_stem.weight, src["_conv_stem.weight"])
    x = torch.zeros(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.encoder(x)
    assert feats[-1].shape[-2:] == (8, 12) and model.feature_channels == 320
    white = (torch.ones(1, 3, 1, 1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(white * model.rgb_scale + model.rgb_shift, torch.ones(1, 3, 1, 1))
    assert not pspnet.create("resnet18", classes=2, **SMALL)._renormalise
