"""Losses on the score: mse, mae, huber, bce, or a weighted sum of them.

All are computed in float32 with autocast switched off, from the network's
logits (BCE uses the stable ``binary_cross_entropy_with_logits``; the others
compare ``sigmoid(logits)`` with the target score).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gazimed_lab.config import LOSSES

__all__ = ["LOSSES", "ScoreLoss"]


class ScoreLoss(nn.Module):
    """Loss between logits ``(B,)`` and target scores ``(B,)`` in [0, 1].

    Parameters
    ----------
    kind
        ``mse`` (default), ``mae``, ``huber``, ``bce`` or ``weighted``.
    weights
        For ``weighted``: ``{loss name: weight}``, e.g. ``{"mse": 1.0, "bce": 0.1}``.
    huber_delta
        Huber transition point (on the score scale).
    """

    def __init__(
        self, kind: str = "mse", weights: Mapping[str, float] | None = None,
        huber_delta: float = 0.1,
    ) -> None:
        super().__init__()
        if kind not in (*LOSSES, "weighted"):
            raise ValueError(
                f"`optim.loss` must be one of {', '.join(LOSSES)}, weighted, got {kind!r}"
            )
        if kind == "weighted":
            if not weights:
                raise ValueError(
                    "`optim.loss_weights` must be a mapping like {mse: 1.0, bce: 0.1} when "
                    f"optim.loss is 'weighted', got {weights!r}"
                )
            bad = sorted(set(weights) - set(LOSSES))
            if bad:
                raise ValueError(
                    f"`optim.loss_weights` keys must be among {', '.join(LOSSES)}, got {bad}"
                )
            self.weights = {str(k): float(v) for k, v in weights.items()}
        else:
            self.weights = {kind: 1.0}
        if huber_delta <= 0:
            raise ValueError(f"`optim.huber_delta` must be > 0, got {huber_delta}")
        self.kind = kind
        self.huber_delta = float(huber_delta)

    def single(self, name: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One named loss (float32)."""
        if name == "bce":
            return F.binary_cross_entropy_with_logits(logits, targets)
        scores = torch.sigmoid(logits)
        if name == "mse":
            return F.mse_loss(scores, targets)
        if name == "mae":
            return F.l1_loss(scores, targets)
        return F.huber_loss(scores, targets, delta=self.huber_delta)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar float32 loss (targets must be finite; the LightningModule checks)."""
        if logits.shape != targets.shape:
            raise ValueError(
                f"`targets` must have the shape of the predictions {tuple(logits.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        device_type = logits.device.type if logits.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            logits = logits.float()
            targets = targets.float()
            total = logits.new_zeros(())
            for name, weight in self.weights.items():
                total = total + weight * self.single(name, logits, targets)
        return total
