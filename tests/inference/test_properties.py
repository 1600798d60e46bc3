"""Property-based tests of ``Refiner.refine`` / ``refine_probability`` over the inputs users pass.

Hypothesis draws shapes from 1x1 to thin strips (1xN, Nx1, 2xN) and sizes that are not multiples of 8, every
accepted dtype and value range, memory layouts (strided, Fortran order, read-only) and PIL / torch inputs.
Invariants: a result of the input's height and width (uint8 0-255 or float32 in [0, 1]), or a one-line
``ValueError``/``TypeError`` naming the argument; empty -> 0 and full -> 255 without the network; determinism.
A small ``L`` keeps each example cheap: the invariants do not depend on it. Seeded (``derandomize``) and
bounded, so CI runs the same examples every time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cascadepsp import Refiner
from cascadepsp.inference.refiner import check_L

SMALL_L = check_L(160)  # small, yet its local-step stride (L/2 - 32) keeps a long strip to a few windows
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def refiner() -> Refiner:
    return Refiner(device="cpu")


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int]:
    """1x1 up to 97x97 photos, and strips far thinner than they are long (both orientations)."""
    kind = draw(st.sampled_from(["any", "strip", "strip"]))
    if kind == "any":
        return draw(st.integers(1, 97)), draw(st.integers(1, 97))
    thin, long = draw(st.integers(1, 3)), draw(st.integers(2, 700))  # long / L > thin: the global step's cut
    return (thin, long) if draw(st.booleans()) else (long, thin)


def _image(rng: np.random.Generator, h: int, w: int, kind: str):
    """A photo of ``kind`` (dtype / layout / container) with the content of one uint8 RGB array."""
    u8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "uint8":
        return u8
    if kind == "uint16":
        return u8.astype(np.uint16) * 257
    if kind == "float32":
        return u8.astype(np.float32) / 255
    if kind == "float64":
        return u8.astype(np.float64) / 255
    if kind == "gray":
        return u8[..., 0]
    if kind == "fortran":
        return np.asfortranarray(u8)
    if kind == "strided":
        big = np.zeros((2 * h, w, 3), np.uint8)
        big[::2] = u8
        return big[::2]
    if kind == "readonly":
        u8.setflags(write=False)
        return u8
    if kind == "pil":
        return Image.fromarray(u8)
    if kind == "torch_chw":
        return torch.from_numpy(u8).permute(2, 0, 1).contiguous()
    raise AssertionError(kind)


def _mask(fg: np.ndarray, kind: str):
    """The boolean foreground ``fg`` encoded as a mask of ``kind``."""
    if kind == "bool":
        return fg
    if kind == "01":
        return fg.astype(np.uint8)
    if kind == "0255":
        return fg.astype(np.uint8) * 255
    if kind == "soft":  # a soft 0-255 mask whose foreground is >= 128
        return np.where(fg, 200, 60).astype(np.uint8)
    if kind == "float":
        return np.where(fg, 0.9, 0.1).astype(np.float32)
    if kind == "hw1":
        return (fg.astype(np.uint8) * 255)[..., None]
    if kind == "1hw":
        return (fg.astype(np.uint8) * 255)[None]
    if kind == "pil":
        return Image.fromarray(fg.astype(np.uint8) * 255)
    if kind == "torch":
        return torch.from_numpy(fg.astype(np.float32))
    raise AssertionError(kind)


IMAGE_KINDS = ["uint8", "uint16", "float32", "float64", "gray", "fortran", "strided", "readonly", "pil", "torch_chw"]
MASK_KINDS = ["bool", "01", "0255", "soft", "float", "hw1", "1hw", "pil", "torch"]


@PROPERTY
@given(shape=shapes(), image_kind=st.sampled_from(IMAGE_KINDS), mask_kind=st.sampled_from(MASK_KINDS),
       seed=st.integers(0, 2**16), fast=st.booleans())
def test_refine_keeps_the_size_and_range_and_is_deterministic(refiner, shape, image_kind, mask_kind, seed, fast):
    h, w = shape
    rng = np.random.default_rng(seed)
    fg = np.zeros((h, w), bool)
    fg[: max(1, h // 2), : max(1, (w + 1) // 2)] = True  # a corner block: mixed unless the photo is 1x1
    image, mask = _image(rng, h, w, image_kind), _mask(fg, mask_kind)
    out = refiner.refine(image, mask, fast=fast, L=SMALL_L)
    assert out.shape == (h, w) and out.dtype == np.uint8
    prob = refiner.refine_probability(image, mask, fast=fast, L=SMALL_L)
    assert prob.shape == (h, w) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0
    np.testing.assert_array_equal(out, (prob * 255).astype(np.uint8))  # deterministic, and refine == prob * 255
    if fg.all():
        assert (out == 255).all()


@PROPERTY
@given(shape=shapes(), full=st.booleans(), mask_kind=st.sampled_from(["bool", "01", "0255", "float", "torch"]))
def test_empty_and_full_masks_skip_the_network(shape, full, mask_kind):
    class Exploding(torch.nn.Module):
        def forward(self, *args):
            raise AssertionError("the network ran for an empty or full mask")

    refiner = Refiner(device="cpu", weights=Exploding())
    h, w = shape
    image = np.full((h, w, 3), 128, np.uint8)
    out = refiner.refine(image, _mask(np.full((h, w), full), mask_kind), L=SMALL_L)
    assert out.shape == (h, w)
    assert (out == (255 if full else 0)).all()


BAD_INPUTS = [
    # (image, mask, exception, the argument the message must name)
    (np.zeros((0, 5, 3), np.uint8), np.zeros((0, 5), bool), ValueError, "image"),
    (np.zeros((4, 5, 4), np.uint8), np.ones((4, 5), bool), ValueError, "image"),
    (np.zeros((4, 5, 3), np.int64), np.ones((4, 5), bool), ValueError, "image"),
    (np.full((4, 5, 3), np.nan, np.float32), np.ones((4, 5), bool), ValueError, "image"),
    (np.full((4, 5, 3), 2.0, np.float32), np.ones((4, 5), bool), ValueError, "image"),
    (np.zeros((4, 5), bool), np.ones((4, 5), bool), ValueError, "image"),
    ("photo.jpg", np.ones((4, 5), bool), ValueError, "image"),
    (np.zeros((4, 5, 3), np.uint8), np.ones((5, 4), bool), ValueError, "mask"),
    (np.zeros((4, 5, 3), np.uint8), np.ones((4, 5, 3), np.uint8), ValueError, "mask"),
    (np.zeros((4, 5, 3), np.uint8), np.full((4, 5), np.nan, np.float32), ValueError, "mask"),
    (np.zeros((4, 5, 3), np.uint8), np.full((4, 5), -1.0, np.float32), ValueError, "mask"),
    (np.zeros((4, 5, 3), np.uint8), None, ValueError, "mask"),
]


@pytest.mark.parametrize(("image", "mask", "error", "argument"), BAD_INPUTS)
def test_bad_inputs_get_one_line_naming_the_argument(refiner, image, mask, error, argument):
    with pytest.raises(error) as info:
        refiner.refine(image, mask, L=SMALL_L)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{argument}:"), message


@PROPERTY
@given(L=st.one_of(st.integers(-5, 71), st.floats(72, 200), st.booleans(), st.text(max_size=3)),
       threshold=st.one_of(st.none(), st.floats(-1, 2).filter(lambda t: not 0 <= t <= 1)))
def test_bad_L_and_threshold_are_refused_with_one_line(refiner, L, threshold):
    image, mask = np.zeros((6, 6, 3), np.uint8), np.eye(6, dtype=bool)
    with pytest.raises(ValueError) as info:
        refiner.refine(image, mask, L=L, threshold=0.5 if threshold is None else threshold)
    message = str(info.value)
    assert "\n" not in message and message.split(":")[0] in ("L", "threshold"), message


# ------------------------------------------------------------------ the folder tool over damaged files

DAMAGE = ["ok", "zero_bytes", "truncated_png", "truncated_jpeg", "text_as_png", "jpeg_behind_png", "directory",
          "bad_mask", "mask_wrong_size"]
NAMES = st.text(alphabet=st.sampled_from(list("aZ09 _-.éß漢()[]'")), min_size=1, max_size=12).filter(
    lambda n: n.strip(". ") == n and not n.startswith("-") and "_im" not in n and "_seg" not in n)


def _write_damaged(folder, name: str, damage: str, rng: np.random.Generator) -> None:
    """``<name>_im`` + ``<name>_seg`` in ``folder``, with the image or mask damaged as ``damage`` says."""
    import cv2

    h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    photo = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    png = cv2.imencode(".png", photo)[1].tobytes()
    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
    im, seg = folder / f"{name}_im.png", folder / f"{name}_seg.png"
    data = {"zero_bytes": b"", "truncated_png": png[: len(png) // 2], "truncated_jpeg": jpeg[: len(jpeg) // 2],
            "text_as_png": b"this is not a picture\n", "jpeg_behind_png": jpeg}.get(damage, png)
    if damage == "directory":
        im.mkdir()
    else:
        im.write_bytes(data)
    if damage == "bad_mask":
        seg.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    else:
        seg.write_bytes(cv2.imencode(".png", mask if damage != "mask_wrong_size" else mask[: h // 2])[1].tobytes())


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(files=st.dictionaries(NAMES, st.sampled_from(DAMAGE), min_size=1, max_size=5), seed=st.integers(0, 99))
def test_folder_run_over_damaged_files_reports_each_and_writes_only_whole_outputs(files, seed):
    import tempfile
    from pathlib import Path

    from folder_fixtures import ImageRefiner, no_temp_files, read_csv

    from cascadepsp.io import images
    from cascadepsp.jobs.folder import refine_folder
    from cascadepsp.jobs.pairing import NoInputsError

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        for name, damage in files.items():
            _write_damaged(src, name, damage, rng)
        before = {p: (p.read_bytes() if p.is_file() else None) for p in src.rglob("*")}
        if set(files.values()) == {"directory"}:  # only folders named like photos: nothing to refine, one line
            with pytest.raises(NoInputsError, match="no images found"):
                refine_folder([src], out, refiner=ImageRefiner(), progress=False)
            assert not out.exists()
            return
        summary = refine_folder([src], out, refiner=ImageRefiner(), report=Path(tmp) / "r.csv", progress=False)
        rows = {r["name"]: r for r in read_csv(Path(tmp) / "r.csv")}
        assert {p: (p.read_bytes() if p.is_file() else None) for p in src.rglob("*")} == before  # inputs untouched
        assert no_temp_files(out) if out.exists() else True
        readable = {"ok", "jpeg_behind_png"}  # a JPEG named .png decodes by its content
        for name, damage in files.items():
            if damage == "directory":
                assert name not in rows or rows[name]["status"] == "failed"
                continue
            row = rows[name]
            written = out / f"{name}_mask.png"
            if damage in readable:
                assert row["status"] == "done", row
                assert images.is_valid_image(written)
            else:
                assert row["status"] == "failed" and row["error"] and "\n" not in row["error"], row
                assert not written.exists()
        assert summary.count("failed") == sum(r["status"] == "failed" for r in rows.values())
