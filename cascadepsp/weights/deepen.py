"""Grow a trained refiner into a deeper encoder of the same family without changing what it computes.

EfficientNet-Lite1 is Lite0 with one more residual block at the end of five stages (same widths). Copying
every tensor of a trained Lite0 refiner and starting each extra block from ImageNet with its last batch norm
zeroed (the "zero-init residual" of Goyal et al., 2017) makes the block an identity, so the deeper network
starts exactly where the trained one is and training can use the new depth from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..models.refinement import RefinementModule
from .imagenet import load_imagenet_encoder


def _block_prefixes(new_keys: list[str]) -> list[str]:
    """``feats.encoder.blocks.S.B`` of every key the source lacks (they must all sit inside encoder blocks)."""
    prefixes: list[str] = []
    for key in new_keys:
        parts = key.split(".")
        if len(parts) < 6 or parts[:3] != ["feats", "encoder", "blocks"]:
            raise ValueError(f"deepen: {key} is not in an encoder block; only extra encoder blocks can be added")
        prefix = ".".join(parts[:5])
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def deepen_state(source: Mapping[str, Tensor], target: RefinementModule) -> dict[str, Tensor]:
    """A state dict for ``target`` that computes what ``source`` (a shallower network's state) computes.

    ``target`` supplies the extra blocks' weights (ImageNet-initialise it first); every tensor of ``source``
    must exist in ``target`` with the same shape, and every extra block must be residual (input = output
    shape), so zeroing its last batch norm turns it into the identity.
    """
    state = {k: v.detach().clone() for k, v in target.state_dict().items()}
    for key, value in source.items():
        if key not in state:
            raise ValueError(f"deepen: {key} of the source has no place in the target network")
        if state[key].shape != value.shape:
            raise ValueError(f"deepen: {key} is {tuple(value.shape)} in the source, "
                             f"{tuple(state[key].shape)} in the target")
        state[key] = value.detach().clone().to(state[key].dtype)
    for prefix in _block_prefixes([k for k in state if k not in source]):
        block = target.get_submodule(prefix)
        if not getattr(block, "has_skip", False):
            raise ValueError(f"deepen: the extra block {prefix} has no residual path, it cannot start as identity")
        norms = [name for name, m in block.named_modules() if isinstance(m, nn.BatchNorm2d)]
        last = f"{prefix}.{norms[-1]}"
        state[f"{last}.weight"] = torch.zeros_like(state[f"{last}.weight"])
        state[f"{last}.bias"] = torch.zeros_like(state[f"{last}.bias"])
    return state


def deepen_model(source: RefinementModule, backbone: str) -> RefinementModule:
    """``source`` grown into ``backbone`` (a deeper encoder of its family, e.g. ``efficientnet_lite1``): the same
    head and settings, the extra blocks from ImageNet (needs the ``train`` extra), the same outputs."""
    target = RefinementModule(dataclasses.replace(source.config, backbone=backbone))
    if not target.config.is_encoder:
        raise ValueError(f"deepen: {backbone} has no ImageNet encoder to grow into")
    load_imagenet_encoder(target.feats.encoder, target.feats.encoder_name)
    target.load_state_dict(deepen_state(source.state_dict(), target))
    return target.eval()
