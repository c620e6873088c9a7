"""Dice + cross-entropy loss that ignores unannotated pixels.

MONAI's :class:`~monai.losses.MaskedDiceLoss` gives the Dice term with a mask;
the cross-entropy term is PyTorch's, with ``ignore_index`` for the pixels that
carry no annotation and an optional per-pixel weight map (the U-Net paper's
border weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -1
"""Target value of pixels that the loss ignores (unannotated scribble pixels, padding)."""


class DiceCELoss(nn.Module):
    """``dice_weight * Dice + ce_weight * CE`` over the annotated pixels.

    Parameters
    ----------
    dice_weight, ce_weight
        Weights of the two terms.

    Call with ``logits`` (B, K, H, W) float, ``target`` (B, H, W) int64 with
    values in 0..K-1 or :data:`IGNORE`, and optionally ``pixel_weight``
    (B, H, W) float multiplying each pixel's cross-entropy.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        from monai.losses import MaskedDiceLoss  # imported here: prediction never needs it

        # batch=True pools the Dice statistics over the batch, so a class absent
        # from one patch does not make that patch's Dice undefined.
        self.dice = MaskedDiceLoss(
            include_background=True, to_onehot_y=False, softmax=True, batch=True
        )

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        pixel_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = logits.float()
        annotated = target != IGNORE
        loss = logits.new_zeros(())
        if self.ce_weight:
            ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
            if pixel_weight is not None:
                ce = ce * pixel_weight
            loss = loss + self.ce_weight * ce.sum() / annotated.sum().clamp(min=1)
        if self.dice_weight:
            # One-hot here rather than in MONAI: its masking zeroes the index map,
            # which would count every ignored pixel as background.
            safe_target = torch.where(annotated, target, 0)
            onehot = F.one_hot(safe_target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
            mask = annotated.unsqueeze(1).to(logits.dtype)
            loss = loss + self.dice_weight * self.dice(logits, onehot, mask=mask)
        return loss
