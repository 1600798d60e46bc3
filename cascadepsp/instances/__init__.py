"""Instances of one photo refined each in its own context crop, and the formats labelling pipelines keep them in
(COCO polygons / RLE, Segment Anything records, detectron2 ``pred_masks``, lists of arrays)."""

from .adapters import refine_mask_list, refine_pred_masks, refine_sam_masks
from .refine import refine_instances

__all__ = ["refine_instances", "refine_mask_list", "refine_pred_masks", "refine_sam_masks"]
