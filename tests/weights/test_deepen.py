"""Growing a trained Lite0 refiner into Lite1 (scripts/deepen_refiner.py): same masks at the start, new blocks
live for training, clear errors where the networks do not fit."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch
from conftest import load_script

import cascadepsp
from cascadepsp.inference.reference import image_to_tensor
from cascadepsp.weights.deepen import deepen_model, deepen_state
from cascadepsp.weights.imagenet import read_imagenet_state

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "davis" / "parkour_00040"
pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    image = image_to_tensor(cv2.cvtColor(cv2.imread(f"{EXAMPLE}_im.jpg"), cv2.COLOR_BGR2RGB))
    image = torch.nn.functional.interpolate(image, size=(160, 288), mode="bilinear", align_corners=False)
    seg = cv2.resize(cv2.imread(f"{EXAMPLE}_seg.png", cv2.IMREAD_GRAYSCALE), (288, 160), cv2.INTER_NEAREST)
    return image, torch.from_numpy(seg > 127).float()[None, None] * 2 - 1


def _lite0() -> torch.nn.Module:
    """A Lite0 refiner with seeded random weights: the grow must reproduce any Lite0 network's outputs."""
    torch.manual_seed(0)
    return cascadepsp.create_model("lite0_guided").float().eval()


def test_grown_lite1_computes_its_source_exactly_and_its_new_blocks_can_learn():
    source = _lite0()
    grown = deepen_model(source, "efficientnet_lite1")
    image, seg = _inputs()
    with torch.no_grad():
        before, after = source(image, seg), grown(image, seg)
    for key in ("pred_224", "pred_56_2", "pred_28_3"):
        assert torch.equal(before[key], after[key]), key
    # the new block keeps its ImageNet filters (only its last norm is zeroed), so a step on that norm moves it
    state = grown.state_dict()
    imagenet = read_imagenet_state("timm-tf_efficientnet_lite1")
    assert torch.equal(state["feats.encoder.blocks.3.3.conv_pw.weight"], imagenet["_blocks.10._expand_conv.weight"])
    assert not state["feats.encoder.blocks.3.3.bn3.weight"].any()
    grown.train()
    grown(image, seg)["pred_224"].mean().backward()
    assert grown.feats.encoder.blocks[3][3].bn3.weight.grad.abs().sum() > 0


def test_deepen_refuses_a_wider_encoder_and_names_the_tensor():
    source = _lite0()
    target = cascadepsp.create_model("lite2_guided")
    with pytest.raises(ValueError, match=r"deepen: feats\.encoder\..* is \("):
        deepen_state(source.state_dict(), target)


def test_deepen_script_writes_a_lite1_file_the_trainer_can_start_from(tmp_path, capsys):
    script = load_script("deepen_refiner")
    out = tmp_path / "lite1.safetensors"
    with pytest.raises(SystemExit) as refused:  # a file path is needed, not a registry name
        script.main(["default", "lite1_guided", str(out)])
    assert refused.value.code == 2 and "weights file not found: default" in capsys.readouterr().err
    assert not out.exists()
    source = _lite0()
    src = cascadepsp.save_model(source, tmp_path / "lite0.safetensors")
    assert script.main([str(src), "lite1_guided", str(out)]) == 0
    assert "(efficientnet_lite0) ->" in capsys.readouterr().out
    model = cascadepsp.load_model(out)
    assert model.config.backbone == "efficientnet_lite1"
    assert cascadepsp.count_parameters(model) > cascadepsp.count_parameters(source)
