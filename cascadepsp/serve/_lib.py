"""Every library-internal name the service uses, imported in this one place (public names are imported where
they are used). When the package's modules move, only these imports change."""

from __future__ import annotations

from ..coco import decode_segmentation, encode_segmentation, mask_api, refine_coco_annotations
from ..datasets import align_to_image
from ..imageio import (
    ImageReadError,
    encode_png,
    read_image,
    read_image_header,
    read_mask,
    read_mask_size,
    unorient,
)
from ..inputs import check_same_size
from ..instances import check_context
from ..refiner import check_L

__all__ = [
    "ImageReadError", "align_to_image", "check_L", "check_context", "check_same_size", "decode_segmentation",
    "encode_png", "encode_segmentation", "mask_api", "read_image", "read_image_header", "read_mask",
    "read_mask_size", "refine_coco_annotations", "unorient",
]
