"""`cascadepsp serve` through FastAPI's test client: every endpoint, every error (status and one-line message),
equality with ``Refiner.refine``, the body limit before the body is read, the bounded queue, failures that
leave the worker up, one Refiner per process, and a real server process that finishes its request on SIGTERM.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="cascadepsp[serve] not installed (fastapi)")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) not installed")

from fastapi.testclient import TestClient  # noqa: E402

import cascadepsp  # noqa: E402
from cascadepsp.cli import main as cli_main  # noqa: E402
from cascadepsp.serve import ServeSettings  # noqa: E402
from cascadepsp.serve.app import create_app  # noqa: E402
from cascadepsp.serve.limits import BodyLimitMiddleware  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "davis"
PHOTO, MASK = EXAMPLE / "parkour_00040_im.jpg", EXAMPLE / "parkour_00040_seg.png"
QUICK = {"fast": "true", "L": "256"}  # the global step at L=256: a fraction of a second on one thread


@pytest.fixture(scope="module")
def refiner(single_thread) -> cascadepsp.Refiner:
    return cascadepsp.Refiner(device="cpu")


@pytest.fixture(scope="module")
def client(refiner):
    with TestClient(create_app(refiner=refiner)) as c:
        yield c


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def _mask() -> np.ndarray:
    return np.asarray(Image.open(MASK))


def _png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _post(client, image: bytes | None = None, mask: bytes | None = None, **data: str):
    files = {}
    if image is not None:
        files["image"] = ("photo.jpg", image)
    if mask is not None:
        files["mask"] = ("mask.png", mask)
    return client.post("/v1/refine", files=files, data=data)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (valid CRC), with no pixel data behind it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ endpoints

def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["version"] == cascadepsp.__version__
    assert (body["weights"], body["backend"], body["engine"], body["device"]) == ("default", "torch", "batched", "cpu")
    assert body["queue"]["limit"] == 16 and body["limits"]["max_pixels"] == 25_000_000


def test_refine_png_equals_refiner(client, refiner):
    res = _post(client, _read(PHOTO), _read(MASK), **QUICK)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "image/png" and "refine;dur=" in res.headers["server-timing"]
    assert res.headers["content-disposition"] == 'inline; filename="photo_mask.png"'
    want = refiner.refine(_photo(), _mask(), fast=True, L=256)
    got = _decode(res.content)
    assert got.dtype == np.uint8 and got.shape == (480, 854)
    np.testing.assert_array_equal(got, want)
    assert 0 < np.count_nonzero((got > 0) & (got < 255))  # soft output

    res = _post(client, _read(PHOTO), _read(MASK), threshold="0.5", **QUICK)
    np.testing.assert_array_equal(_decode(res.content), refiner.refine(_photo(), _mask(), fast=True, L=256,
                                                                      threshold=0.5))


def test_refine_full_cascade_equals_refiner(client, refiner):
    """The whole pipeline (global and local steps) on a crop of the example, sent as PNGs."""
    image, mask = _photo()[100:260, 300:520], _mask()[100:260, 300:520]
    res = _post(client, _png(image), _png(mask), L="96")
    assert res.status_code == 200, res.text
    np.testing.assert_array_equal(_decode(res.content), refiner.refine(image, mask, L=96))


def test_refine_rle(client, refiner):
    from pycocotools import mask as api

    res = _post(client, _read(PHOTO), _read(MASK), output="rle", **QUICK)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["size"] == [480, 854] and body["threshold"] == 0.5
    decoded = api.decode({"size": body["size"], "counts": body["counts"].encode()})
    want = refiner.refine(_photo(), _mask(), fast=True, L=256, threshold=0.5) > 0
    np.testing.assert_array_equal(decoded.astype(bool), want)
    assert body["area"] == int(want.sum())
    ys, xs = np.nonzero(want)
    assert body["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                            float(ys.max() - ys.min() + 1)]


def test_refine_instances_equals_library(client, refiner):
    from cascadepsp.instances.coco import encode_rle, refine_coco_annotations

    fg = _mask() > 127
    left, right = fg.copy(), fg.copy()
    left[:, 427:] = False
    right[:, :427] = False
    anns = [{"id": 7, "category_id": 1, "segmentation": encode_rle(left), "score": 0.9},
            {"id": 8, "category_id": 1, "segmentation": [[420.0, 100.0, 600.0, 100.0, 600.0, 400.0, 420.0, 400.0]]},
            {"id": 9, "iscrowd": 1, "segmentation": encode_rle(right)}]
    res = client.post("/v1/refine-instances", files={"image": ("photo.jpg", _read(PHOTO))},
                      data={"annotations": json.dumps(anns), **QUICK})
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["width"], body["height"]) == (854, 480)
    want = refine_coco_annotations(_photo(), anns, refiner, fast=True, L=256)
    assert body["annotations"] == json.loads(json.dumps(want))
    assert body["annotations"][0]["score"] == 0.9 and body["annotations"][2] == anns[2]  # kept / untouched

    res = client.post("/v1/refine-instances", files={"image": ("photo.jpg", _read(PHOTO))},
                      data={"annotations": json.dumps(anns[:1]), "output": "polygons", **QUICK})
    assert res.status_code == 200 and isinstance(res.json()["annotations"][0]["segmentation"], list)


def test_mask_without_foreground_gets_a_note(client):
    labels = np.zeros((480, 854), np.uint8)
    labels[100:300, 300:500] = 3  # a label map: values, but none >= 128
    res = _post(client, _read(PHOTO), _png(labels), **QUICK)
    assert res.status_code == 200 and not _decode(res.content).any()
    assert res.headers["x-cascadepsp-note"] == ("mask has values up to 3 but none counts as foreground (>= 128, or 1 "
                                                "in a 0/1 mask), so the result is empty; a label map?")


def test_exif_rotated_photo(client, refiner):
    """A photo stored on its side with EXIF orientation 6: a mask of the upright photo gets an upright result, a
    mask of the stored pixels gets one in the stored frame (as `cascadepsp refine` does), with a note."""
    from PIL import ImageOps

    upright = _photo()[100:300, 350:650]
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # orientation 6 turns it back clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif)
    decoded = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    assert decoded.shape == upright.shape
    mask = _mask()[100:300, 350:650]
    res = _post(client, buf.getvalue(), _png(mask), **QUICK)
    assert res.status_code == 200 and "x-cascadepsp-note" not in res.headers
    want = refiner.refine(decoded, mask, fast=True, L=256)
    np.testing.assert_array_equal(_decode(res.content), want)
    res = _post(client, buf.getvalue(), _png(np.ascontiguousarray(np.rot90(mask, k=1))), **QUICK)
    assert res.status_code == 200 and "EXIF orientation 6" in res.headers["x-cascadepsp-note"]
    np.testing.assert_array_equal(_decode(res.content), np.rot90(want, k=1))


def test_page_static_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="refined-mask"' in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    js = client.get("/static/page.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "/v1/refine" in js.text
    assert client.get("/static/page.css").status_code == 200
    missing = client.get("/static/../app.py")
    assert missing.status_code == 404 and set(missing.json()) == {"detail"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/v1/refine", "/v1/refine-instances"} <= set(paths)
    assert client.get("/nowhere").json() == {"detail": "Not Found"}


# ------------------------------------------------------------------------------------------------ errors

def _truncated_jpeg() -> bytes:
    return _read(PHOTO)[:4000]


def _small_mask() -> bytes:
    return _png(np.asarray(Image.fromarray(_mask()).resize((427, 240), Image.NEAREST)))


@pytest.mark.parametrize("case,status,detail", [
    ("corrupt image", 422, "image: cannot read image header: UnidentifiedImageError: cannot identify image file "
                           "'photo.jpg'"),
    ("truncated image", 422, "image: cannot read image: OSError: image file is truncated (46 bytes not processed)"),
    ("corrupt mask", 422, "mask: cannot read mask header: UnidentifiedImageError: cannot identify image file "
                          "'mask.png'"),
    ("size mismatch", 422, "mask: size 427x240 (WxH) does not match image size 854x480"),
    ("no image", 422, "image: field required (a file upload)"),
    ("empty image", 422, "image: empty file"),
    ("bad L", 422, "L: Input should be a valid integer, unable to parse string as an integer"),
    ("small L", 422, "L: expected an integer >= 72, got 8"),
    ("large L", 422, "L: at most 2048 on this server (--max-L), got 4096"),
    ("bad threshold", 422, "threshold: expected a value in [0, 1] or nothing, got 1.5"),
    ("bad output", 422, "output: Input should be 'png' or 'rle'"),
    ("huge dimensions", 413, "image: 6000x5000 is 30,000,000 pixels, more than this server's limit of 25,000,000 "
                             "(--max-pixels)"),
    ("decompression bomb", 413, "image: Image size (10000000000 pixels) exceeds limit of 178956970 pixels, could "
                                "be decompression bomb DOS attack. (this server takes at most 25,000,000 pixels, "
                                "--max-pixels)"),
])
def test_refine_errors(client, case, status, detail):
    photo, mask = _read(PHOTO), _read(MASK)
    args: dict = {"image": photo, "mask": mask, **QUICK}
    if case == "corrupt image":
        args["image"] = b"this is not an image"
    elif case == "truncated image":
        args["image"] = _truncated_jpeg()
    elif case == "corrupt mask":
        args["mask"] = b"\x89PNG but not really"
    elif case == "size mismatch":
        args["mask"] = _small_mask()
    elif case == "no image":
        args["image"] = None
    elif case == "empty image":
        args["image"] = b""
    elif case == "bad L":
        args["L"] = "big"
    elif case == "small L":
        args["L"] = "8"
    elif case == "large L":
        args["L"] = "4096"
    elif case == "bad threshold":
        args["threshold"] = "1.5"
    elif case == "bad output":
        args["output"] = "jpeg"
    elif case == "huge dimensions":
        args["image"] = _png_header_only(6000, 5000)
    elif case == "decompression bomb":
        args["image"] = _png_header_only(100_000, 100_000)
    res = _post(client, **args)
    assert res.status_code == status, res.text
    assert res.headers["content-type"] == "application/json"
    assert res.json() == {"detail": detail}


def test_refine_instances_large_annotations_as_a_file(client):
    anns = [{"id": i, "pad": "x" * 20_000, "segmentation": [[0, 0, 5, 0, 5, 5]]} for i in range(60)]
    text = json.dumps(anns)  # 1.2 MB: over the 1 MB limit of a form field
    res = client.post("/v1/refine-instances", files={"image": ("photo.jpg", _read(PHOTO))},
                      data={"annotations": text, **QUICK})
    assert (res.status_code, res.json()) == (400, {"detail": "Part exceeded maximum size of 1024KB. (a form field "
                                                             "is at most 1 MB: send large annotations as a file part)"})
    res = client.post("/v1/refine-instances", data={"annotations": "[]", **QUICK},
                      files={"image": ("photo.jpg", _read(PHOTO)), "annotations": ("a.json", b"\xff\xfe")})
    assert (res.status_code, res.json()) == (422, {"detail": "annotations: expected UTF-8 JSON text"})
    anns = anns[:2]
    anns[1]["iscrowd"] = 1
    res = client.post("/v1/refine-instances", data=QUICK,
                      files={"image": ("photo.jpg", _read(PHOTO)), "annotations": ("a.json", json.dumps(anns).encode())})
    assert res.status_code == 200, res.text
    got = res.json()["annotations"]
    assert got[1] == anns[1] and got[0]["pad"] == anns[0]["pad"] and got[0]["area"] >= 0


@pytest.mark.parametrize("annotations,status,detail", [
    ("not json", 422, "annotations: invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    ('{"a": 1}', 422, "annotations: expected a JSON list of annotations, got dict"),
    ('[{"id": 1}]', 422, "annotations[0]: segmentation: missing"),
    ('[{"segmentation": {"size": [480, 854], "counts": "0"}}]', 422,
     "annotations[0]: segmentation: RLE counts cover 0 pixels, expected 480x854 = 409920"),
    ('[{"segmentation": {"size": [100, 100], "counts": [10000]}}]', 422,
     "annotations[0]: segmentation: RLE size 100x100 (WxH) does not match image size 854x480"),
    ('[{"segmentation": [[1, 2, 3]]}]', 422,
     "annotations[0]: segmentation: polygon 0 must be a list of at least 3 x, y pairs of numbers"),
    ("[" + ",".join(['{"segmentation": [[0, 0, 5, 0, 5, 5]]}'] * 101) + "]", 413,
     "annotations: 101 instances, more than this server's limit of 100 (--max-instances)"),
])
def test_refine_instances_errors(client, annotations, status, detail):
    res = client.post("/v1/refine-instances", files={"image": ("photo.jpg", _read(PHOTO))},
                      data={"annotations": annotations, **QUICK})
    assert (res.status_code, res.json()) == (status, {"detail": detail})


def test_pixel_limit_setting(refiner):
    with TestClient(create_app(refiner=refiner, settings=ServeSettings(max_pixels=100_000))) as c:
        res = _post(c, _read(PHOTO), _read(MASK), **QUICK)
    assert (res.status_code, res.json()) == (413, {"detail": "image: 854x480 is 409,920 pixels, more than this "
                                                             "server's limit of 100,000 (--max-pixels)"})


def test_body_limit_413(refiner):
    with TestClient(create_app(refiner=refiner, settings=ServeSettings(max_upload_mb=0.05))) as c:
        res = _post(c, _read(PHOTO), _read(MASK), **QUICK)  # 76 kB: over 0.05 MB
        assert res.status_code == 413
        assert res.json()["detail"].startswith("request body: Content-Length ")
        assert res.json()["detail"].endswith("more than this server's limit of 0.05 MB (--max-upload-mb)")
        assert res.headers["connection"] == "close"
        assert c.get("/health").status_code == 200


def _run_asgi(app, headers: list[tuple[bytes, bytes]], chunks) -> tuple[list[dict], int]:
    """Call an ASGI app with a request whose body comes from ``chunks``; (sent messages, bytes it pulled)."""
    sent: list[dict] = []
    pulled = 0

    async def receive():
        nonlocal pulled
        try:
            body = next(chunks)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(body)
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/refine", "headers": headers, "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent, pulled


def test_body_limit_before_the_body_is_read(refiner):
    """A declared 300 MB body is refused without reading a byte; a chunked one at the chunk over the limit."""
    app = create_app(refiner=refiner, settings=ServeSettings(max_upload_mb=1))
    limited = BodyLimitMiddleware(app, max_bytes=2**20)

    def endless():
        yield (b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(300 * 16):  # 300 MB in 64 kB chunks, if anything read it all
            yield b"\0" * 65536

    sent, pulled = _run_asgi(limited, [(b"content-length", str(300 * 2**20).encode()),
                                       (b"content-type", b"multipart/form-data; boundary=x")], endless())
    assert pulled == 0 and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": "request body: Content-Length 314,572,800 bytes, more than "
                                                     "this server's limit of 1 MB (--max-upload-mb)"}
    sent, pulled = _run_asgi(limited, [(b"content-type", b"multipart/form-data; boundary=x")], endless())
    assert sent[0]["status"] == 413 and pulled <= 2**20 + 65536
    assert json.loads(sent[1]["body"])["detail"] == ("request body: more than 1,048,576 bytes received, more than "
                                                     "this server's limit of 1 MB (--max-upload-mb)")


class _Gate:
    """A stand-in refiner that blocks until released, so requests pile up in the queue."""

    engine, device = "batched", "cpu"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def refine(self, image, mask, fast=False, L=900, threshold=None):
        self.entered.set()
        assert self.release.wait(30)
        return np.where(mask, 255, 0).astype(np.uint8)


def test_queue_full_503():
    gate = _Gate()
    with TestClient(create_app(refiner=gate, settings=ServeSettings(queue_size=1))) as c:
        results: list = []
        first = threading.Thread(target=lambda: results.append(_post(c, _read(PHOTO), _read(MASK), **QUICK)))
        first.start()
        assert gate.entered.wait(30)
        second = threading.Thread(target=lambda: results.append(_post(c, _read(PHOTO), _read(MASK), **QUICK)))
        second.start()
        deadline = time.monotonic() + 30
        while c.get("/health").json()["queue"]["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = _post(c, _read(PHOTO), _read(MASK), **QUICK)
        assert (busy.status_code, busy.json()) == (503, {"detail": "server busy: 1 requests already waiting "
                                                                   "(limit 1); retry later"})
        assert busy.headers["retry-after"] == "2"
        gate.release.set()
        first.join(30)
        second.join(30)
        assert [r.status_code for r in results] == [200, 200]
        stats = c.get("/health").json()["queue"]
        assert (stats["done"], stats["rejected"], stats["running"], stats["waiting"]) == (2, 1, 0, 0)


class _Flaky:
    """Raises the queued exceptions one per call, then refines for real."""

    def __init__(self, refiner, errors) -> None:
        self.refiner, self.errors = refiner, list(errors)
        self.engine, self.device = refiner.engine, refiner.device

    def refine(self, *args, **kwargs):
        if self.errors:
            raise self.errors.pop(0)
        return self.refiner.refine(*args, **kwargs)


def test_failures_never_take_the_worker_down(refiner):
    flaky = _Flaky(refiner, [RuntimeError("boom"), MemoryError(), ValueError("image: a 9x9 photo is odd")])
    with TestClient(create_app(refiner=flaky)) as c:
        answers = [_post(c, _read(PHOTO), _read(MASK), **QUICK) for _ in range(4)]
        assert [(a.status_code, a.json() if a.status_code != 200 else None) for a in answers] == [
            (500, {"detail": "internal error: RuntimeError: boom"}),
            (503, {"detail": "out of memory while refining; retry later or send a smaller photo"}),
            (422, {"detail": "image: a 9x9 photo is odd"}),
            (200, None)]
        np.testing.assert_array_equal(_decode(answers[3].content), refiner.refine(_photo(), _mask(), fast=True, L=256))
        assert c.get("/health").json()["queue"]["failed"] == 3


def test_one_refiner_per_process_loaded_at_start(refiner):
    loads = []

    def loader(settings):
        loads.append(settings)
        return refiner

    app = create_app(settings=ServeSettings(warmup=False), loader=loader)
    cold = TestClient(app)  # no `with`: the app has not started, so no model yet
    assert (cold.get("/health").json()["status"], loads) == ("loading", [])
    res = _post(cold, _read(PHOTO), _read(MASK), **QUICK)
    assert (res.status_code, res.json()) == (503, {"detail": "model not loaded yet; retry shortly"})
    with TestClient(app) as c:
        assert len(loads) == 1
        for _ in range(3):
            assert _post(c, _read(PHOTO), _read(MASK), **QUICK).status_code == 200
        assert c.get("/health").json()["status"] == "ok"
    assert len(loads) == 1


# ------------------------------------------------------------------------------------------------ command line

def test_cli_serve_options(monkeypatch, capsys):
    import cascadepsp.serve.server as server

    seen = []
    monkeypatch.setattr(server, "run", lambda settings: seen.append(settings) or 0)
    assert cli_main(["serve", "--port", "8123", "--max-pixels", "1000000", "--max-upload-mb", "5", "--workers", "2",
                     "--queue-size", "4", "--threads", "1", "--backend", "openvino", "--max-L", "1200",
                     "--second-pass-iou", "0.9", "--local-step", "light"]) == 0
    s = seen[0]
    assert (s.host, s.port, s.max_pixels, s.max_upload_bytes, s.workers, s.queue_size, s.threads, s.backend,
            s.max_L, s.weights, s.second_pass_iou, s.local_step) == (
        "127.0.0.1", 8123, 1_000_000, 5 * 2**20, 2, 4, 1, "openvino", 1200, "default", 0.9, "light")
    assert ServeSettings.from_json(s.to_json()) == s
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    assert "--max-upload-mb" in capsys.readouterr().out
    assert cli_main(["serve", "--queue-size", "-1"]) == 2
    assert "queue_size: expected an integer >= 0, got -1" in capsys.readouterr().err
    assert cli_main(["serve", "--second-pass-iou", "1.5"]) == 2
    assert "second_pass_iou: expected a value in [0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="local_step: expected one of two_pass, light, got 'fast'"):
        ServeSettings(local_step="fast")


def test_cli_serve_without_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    assert cli_main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == ("cascadepsp serve: error: cascadepsp serve needs fastapi, uvicorn and "
                                               "python-multipart (uvicorn is missing): pip install 'cascadepsp[serve]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLOW_SERVER = """
