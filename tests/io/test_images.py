"""Reading photos and masks in every supported form, and atomic writing (generated files only)."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from cascadepsp.io import atomic, images


def _photo(h: int = 30, w: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_and_inverts(tmp_path, orientation):
    base = _photo()
    im = Image.fromarray(base)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "p.png"  # lossless, so pixel equality is exact
    im.save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    rgb, header = images.read_image(path)
    assert header.orientation == orientation and header.stored_size == (50, 30)
    assert rgb.shape[1::-1] == header.size
    np.testing.assert_array_equal(rgb, expected)
    np.testing.assert_array_equal(images.unorient(rgb, orientation), base)


def test_16bit_gray_and_colour_png_scale_by_257_with_rounding(tmp_path):
    a = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), a)
    rgb, _ = images.read_image(tmp_path / "g.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(rgb[:, :, 0], np.round(a / 257).astype(np.uint8))
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()
    bgr = np.stack([a, a[::-1], 65535 - a], axis=-1)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    rgb, _ = images.read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(rgb, np.round(bgr[:, :, ::-1] / 257).astype(np.uint8))
    bgra = np.concatenate([bgr, np.full_like(a, 1000)[:, :, None]], axis=-1)  # 16-bit with alpha: alpha dropped
    cv2.imwrite(str(tmp_path / "ca.png"), bgra)
    rgb, _ = images.read_image(tmp_path / "ca.png")
    np.testing.assert_array_equal(rgb, np.round(bgr[:, :, ::-1] / 257).astype(np.uint8))


def test_gray_rgba_palette_photos_become_rgb(tmp_path):
    gray = _photo()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb, _ = images.read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(rgb, np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.concatenate([_photo(), np.zeros((30, 50, 1), np.uint8)], axis=2)
    rgba[:10, :, 3] = 255  # partly transparent: the stored colour is kept, alpha is dropped
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb, _ = images.read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(rgb, rgba[:, :, :3])

    pal = Image.fromarray(gray // 64, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    pal.save(tmp_path / "p.png")
    rgb, _ = images.read_image(tmp_path / "p.png")
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(rgb, colours[gray // 64])


def test_corrupt_truncated_and_missing_images_raise_with_reason(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(images.ImageReadError, match="cannot read image"):
        images.read_image(tmp_path / "junk.jpg")
    cv2.imwrite(str(tmp_path / "full.jpg"), _photo(200, 200))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(images.ImageReadError, match="truncated"):
        images.read_image(tmp_path / "cut.jpg")
    with pytest.raises(images.ImageReadError, match="No such file|FileNotFound"):
        images.read_image(tmp_path / "nope.png")
    assert not images.is_valid_image(tmp_path / "cut.jpg")
    assert images.is_valid_image(tmp_path / "full.jpg", (200, 200))
    assert not images.is_valid_image(tmp_path / "full.jpg", (200, 199))


def _blob(h: int = 40, w: int = 60) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[8:30, 10:45] = True
    return m


def test_palette_mask_uses_indices_not_colours(tmp_path):
    ids = np.zeros((40, 60), np.uint8)
    ids[5:20, 5:25] = 1
    ids[22:35, 30:55] = 7
    im = Image.fromarray(ids, "P")
    pal = [0] * 768
    pal[3:6] = [0, 0, 0]  # index 1 is drawn black: still an object
    pal[21:24] = [10, 200, 30]
    im.putpalette(pal)
    im.save(tmp_path / "m.png")
    mf = images.read_mask(tmp_path / "m.png")
    assert mf.kind == "palette"
    np.testing.assert_array_equal(mf.binary(), ids != 0)
    np.testing.assert_array_equal(mf.label_ids(), ids)
    out = tmp_path / "o.png"
    out.write_bytes(mf.encode_labels(ids[::-1].copy()))
    back = Image.open(out)
    assert back.mode == "P" and back.getpalette()[:24] == im.getpalette()[:24]
    np.testing.assert_array_equal(np.asarray(back), ids[::-1])


def test_jpeg_mask_is_thresholded_at_128(tmp_path):
    m = _blob()
    cv2.imwrite(str(tmp_path / "m.jpg"), m.astype(np.uint8) * 255, [cv2.IMWRITE_JPEG_QUALITY, 60])
    mf = images.read_mask(tmp_path / "m.jpg")
    raw = np.asarray(Image.open(tmp_path / "m.jpg").convert("L"))
    assert mf.kind == "jpeg" and not np.isin(raw, [0, 255]).all()  # JPEG really did blur the values
    np.testing.assert_array_equal(mf.binary(), raw >= 128)
    assert (mf.binary() == m).mean() > 0.98
    with pytest.raises(images.ImageReadError, match="JPEG"):
        mf.label_ids()


@pytest.mark.parametrize("values, dtype, expected_fg", [
    ((0, 1), np.uint8, 1), ((0, 255), np.uint8, 255), ((0, 127, 128), np.uint8, 128),
    ((0, 65535), np.uint16, 65535), ((0, 255), np.uint16, 255), ((0, 32767, 32768), np.uint16, 32768),
])
def test_gray_masks_threshold_at_half_the_range_in_use(tmp_path, values, dtype, expected_fg):
    arr = np.array(values, dtype)[np.arange(60) % len(values)].reshape(6, 10)
    cv2.imwrite(str(tmp_path / "m.png"), arr)
    mf = images.read_mask(tmp_path / "m.png")
    assert mf.kind == "gray" and mf.bits == (16 if dtype == np.uint16 else 8)
    np.testing.assert_array_equal(mf.binary(), arr >= expected_fg)


def test_rgba_cutout_rgb_gray_and_colour_masks(tmp_path):
    m = _blob()
    cut = np.zeros((40, 60, 4), np.uint8)
    cut[..., :3] = 90
    cut[..., 3] = m * 255
    Image.fromarray(cut, "RGBA").save(tmp_path / "cut.png")
    mf = images.read_mask(tmp_path / "cut.png")
    assert mf.kind == "alpha"
    np.testing.assert_array_equal(mf.binary(), m)

    Image.fromarray(np.repeat((m * 255).astype(np.uint8)[:, :, None], 3, axis=2)).save(tmp_path / "g.png")
    mf = images.read_mask(tmp_path / "g.png")
    assert mf.kind == "gray"
    np.testing.assert_array_equal(mf.binary(), m)

    col = np.zeros((40, 60, 3), np.uint8)
    col[m] = (64, 0, 0)  # dark red: a VOC-style class colour, darker than 128 in every channel
    col[:5, :5] = (0, 0, 200)
    Image.fromarray(col).save(tmp_path / "c.png")
    mf = images.read_mask(tmp_path / "c.png")
    assert mf.kind == "color"
    np.testing.assert_array_equal(mf.binary(), col.any(axis=2))
    ids = mf.label_ids()
    assert len(np.unique(ids)) == 3 and (ids[col.any(axis=2) == 0] == 0).all()
    (tmp_path / "o.png").write_bytes(mf.encode_labels(ids))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png").convert("RGB")), col)
    only_blue = np.zeros_like(col)
    only_blue[:5, :5] = (0, 0, 200)
    Image.fromarray(only_blue).save(tmp_path / "b.png")
    other = images.read_mask(tmp_path / "b.png")
    np.testing.assert_array_equal(other.label_ids_like(mf), np.where(only_blue.any(axis=2), ids[0, 0], 0))


def test_bilevel_and_16bit_label_maps_round_trip(tmp_path):
    m = _blob()
    Image.fromarray(m).save(tmp_path / "b.png")
    mf = images.read_mask(tmp_path / "b.png")
    assert mf.kind == "bilevel"
    np.testing.assert_array_equal(mf.binary(), m)
    ids = np.zeros((40, 60), np.uint16)
    ids[m] = 300
    ids[:4] = 2
    cv2.imwrite(str(tmp_path / "l16.png"), ids)
    mf = images.read_mask(tmp_path / "l16.png")
    (tmp_path / "o.png").write_bytes(mf.encode_labels(mf.label_ids()))
    back = cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, ids)


def test_write_atomic_leaves_old_file_or_new_file_never_partial(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "out.png"
    atomic.write_atomic(target, images.encode_png(np.zeros((8, 8), np.uint8)))
    old = target.read_bytes()

    def boom(src, dst):
        raise OSError("disk unplugged")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="unplugged"):
        atomic.write_atomic(target, images.encode_png(np.full((8, 8), 255, np.uint8)))
    assert target.read_bytes() == old
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]  # the temporary file was removed


def test_remove_stale_temps_only_removes_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "a").mkdir()
    stale = tmp_path / "a" / f"x.png.tmp-{dead_pid}.png"
    stale.write_bytes(b"half")
    mine = tmp_path / f"y.png.tmp-{os.getpid()}.png"
    mine.write_bytes(b"in progress")
    keep = tmp_path / "z.png"
    keep.write_bytes(b"a real output")
    removed = atomic.remove_stale_temps(tmp_path)
    assert removed == [stale] and not stale.exists() and mine.exists() and keep.exists()
    assert atomic.is_temp_file(mine) and not atomic.is_temp_file(keep)
