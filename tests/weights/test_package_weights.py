"""scripts/package_weights.py and evaluate.py --out-json: shipped weights carry how they were made and scored."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import cascadepsp
from cascadepsp.evaluation.evaluate import COARSE, EvalResults, write_summary_json
from cascadepsp.weights.files import read_metadata

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_keeps_training_metadata_and_adds_command_log_and_scores(tmp_path, small_model):
    src = cascadepsp.save_model(small_model, tmp_path / "best.safetensors",
                                metadata={"steps": 1234, "train_config": {"preset": "resnet18"}})
    summary = {"coarse": {"iou": 0.5, "mba": 0.6}, "cascadepsp": {"iou": 0.55, "mba": 0.7}}
    results = EvalResults(methods=[COARSE, "cascadepsp"], rows=[], summary=summary)
    ev = write_summary_json(results, tmp_path / "ev.json", command="evaluate.py X")
    dst = tmp_path / "shipped.safetensors"
    code = _script("package_weights").main([str(src), str(dst), "--train-command", "train_refiner.py --iters 9",
                                            "--log", "training/x.csv", "--eval", f"davis={ev}"])
    assert code == 0
    meta = read_metadata(dst)
    assert json.loads(meta["steps"]) == 1234 and json.loads(meta["train_config"])["preset"] == "resnet18"
    assert meta["train_command"] == "train_refiner.py --iters 9" and meta["training_log"] == "training/x.csv"
    scored = json.loads(meta["evaluation"])["davis"]
    assert scored["command"] == "evaluate.py X" and scored["summary"]["cascadepsp"]["mba"] == 0.7
    loaded = cascadepsp.load_model(dst)
    for key, value in small_model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(loaded.state_dict()[key], value, atol=2e-3, rtol=1e-3)


def test_package_rejects_a_malformed_eval_argument(tmp_path, small_model):
    src = cascadepsp.save_model(small_model, tmp_path / "best.safetensors")
    with pytest.raises(SystemExit):
        _script("package_weights").main([str(src), str(tmp_path / "o.safetensors"), "--eval", "no-equals-sign"])


def test_package_records_extra_text_metadata_and_refuses_its_own_keys(tmp_path, small_model):
    src = cascadepsp.save_model(small_model, tmp_path / "best.safetensors")
    dst = tmp_path / "shipped.safetensors"
    main = _script("package_weights").main
    assert main([str(src), str(dst), "--meta", "data=DAVIS train + dev", "hardware=2-core CPU"]) == 0
    meta = read_metadata(dst)
    assert meta["data"] == "DAVIS train + dev" and meta["hardware"] == "2-core CPU"
    for bad in ("no-equals-sign", "config={}", "=text"):
        with pytest.raises(SystemExit):
            main([str(src), str(tmp_path / "other.safetensors"), "--meta", bad])
    assert not (tmp_path / "other.safetensors").exists()


def test_package_a_pspnet_with_its_prediction_geometry(tmp_path):
    import pspnet

    torch.manual_seed(0)
    model = pspnet.create("resnet18", classes=2, head_channels=16, aux_channels=8, crop_size=48, base_size=64)
    src = pspnet.save(model, tmp_path / "final.safetensors", metadata={"step": 12})
    dst = tmp_path / "pspnet_fg.safetensors"
    assert _script("package_weights").main([str(src), str(dst), "--base-size", "96", "--crop", "80",
                                            "--threshold", "0.35", "--min-component-fraction", "0.3",
                                            "--scales", "0.75", "1", "1.25",
                                            "--note", "chosen on dev"]) == 0
    loaded, meta = pspnet.load_with_metadata(dst)
    assert (loaded.config.base_size, loaded.config.crop_size, loaded.config.threshold) == (96, 80, 0.35)
    assert loaded.config.min_component_fraction == 0.3 and loaded.config.scales == (0.75, 1.0, 1.25)
    assert meta["note"] == "chosen on dev" and json.loads(meta["step"]) == 12
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(loaded.state_dict()[key], value, atol=2e-3, rtol=1e-3)
    for bad in (["--crop", "4"], ["--threshold", "1.0"], ["--min-component-fraction", "1.5"],
                ["--scales", "0"]):  # an impossible geometry or threshold is refused
        with pytest.raises(SystemExit):
            _script("package_weights").main([str(src), str(tmp_path / "x.safetensors"), *bad])


def test_package_refuses_pspnet_options_for_a_refiner(tmp_path, small_model):
    src = cascadepsp.save_model(small_model, tmp_path / "best.safetensors")
    with pytest.raises(SystemExit):
        _script("package_weights").main([str(src), str(tmp_path / "o.safetensors"), "--base-size", "512"])
    with pytest.raises(SystemExit):
        _script("package_weights").main([str(src), str(tmp_path / "o.safetensors"), "--threshold", "0.4"])
    with pytest.raises(SystemExit):
        _script("package_weights").main([str(src), str(tmp_path / "o.safetensors"), "--min-component-fraction", "0.3"])


def test_average_weights_of_one_architecture(tmp_path):
    import pspnet

    files = []
    for seed, base in ((0, 384), (1, 384), (2, 672)):  # the prediction geometry may differ: the last one's wins
        torch.manual_seed(seed)
        model = pspnet.create("resnet18", classes=2, head_channels=16, aux_channels=8, crop_size=48, base_size=base)
        files.append(pspnet.save(model, tmp_path / f"step_{seed}.safetensors"))
    out = tmp_path / "avg.safetensors"
    assert _script("average_weights").main([str(out), *map(str, files)]) == 0
    averaged, meta = pspnet.load_with_metadata(out)
    states = [pspnet.load(f).state_dict() for f in files]
    for key, value in averaged.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3)
    assert averaged.config.base_size == 672 and meta["averaged_from"] == " ".join(map(str, files))
    other = pspnet.save(pspnet.create("resnet18", classes=2, head_channels=32, aux_channels=8),
                        tmp_path / "wider.safetensors")
    for bad in ([str(files[0])], [str(files[0]), str(other)], [str(files[0]), str(tmp_path / "missing.safetensors")]):
        with pytest.raises(SystemExit):
            _script("average_weights").main([str(tmp_path / "x.safetensors"), *bad])


def test_package_stores_the_inference_recipe_with_a_refiner(tmp_path, small_model):
    src = cascadepsp.save_model(small_model, tmp_path / "best.safetensors")
    dst = tmp_path / "shipped.safetensors"
    main = _script("package_weights").main
    assert main([str(src), str(dst), "--edit-band", "0.03", "--second-pass-iou", "0.9"]) == 0
    assert cascadepsp.load_model(dst).config.edit_band == 0.03
    refiner = cascadepsp.Refiner(device="cpu", weights=dst)
    assert (refiner.edit_band, refiner.second_pass_iou) == (0.03, 0.9)
    assert cascadepsp.load_model(src).config.edit_band == 0.0  # the source file is not touched
    for bad in (["--edit-band", "2"], ["--second-pass-iou", "-1"]):
        with pytest.raises(SystemExit):
            main([str(src), str(tmp_path / "bad.safetensors"), *bad])
