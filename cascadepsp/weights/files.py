"""Weight files: our ``.safetensors`` with a JSON metadata header, and the official torch-pickle checkpoint.

Shared by the refiner and the PSPNet segmenter so both load weights the same way.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..io.atomic import write_atomic

FORMAT_KEY = "format"


def save_weights(state_dict: Mapping[str, Tensor], path: str | os.PathLike, *, model_format: str,
                 config: Mapping[str, Any], metadata: Mapping[str, Any] | None = None, half: bool = False) -> Path:
    """Write a state dict as safetensors, with ``config`` (architecture) and free metadata in the header.

    ``half=True`` stores floating tensors as fp16 (BN running stats included) to halve the file size.
    Written atomically (:func:`cascadepsp.io.images.write_atomic`).
    """
    path = Path(path)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value.contiguous()
    header = {FORMAT_KEY: model_format, "config": json.dumps(dict(config), sort_keys=True),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for key, value in (metadata or {}).items():
        header[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return write_atomic(path, safetensors_bytes(tensors, metadata=header))


def _unreadable(path: str | os.PathLike, kind: str, e: BaseException) -> ValueError:
    """One line naming the file, for a weights file that does not decode (corrupt, truncated, wrong format)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    reason = text if 0 < len(text) <= 120 else f"{type(e).__name__}: corrupt, truncated, another format, or objects weights_only refuses"
    return ValueError(f"{path}: not a readable {kind} ({reason})")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string header of a safetensors file (``config`` is JSON text)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise _unreadable(path, ".safetensors weights file", e) from e


def load_weights(path: str | os.PathLike, *, expected_format: str | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, str]]:
    """Read a safetensors weight file: returns ``(state_dict, config_dict, metadata)``.

    Floating tensors are cast to ``dtype`` (files may be stored in fp16).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    meta = read_metadata(path)
    fmt = meta.get(FORMAT_KEY)
    if expected_format is not None and fmt != expected_format:
        raise ValueError(f"{path}: weights are for {fmt!r}, expected {expected_format!r}")
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' entry in the safetensors metadata")
    state = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                state[key] = t.to(dtype) if t.is_floating_point() else t
    except Exception as e:
        raise _unreadable(path, ".safetensors weights file", e) from e
    return state, json.loads(meta["config"]), meta


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load an official-style torch checkpoint (plain state dict, possibly wrapped by DataParallel).

    Uses ``weights_only=True`` so a checkpoint cannot run code; strips a ``module.`` prefix only where present.
    """
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unreadable(path, "torch checkpoint", e) from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_state_tolerant(model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
    """``load_state_dict(strict=True)`` that also accepts checkpoints lacking BN ``num_batches_tracked``."""
    own = model.state_dict()
    state = dict(state)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    model.load_state_dict(state, strict=True)


# Config entries that record how a file predicts, not its architecture: averaging may mix them (the last file's win).
INFERENCE_CONFIG_KEYS = frozenset({"base_size", "crop_size", "threshold", "min_component_fraction", "scales",
                                   "local_fg_band", "edit_band", "second_pass_iou", "local_step"})


def average_weights(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """Mean of the floating tensors of several weight files of one architecture (e.g. checkpoints late in one
    run, as in stochastic weight averaging; BN running statistics are averaged too, integer buffers come
    from the last file). Returns ``(state_dict, config, format)``, the config being the last file's."""
    if len(paths) < 2:
        raise ValueError(f"paths: expected two or more weight files to average, got {len(paths)}")
    sums, config, meta = load_weights(paths[0])
    fmt, shapes = meta.get(FORMAT_KEY), {k: tuple(v.shape) for k, v in sums.items()}
    for path in paths[1:]:
        other, other_config, other_meta = load_weights(path)
        if other_meta.get(FORMAT_KEY) != fmt:
            raise ValueError(f"{path}: weights are for {other_meta.get(FORMAT_KEY)!r}, the first file's for {fmt!r}")
        differ = sorted(k for k in set(config) | set(other_config)
                        if config.get(k) != other_config.get(k) and k not in INFERENCE_CONFIG_KEYS)
        if differ or {k: tuple(v.shape) for k, v in other.items()} != shapes:
            raise ValueError(f"{path}: another architecture than {paths[0]} "
                             f"({'config ' + ', '.join(differ) if differ else 'tensor names or shapes'} differ)")
        for key, value in other.items():
            sums[key] = sums[key] + value if value.is_floating_point() else value
        config = other_config
    return {k: v / len(paths) if v.is_floating_point() else v for k, v in sums.items()}, config, fmt
