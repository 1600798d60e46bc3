"""PSPNet's training loss: cross-entropy on the main logits plus 0.4 x that of the auxiliary head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .augment import IGNORE_INDEX


def segmentation_loss(outputs: Tensor | tuple[Tensor, Tensor | None], target: Tensor, aux_weight: float = 0.4
                      ) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy (ignore 255) on the main logits plus ``aux_weight`` x that of the auxiliary logits."""
    main, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    main_loss = F.cross_entropy(main.float(), target, ignore_index=IGNORE_INDEX)
    total = main_loss
    parts = {"main": float(main_loss.detach())}
    if aux is not None and aux_weight > 0:
        aux_loss = F.cross_entropy(aux.float(), target, ignore_index=IGNORE_INDEX)
        total = total + aux_weight * aux_loss
        parts["aux"] = float(aux_loss.detach())
    return total, parts
