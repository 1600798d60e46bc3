"""The web page of `cascadepsp serve` in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
upload the shipped example photo and mask, wait for the result, and check that the refined mask shown is the
API's, pixel for pixel; then paint a mask with the brush and refine that.

Skipped, with the reason, where the Playwright package or a Chromium binary is missing (``apt-get install
chromium``; Playwright's own browser download is never used). ``CASCADEPSP_SCREENSHOT=path.png`` also saves a
screenshot of the finished page there (docs/serve.png was made so).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="cascadepsp[serve] not installed (fastapi)")
pytest.importorskip("uvicorn", reason="cascadepsp[serve] not installed (uvicorn)")
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="the playwright Python package is not installed (pip install playwright)")

import uvicorn  # noqa: E402

import cascadepsp  # noqa: E402
from cascadepsp.serve.app import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "examples" / "davis" / "parkour_00040_im.jpg"
MASK = ROOT / "examples" / "davis" / "parkour_00040_seg.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CASCADEPSP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install chromium, or set "
                                                         "CASCADEPSP_CHROMIUM)")


@pytest.fixture(scope="module")
def server(single_thread):
    """The app with the bundled Refiner, served by uvicorn on a free loopback port in a background thread."""
    app = create_app(refiner=cascadepsp.Refiner(device="cpu"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(server)
            pg.wait_for_selector("body[data-ready='1']")
            yield pg
            assert errors == [], f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def _shown_mask(pg) -> np.ndarray:
    """The pixels of the refined mask as the browser decoded and shows them (its <img> drawn on a canvas)."""
    w, h, b64 = pg.evaluate("""() => {
        const img = document.getElementById('refined-mask');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        let s = '';
        for (let i = 0; i < px.length; i += 4) {
            if (px[i] !== px[i + 1] || px[i] !== px[i + 2] || px[i + 3] !== 255) throw new Error('not grey at ' + i);
            s += String.fromCharCode(px[i]);
        }
        return [c.width, c.height, btoa(s)];
    }""")
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w)


def _submit(pg) -> str:
    """Click Refine and wait for the page to finish (waiting by selector: the page's CSP forbids eval)."""
    pg.evaluate("() => { document.body.dataset.state = 'idle'; }")
    pg.click("#refine")
    pg.wait_for_selector("body[data-state='done'], body[data-state='error']", state="attached", timeout=120_000)
    return pg.get_attribute("body", "data-state")


def _refine(pg) -> None:
    assert _submit(pg) == "done", pg.inner_text("#status")


def test_page_refines_the_example_like_the_api(server, page):
    import httpx

    page.set_input_files("#image", str(PHOTO))
    page.set_input_files("#mask", str(MASK))
    page.check("#fast")
    page.fill("#L", "256")
    _refine(page)
    img = page.locator("#refined-mask")
    assert img.is_visible()
    assert page.evaluate("[document.getElementById('refined-mask').naturalWidth, "
                         "document.getElementById('refined-mask').naturalHeight]") == [854, 480]
    assert page.locator("#download").is_visible()
    assert page.get_attribute("#download", "download") == "parkour_00040_im_mask.png"
    shown = _shown_mask(page)
    api = httpx.post(f"{server}/v1/refine", files={"image": PHOTO.open("rb"), "mask": MASK.open("rb")},
                     data={"fast": "true", "L": "256"}, timeout=120)
    assert api.status_code == 200
    np.testing.assert_array_equal(shown, np.asarray(Image.open(io.BytesIO(api.content))))
    # the three views are drawn: the refined overlay differs from the bare photo where the mask is
    differs = page.evaluate("""() => {
        const a = document.getElementById('photo-view'), b = document.getElementById('refined-view');
        const pa = a.getContext('2d').getImageData(0, 0, a.width, a.height).data;
        const pb = b.getContext('2d').getImageData(0, 0, b.width, b.height).data;
        let n = 0; for (let i = 0; i < pa.length; i += 4) if (pa[i] !== pb[i]) n++;
        return [b.width, b.height, n];
    }""")
    assert differs[:2] == [854, 480] and differs[2] > 1000
    page.fill("#slider", "62")  # the divider across the runner: coarse on its left, refined on its right
    shot = os.environ.get("CASCADEPSP_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)


def test_page_paints_a_mask_and_reports_errors(server, page):
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.set_input_files("#image", str(PHOTO))
    assert _submit(page) == "error"
    assert page.inner_text("#status") == "choose a mask file or paint one on the photo"

    page.fill("#brush", "60")  # photo pixels
    box = page.locator("#paint-view").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.58, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    for k in range(1, 13):  # a stroke down the runner (x 0.45-0.75, y 0.16-0.85 of the photo)
        page.mouse.move(box["x"] + box["width"] * 0.58, box["y"] + box["height"] * (0.2 + 0.05 * k))
    page.mouse.up()
    assert page.inner_text("#mask-source") == "mask: painted"
    page.check("#fast")
    page.fill("#L", "256")
    page.fill("#threshold", "0.5")
    _refine(page)
    shown = _shown_mask(page)
    assert shown.shape == (480, 854) and set(np.unique(shown)) <= {0, 255} and (shown == 255).sum() > 500

    page.fill("#L", "10")
    assert _submit(page) == "error"
    assert page.inner_text("#status") == "422: L: expected an integer >= 72, got 10"
