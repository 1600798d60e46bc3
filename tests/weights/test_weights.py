"""Official checkpoint loading, our safetensors format, conversion, and the downloader (local server only)."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import pytest
import torch
from official_keys import synthetic_official_state

import cascadepsp
from cascadepsp.weights.download import ChecksumError, download_file, download_official
from cascadepsp.weights.files import load_torch_checkpoint, load_weights, read_metadata, save_weights
from cascadepsp.weights.registry import load_model, load_official


@pytest.fixture(scope="module")
def official_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = synthetic_official_state(seed=0, with_nbt=True, prefix="module.")
    path = tmp_path_factory.mktemp("official") / "model"
    torch.save(state, path)
    return path, state


def _probe_output(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 32, 32, generator=g)
    seg = (torch.rand(1, 1, 32, 32, generator=g) > 0.5).float() * 2 - 1
    with torch.no_grad():
        return model.eval()(x, seg)["pred_224"]


def test_official_checkpoint_loads_strictly(official_file):
    path, state = official_file
    model = load_official(path)
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[key[len("module."):]], value), key


def test_checkpoint_without_prefix_or_batch_counters_loads(tmp_path):
    state = synthetic_official_state(seed=1, with_nbt=False, prefix="")
    path = tmp_path / "model.pth"
    torch.save(state, path)
    model = load_model(path)
    assert torch.equal(model.state_dict()["psp.bottleneck.weight"], state["psp.bottleneck.weight"])


def test_prefix_is_stripped_only_where_present(tmp_path):
    # A key that merely contains "module." elsewhere must be left alone.
    torch.save({"module.a": torch.zeros(1), "b.module.c": torch.zeros(1)}, tmp_path / "ckpt")
    assert set(load_torch_checkpoint(tmp_path / "ckpt")) == {"a", "b.module.c"}


def test_unexpected_or_missing_keys_fail(tmp_path):
    state = synthetic_official_state(seed=2, with_nbt=True, prefix="module.")
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra")
    with pytest.raises(RuntimeError, match="extra.weight"):
        load_official(tmp_path / "extra")
    state.pop("module.extra.weight")
    state.pop("module.final_21.bias")
    torch.save(state, tmp_path / "missing")
    with pytest.raises(RuntimeError, match="final_21.bias"):
        load_official(tmp_path / "missing")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "evil"
    torch.save({"a": _Evil()}, path)
    with pytest.raises(ValueError, match="evil: not a readable torch checkpoint") as e:
        load_torch_checkpoint(path)
    assert isinstance(e.value.__cause__, pickle.UnpicklingError)  # refused by weights_only, never executed


def test_official_to_safetensors_round_trip(official_file, tmp_path):
    path, _ = official_file
    dst = cascadepsp.convert_official(path, tmp_path / "official.safetensors")
    meta = read_metadata(dst)
    assert meta["format"] == "cascadepsp-rm" and '"backbone": "resnet50"' in meta["config"]
    a, b = load_official(path), load_model(dst)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(_probe_output(a), _probe_output(b))


def test_fp16_safetensors_is_close_and_small(small_model, tmp_path):
    full = cascadepsp.save_model(small_model, tmp_path / "r18.safetensors")
    half = cascadepsp.save_model(small_model, tmp_path / "r18_fp16.safetensors", half=True,
                                 metadata={"steps": 123, "data": "unit test"})
    assert half.stat().st_size < 0.55 * full.stat().st_size
    meta = read_metadata(half)
    assert meta["steps"] == "123" and meta["data"] == "unit test"
    restored = load_model(half)
    assert restored.config == small_model.config
    assert torch.allclose(_probe_output(restored), _probe_output(small_model), atol=2e-2)


def test_foreign_safetensors_is_rejected(tmp_path):
    path = save_weights({"w": torch.zeros(2)}, tmp_path / "seg.safetensors", model_format="pspnet",
                        config={"encoder_name": "resnet18"})
    with pytest.raises(ValueError, match="expected 'cascadepsp-rm'"):
        load_model(path)
    state, config, _ = load_weights(path)
    assert config == {"encoder_name": "resnet18"} and torch.equal(state["w"], torch.zeros(2))


def test_missing_weights_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="official CascadePSP checkpoint not found"):
        load_official(tmp_path / "missing")


# --- downloader, against a server on 127.0.0.1 started by the test -------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    payloads: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        self.hits.append(self.path)
        body = self.payloads.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        declared = len(body) + (1000 if self.path == "/truncated" else 0)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    body = bytes(range(256)) * 4096  # 1 MiB
    _Handler.payloads = {"/model": body, "/corrupt": body[:-1] + b"x", "/truncated": body}
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.md5(body).hexdigest(), body
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_checksum(server, tmp_path):
    base, md5, body = server
    dest = download_file(f"{base}/model", tmp_path / "model", md5, progress=False)
    assert dest.read_bytes() == body


@pytest.mark.parametrize("path,err", [("/corrupt", "does not match"), ("/truncated", "truncated|closed|Incomplete|length")])
def test_bad_downloads_are_rejected_and_leave_nothing(server, tmp_path, path, err):
    base, md5, _ = server
    with pytest.raises((ChecksumError, OSError), match=err):
        download_file(f"{base}{path}", tmp_path / "model", md5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_official_reuses_valid_file(server, tmp_path):
    base, md5, body = server
    dest = tmp_path / "cache" / "model"
    download_official(dest, url=f"{base}/model", md5=md5, progress=False)
    download_official(dest, url=f"{base}/model", md5=md5, progress=False)
    assert _Handler.hits == ["/model"] and dest.read_bytes() == body
    dest.write_bytes(b"damaged")
    download_official(dest, url=f"{base}/model", md5=md5, progress=False)
    assert _Handler.hits == ["/model", "/model"] and dest.read_bytes() == body
