"""Clinical encoder: an MLP over the features and their missingness mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ClinicalEncoder", "mlp"]


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> LayerNorm -> GELU -> Dropout`` per hidden width, then ``Linear -> GELU``."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.LayerNorm(int(h)), nn.GELU(), nn.Dropout(dropout)]
        width = int(h)
    layers += [nn.Linear(width, out_dim), nn.GELU()]
    return nn.Sequential(*layers)


class ClinicalEncoder(nn.Module):
    """Encode ``F`` clinical features plus their 0/1 observed mask into ``out_dim``.

    The input of the MLP is ``[features * mask, mask]`` (``2 F`` numbers), so a
    missing value is seen as missing, not as a measured zero.

    Parameters
    ----------
    features_dim
        Number of clinical features ``F`` (118 in the reference design).
    hidden
        Hidden widths (reference: ``[256, 512, 256]``).
    out_dim
        Output width (reference: 128).
    dropout
        Dropout after each hidden layer.
    feature_dropout
        Training only: probability of hiding each observed value (it is then seen
        as missing). Regularizes a wide, mostly uninformative feature vector and
        teaches the encoder the gaps it meets at prediction time.
    """

    def __init__(
        self,
        features_dim: int = 118,
        hidden: Sequence[int] = (256, 512, 256),
        out_dim: int = 128,
        dropout: float = 0.1,
        feature_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(feature_dropout) < 1.0:
            raise ValueError(
                f"`clinical_feature_dropout` must be in [0, 1), got {feature_dropout}"
            )
        self.feature_dropout = float(feature_dropout)
        if int(features_dim) < 1:
            raise ValueError(f"`clinical_features_dim` must be >= 1, got {features_dim}")
        if int(out_dim) < 1 or any(int(h) < 1 for h in hidden):
            raise ValueError(
                f"`clinical_hidden` and `clinical_out_dim` must be positive, got {list(hidden)} "
                f"and {out_dim}"
            )
        self.features_dim = int(features_dim)
        self.out_dim = int(out_dim)
        self.mlp = mlp(2 * self.features_dim, hidden, self.out_dim, dropout)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, F)`` features and ``(B, F)`` mask (1 = observed) -> ``(B, out_dim)``.

        Without a mask, non-finite values count as missing.
        """
        if features.ndim != 2 or features.shape[1] != self.features_dim:
            raise ValueError(
                f"`clinical_features` must have shape (B, {self.features_dim}), got "
                f"{tuple(features.shape)}; the network was built for {self.features_dim} "
                "clinical features (InputSpec.n_features): build it from the data's spec"
            )
        if mask is None:
            mask = torch.isfinite(features)
        mask = mask.to(features.dtype)
        if mask.shape != features.shape:
            raise ValueError(
                f"`clinical_mask` must have the shape of `clinical_features` "
                f"{tuple(features.shape)}, got {tuple(mask.shape)}"
            )
        if self.training and self.feature_dropout > 0:
            keep = torch.rand_like(mask) >= self.feature_dropout
            mask = mask * keep.to(mask.dtype)
        observed = torch.where(mask > 0, features, torch.zeros_like(features))
        return self.mlp(torch.cat([observed, mask], dim=1))