import sys, time
import numpy as np
import cascadepsp.serve.app as app

class Slow:
    engine, device = "batched", "cpu"
    def refine(self, image, mask, fast=False, L=900, threshold=None):
        time.sleep(1.0)  # long enough for SIGTERM to arrive mid-request, without using the CPU
        return np.where(mask, 255, 0).astype(np.uint8)

app.load_refiner = lambda settings: Slow()
from cascadepsp.cli import main
sys.exit(main(["serve", "--port", sys.argv[1], "--graceful-timeout", "30"]))
"""


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight(tmp_path):
    """A real uvicorn process started by `cascadepsp serve`: SIGTERM mid-request, the answer still arrives whole,
    then the process exits by the signal."""
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        result: list = []
        files = {"image": ("p.jpg", _read(PHOTO)), "mask": ("m.png", _read(MASK))}
        t = threading.Thread(target=lambda: result.append(httpx.post(f"{url}/v1/refine", files=files, timeout=30)))
        t.start()
        while httpx.get(f"{url}/health", timeout=2).json()["queue"]["running"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert result and result[0].status_code == 200
        np.testing.assert_array_equal(_decode(result[0].content), np.where(_mask() > 127, 255, 0))
        assert proc.wait(30) == -signal.SIGTERM  # uvicorn re-raises the signal once shut down (143 in a shell)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Waiting for" in text or "Shutting down" in text
