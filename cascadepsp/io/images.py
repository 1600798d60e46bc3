"""Read photos and masks from disk the same way every time, and write outputs atomically.

Photos become upright HxWx3 uint8 RGB: the EXIF orientation is applied; 16-bit data is scaled to 8 bits with
rounding (v / 257); grayscale is replicated to three channels; an alpha channel is dropped (the stored colour
is kept, as OpenCV's ``imread`` and the original's PIL ``convert("RGB")`` do); palette photos use their colours.

Masks are data, not photos: their pixel values are read as stored (palette *indices*, not colours; no EXIF
rotation) and :class:`MaskFile` says how to turn them into a binary mask or a label map.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .inputs import to_rgb_uint8

PathLike = str | os.PathLike

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jpg", ".jpeg")  # lossless formats first
_EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """A file could not be read as an image or mask; the message says why."""


# ---------------------------------------------------------------------------------------------- orientation

def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF ``orientation`` (1-8) to an HxW[xC] array: stored pixels -> the upright picture."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(ops.get(orientation, ops[1])(arr))


def unorient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Inverse of :func:`orient`: the upright picture -> the stored pixel layout."""
    inverse = {6: 8, 8: 6}.get(orientation, orientation)  # every other EXIF transform is its own inverse
    return orient(arr, inverse)


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(W, H) of the upright picture for a stored (W, H) and an EXIF orientation."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


# -------------------------------------------------------------------------------------------------- photos

@dataclass(frozen=True)
class ImageHeader:
    """What a photo's header says: stored size (W, H) and EXIF orientation (1 when absent or invalid)."""

    stored_size: tuple[int, int]
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the upright picture."""
        return oriented_size(self.stored_size, self.orientation)


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make the photo unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def read_image_header(path: str | os.PathLike) -> ImageHeader:
    """Size and orientation without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return ImageHeader(im.size, _orientation(im))
    except Exception as e:
        raise ImageReadError(f"cannot read image header: {_reason(e)}") from e


def _png_bit_depth(path: str | os.PathLike) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _is_16bit_colour(im: Image.Image, path: str | os.PathLike) -> bool:
    """Pillow decodes 16-bit colour PNG/TIFF to 8 bits by truncation; such files are decoded with OpenCV instead."""
    if im.mode not in ("RGB", "RGBA"):
        return False
    if im.format == "PNG":
        return _png_bit_depth(path) == 16
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        return bits is not None and max(bits if isinstance(bits, tuple) else (bits,)) == 16
    return False


def _decode_16bit_colour(path: str | os.PathLike) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # UNCHANGED: keeps 16 bits and ignores EXIF (applied by us)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        raise ImageReadError("cannot decode 16-bit colour image")
    return to_rgb_uint8(arr[:, :, :3], bgr=True)


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageReadError(f"unsupported {mode} image with values in [{lo}, {hi}]")
        return to_rgb_uint8(arr.astype(np.uint16))
    if mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB"))  # alpha (RGBA, LA, PA, palette transparency) is dropped
    raise ImageReadError(f"unsupported image mode {mode}")


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageHeader]:
    """Decode a photo as upright HxWx3 uint8 RGB; also returns its header (stored size, orientation)."""
    try:
        with Image.open(path) as im:
            header = ImageHeader(im.size, _orientation(im))
            if _is_16bit_colour(im, path):
                rgb = _decode_16bit_colour(path)
            else:
                im.load()
                rgb = _pil_to_rgb(im)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"cannot read image: {_reason(e)}") from e
    if rgb.shape[1::-1] != header.stored_size:
        raise ImageReadError(f"decoded size {rgb.shape[1]}x{rgb.shape[0]} differs from header size "
                             f"{header.stored_size[0]}x{header.stored_size[1]}")
    return orient(rgb, header.orientation), header


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --------------------------------------------------------------------------------------------------- masks

