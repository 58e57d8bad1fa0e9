"""BCE + Dice, as the official VM-UNet(V2) ``BceDiceLoss(wb=1, wd=1)``, for logits or probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BceDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - Dice)``.

    BCE is the mean over pixels; Dice is per sample ``(2*sum(p*t) + 1) / (sum(p) + sum(t) + 1)``
    averaged over the batch (smooth 1). ``output_kind`` says what the model returns, so the loss
    never applies a second sigmoid to probabilities: logits go through the numerically stable
    ``binary_cross_entropy_with_logits``; probabilities go through ``binary_cross_entropy``, which is
    ``nn.BCELoss`` of the official code (each log clamped at -100, the probabilities themselves
    untouched, so a confidently wrong pixel keeps its gradient), and Dice sees them unclamped too.
    """

    def __init__(self, output_kind: str, bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        if output_kind not in ("logits", "probabilities"):
            raise ValueError(f"output_kind must be 'logits' or 'probabilities', got {output_kind!r}")
        self.output_kind = output_kind
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        target = target.float()
        if self.output_kind == "logits":
            bce = F.binary_cross_entropy_with_logits(output, target)
            probabilities = torch.sigmoid(output)
        else:
            probabilities = output
            bce = F.binary_cross_entropy(probabilities, target)
        flat_p = probabilities.flatten(1)
        flat_t = target.flatten(1)
        dice = (2 * (flat_p * flat_t).sum(1) + 1) / (flat_p.sum(1) + flat_t.sum(1) + 1)
        return self.bce_weight * bce + self.dice_weight * (1 - dice.mean())
