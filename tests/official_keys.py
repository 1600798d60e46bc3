"""The official checkpoint's key names and shapes, written out from the reference document's key scheme
(section 1.3), independently of our model code, so a strict load really checks our module names."""

from __future__ import annotations

import torch

BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, ch: int, with_nbt: bool) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{e}": (() if e == "num_batches_tracked" else (ch,))
            for e in BN_ENTRIES if with_nbt or e != "num_batches_tracked"}


def official_shapes(with_nbt: bool = True) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {"feats.conv1.weight": (64, 6, 7, 7)}
    s.update(_bn("feats.bn1", 64, with_nbt))
    inplanes = 64
    for layer, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for i in range(blocks):
            p = f"feats.layer{layer}.{i}"
            s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            for j, ch in ((1, planes), (2, planes), (3, planes * 4)):
                s.update(_bn(f"{p}.bn{j}", ch, with_nbt))
            if i == 0:
                s[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                s.update(_bn(f"{p}.downsample.1", planes * 4, with_nbt))
            inplanes = planes * 4
    for k in range(4):
        s[f"psp.stages.{k}.1.weight"] = (2048, 2048, 1, 1)
    s["psp.bottleneck.weight"] = (1024, 10240, 1, 1)
    s["psp.bottleneck.bias"] = (1024,)
    for name, x_ch, in_ch, out in (("up_1", 1024, 1280, 512), ("up_2", 512, 576, 256), ("up_3", 256, 259, 32)):
        s.update(_bn(f"{name}.conv.0", in_ch, with_nbt))
        s[f"{name}.conv.2.weight"], s[f"{name}.conv.2.bias"] = (out, in_ch, 3, 3), (out,)
        s.update(_bn(f"{name}.conv.3", out, with_nbt))
        s[f"{name}.conv.5.weight"], s[f"{name}.conv.5.bias"] = (out, out, 3, 3), (out,)
        for j in (0, 3):
            s.update(_bn(f"{name}.conv2.{j}", out, with_nbt))
        for j in (2, 5):
            s[f"{name}.conv2.{j}.weight"], s[f"{name}.conv2.{j}.bias"] = (out, out, 3, 3), (out,)
        s[f"{name}.shortcut.weight"], s[f"{name}.shortcut.bias"] = (out, x_ch, 1, 1), (out,)
    for name, cin in (("final_28", 1024), ("final_56", 512)):
        s[f"{name}.0.weight"], s[f"{name}.0.bias"] = (32, cin, 1, 1), (32,)
        s[f"{name}.2.weight"], s[f"{name}.2.bias"] = (1, 32, 1, 1), (1,)
    s["final_11.weight"], s["final_11.bias"] = (32, 35, 1, 1), (32,)
    s["final_21.weight"], s["final_21.bias"] = (1, 32, 1, 1), (1,)
    return s


def synthetic_official_state(seed: int = 0, with_nbt: bool = True, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Random tensors under the official names; BN variances positive, counters int64 like PyTorch's."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(with_nbt).items():
        if key.endswith("num_batches_tracked"):
            t = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(".weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            t = torch.randn(shape, generator=g) * 0.05
        else:  # BN weight
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        state[prefix + key] = t
    return state