@dataclass
class MaskFile:
    """A mask as stored on disk, with the rule that turns it into a binary mask or a label map.

    ``kind``: ``"bilevel"`` (1-bit), ``"palette"`` (values are palette indices), ``"gray"`` (8/16-bit
    lossless), ``"jpeg"`` (lossy grayscale), ``"alpha"`` (RGBA/LA cut-out; the alpha channel is the mask),
    ``"color"`` (RGB colours; ``colors[i]`` is the colour of id ``i``, black is id 0).
    """

    values: np.ndarray  # HxW integers in the stored pixel frame
    kind: str
    bits: int = 8
    palette: list[int] | None = None
    transparency: int | bytes | None = None
    colors: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.values.shape[1], self.values.shape[0]

    def binary(self) -> np.ndarray:
        """HxW bool foreground, by the rule of :attr:`kind` (see the module docs and README)."""
        v = self.values
        if self.kind in ("bilevel", "palette", "color"):
            return v != 0
        if self.kind in ("jpeg", "alpha"):
            return v >= 128
        hi = int(v.max())
        if hi <= 1:  # a 0/1 mask
            return v > 0
        return v >= 128 if hi <= 255 else v >= 32768  # half of the range in use: 0-255 or 0-65535

    def soft(self) -> np.ndarray:
        """HxW uint8 0-255 foreground strength, consistent with :meth:`binary`: ``soft() >= 128 == binary()``."""
        v = self.values
        if self.kind in ("bilevel", "palette", "color"):
            return np.where(v != 0, 255, 0).astype(np.uint8)
        if self.kind in ("jpeg", "alpha"):
            return v.astype(np.uint8)
        hi = int(v.max())
        if hi <= 1:
            return (v * 255).astype(np.uint8)
        if hi <= 255:
            return v.astype(np.uint8)
        return ((v.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # rounds; >= 128 iff v >= 32768

    def label_ids(self) -> np.ndarray:
        """HxW int32 object ids (0 = background); refuses lossy or cut-out masks."""
        if self.kind == "jpeg":
            raise ImageReadError("label maps must be stored losslessly (PNG); JPEG changes the ids")
        if self.kind == "alpha":
            raise ImageReadError("an RGBA cut-out is a binary mask, not a label map")
        return self.values.astype(np.int32)

    def label_ids_like(self, reference: MaskFile) -> np.ndarray:
        """:meth:`label_ids` numbered like ``reference``: colour label maps are matched by colour, not order."""
        ids = self.label_ids()
        if self.kind != "color" or reference.kind != "color":
            return ids
        ref = {tuple(c): i for i, c in enumerate(reference.colors.tolist())}
        extra = len(ref)
        lut = np.empty(len(self.colors), np.int32)
        for i, c in enumerate(self.colors.tolist()):
            if tuple(c) not in ref:
                ref[tuple(c)], extra = extra, extra + 1
            lut[i] = ref[tuple(c)]
        return lut[ids]

    def encode_labels(self, ids: np.ndarray) -> bytes:
        """PNG bytes of label map ``ids`` stored like this file (same palette, colours or bit depth)."""
        if ids.shape != self.values.shape:
            raise ValueError(f"ids: expected shape {self.values.shape}, got {ids.shape}")
        if self.kind == "palette":
            im = Image.fromarray(ids.astype(np.uint8), mode="P")
            palette = list(self.palette or [])
            need = 3 * (int(ids.max()) + 1)  # Pillow sizes the PNG bit depth by the palette: keep every id
            im.putpalette(palette + [0] * max(0, need - len(palette)))
            extra = {} if self.transparency is None else {"transparency": self.transparency}
            return _pil_png(im, **extra)
        if self.kind == "color":
            return encode_png(np.ascontiguousarray(self.colors[ids][:, :, ::-1]))  # cv2 wants BGR
        if self.kind == "bilevel":
            return _pil_png(Image.fromarray(ids.astype(bool)))
        dtype = np.uint16 if self.bits == 16 or int(ids.max()) > 255 else np.uint8
        return encode_png(ids.astype(dtype))


def read_mask_size(path: str | os.PathLike) -> tuple[int, int]:
    """(W, H) of a stored mask from its header (masks are never EXIF-rotated)."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise ImageReadError(f"cannot read mask header: {_reason(e)}") from e


def read_mask(path: str | os.PathLike) -> MaskFile:
    """Decode a mask file as stored (no EXIF rotation) into a :class:`MaskFile`."""
    try:
        with Image.open(path) as im:
            im.load()
            return _mask_from_pil(im)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"cannot read mask: {_reason(e)}") from e


def _mask_from_pil(im: Image.Image) -> MaskFile:
    mode = im.mode
    if im.format == "JPEG":
        return MaskFile(np.asarray(im.convert("L")), "jpeg")
    if mode == "1":
        return MaskFile(np.asarray(im).astype(np.uint8), "bilevel", bits=1)
    if mode == "P":
        transparency = im.info.get("transparency")
        return MaskFile(np.asarray(im), "palette", palette=im.getpalette(), transparency=transparency)
    if mode == "L":
        return MaskFile(np.asarray(im), "gray")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageReadError(f"unsupported {mode} mask with values in [{lo}, {hi}]")
        return MaskFile(arr.astype(np.uint16), "gray", bits=16)
    if mode in ("LA", "PA", "RGBA"):
        alpha = np.asarray(im.getchannel("A"))
        if int(alpha.min()) < 255:  # a cut-out: the transparency is the mask
            return MaskFile(alpha, "alpha")
        if mode == "LA":
            return MaskFile(np.asarray(im.getchannel("L")), "gray")
        if mode == "PA":
            return MaskFile(np.ascontiguousarray(np.asarray(im)[:, :, 0]), "palette", palette=im.getpalette())
    if mode in ("RGB", "RGBX", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all():
            return MaskFile(np.ascontiguousarray(rgb[:, :, 0]), "gray")  # grayscale saved as RGB
        return _color_mask(rgb)
    raise ImageReadError(f"unsupported mask mode {mode}")


def _color_mask(rgb: np.ndarray) -> MaskFile:
    packed = (rgb[:, :, 0].astype(np.int32) << 16) | (rgb[:, :, 1].astype(np.int32) << 8) | rgb[:, :, 2]
    uniq, inverse = np.unique(packed, return_inverse=True)
    if uniq[0] != 0:  # make black id 0 even when no pixel is black
        uniq = np.concatenate([[0], uniq])
        inverse = inverse + 1
    colors = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1).astype(np.uint8)
    return MaskFile(inverse.reshape(rgb.shape[:2]).astype(np.int32), "color", colors=colors)


# ------------------------------------------------------------------------------------------------- writing

def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of an HxW (uint8/uint16) or HxWx3 BGR uint8 array."""
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an HxWx3 RGB uint8 array."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return buf.tobytes()


def _pil_png(im: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG", **params)
    return out.getvalue()


def is_valid_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> bool:
    """True when ``path`` fully decodes as an image (of ``size`` (W, H) when given)."""
    try:
        with Image.open(path) as im:
            if size is not None and im.size != tuple(size):
                return False
            im.load()
        return True
    except Exception:
        return False


def align_to_image(arr: np.ndarray, header: ImageHeader, what: str) -> tuple[np.ndarray, bool]:
    """A mask matching the upright photo is used as is; one matching the stored (raw) photo is rotated too."""
    size = (arr.shape[1], arr.shape[0])
    if size == header.size:
        return arr, False
    if size == header.stored_size:
        return orient(arr, header.orientation), True
    raise ValueError(f"{what} size {size[0]}x{size[1]} does not match image size {header.size[0]}x{header.size[1]}")


def fit_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) scaled down so the long side is at most ``max_side`` (unchanged when it already fits)."""
    if not max_side or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize_to(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``arr`` resized to ``size`` (h, w): area averaging when shrinking, bilinear when growing."""
    if arr.shape[:2] == tuple(size):
        return arr
    interp = cv2.INTER_AREA if size[0] < arr.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(arr), (size[1], size[0]), interpolation=interp)


def read_rgb(path: PathLike, max_side: int | None = None) -> tuple[np.ndarray, ImageHeader]:
    """Upright HxWx3 uint8 RGB (area-downscaled to long side ``max_side`` when given) and the photo's header."""
    try:
        rgb, header = read_image(path)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from e
    return resize_to(rgb, fit_size(*rgb.shape[:2], max_side)), header


def read_soft_mask(path: PathLike, header: ImageHeader, size: tuple[int, int] | None = None,
                   what: str = "mask") -> np.ndarray:
    """HxW uint8 0-255 mask in the photo's upright frame (see :meth:`MaskFile.soft`), resized to ``size``."""
    mf = _read_mask(path)
    soft, _ = align_to_image(mf.soft(), header, f"{what} {path}")
    return soft if size is None else resize_to(soft, size)


def read_label_ids(path: PathLike, header: ImageHeader | None = None) -> np.ndarray:
    """HxW int32 label ids (palette indices, grey values, colours numbered) in the photo's upright frame."""
    ids = _read_mask(path).label_ids()
    return ids if header is None else align_to_image(ids, header, f"mask {path}")[0]


def read_binary(path: PathLike, header: ImageHeader | None = None) -> np.ndarray:
    """HxW bool foreground (see :meth:`MaskFile.binary`) in the photo's upright frame."""
    fg = _read_mask(path).binary()
    return fg if header is None else align_to_image(fg, header, f"mask {path}")[0]


def _read_mask(path: PathLike) -> MaskFile:
    try:
        return read_mask(path)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from e
