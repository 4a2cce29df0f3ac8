"""Cross-modal fusion: MRI tokens attend to PET tokens at several encoder stages.

At each fused stage the MRI feature map and the PET feature map (same MNI grid,
so token ``i`` of both covers the same brain region) are flattened to tokens,
projected to ``fusion_dim`` and given a fixed 3D sine-cosine position code. MRI
tokens are the queries; the keys/values are the PET tokens plus one learned
"absent" token. For a subject without PET the PET tokens are masked out, so its
MRI tokens attend to the absent token only: a missing PET is never read as an
image of zeros. The absent token is a key for every subject, so all parameters
take part in every step (no unused parameters under DDP).

Every brain in MNI space shares one anatomy, so at each token the encoder's
features differ between subjects by a few percent of their size; the common
anatomy dominates. Before fusion, each stage's features are standardized per
token and channel across subjects (batch statistics in training, running ones
in evaluation: a learned normative reference, like a W-score map of features).
Without this the image branch learned nothing on the demo cohort (train Pearson r
about 0 after 20 epochs); with it, r 0.88 on train and 0.38 held out after 200 steps.

Pooling the fused tokens of a stage to one vector must keep *where* a token is:
Alzheimer's effects are regional (medial temporal lobe, posterior cingulate), and a
plain mean over tokens dilutes a hippocampus-sized signal several hundred times.
``pooling="attention"`` (default) uses learned queries that attend over the
position-coded tokens; ``"flatten"`` concatenates the tokens (a position-specific
linear map, fine for small deep grids); ``"mean"`` is the plain average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gazimed_lab.config import POOLINGS
from gazimed_lab.models.standardize import SubjectStandardize

__all__ = [
    "POOLINGS",
    "CrossAttentionBlock",
    "CrossModalFusion",
    "SubjectStandardize",
    "sincos_position_code",
]


def sincos_position_code(grid: Sequence[int], dim: int) -> torch.Tensor:
    """Return a fixed 3D sine-cosine position code, ``(prod(grid), dim)``.

    Each axis gets ``2 * (dim // 6)`` channels; leftover channels are zero.
    """
    per_axis = dim // 6
    code = torch.zeros(*grid, dim)
    if per_axis == 0:
        return code.reshape(-1, dim)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(per_axis) / per_axis)
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in grid], indexing="ij")
    for i, pos in enumerate(axes):
        angles = pos[..., None] * freqs
        code[..., 2 * per_axis * i : 2 * per_axis * i + per_axis] = torch.sin(angles)
        code[..., 2 * per_axis * i + per_axis : 2 * per_axis * (i + 1)] = torch.cos(angles)
    return code.reshape(-1, dim)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (fused ``F.scaled_dot_product_attention``) + MLP.

    Parameters
    ----------
    dim
        Token width.
    heads
        Attention heads; ``dim`` must be divisible by it.
    dropout
        Dropout on the attention output and in the MLP.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(
                f"`fusion_dim` must be divisible by `fusion_heads`, got {dim} and {heads}"
            )
        self.heads = heads
        self.dropout = dropout
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Update ``x`` (B, N, dim) from ``context`` (B, M, dim); ``keep`` (B, M) bool."""
        b, n, d = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        x = x + self.drop(self.out(attn.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class CrossModalFusion(nn.Module):
    """Fuse MRI and PET feature maps at several stages into one ``fusion_dim`` vector.

    Parameters
    ----------
    stage_channels
        Channels of the encoder outputs at the fused stages.
    stage_grids
        Spatial sizes of those outputs (for the position code).
    fusion_dim
        Width of the attention tokens and of the output vector.
    heads
        Attention heads.
    with_pet
        When ``False`` (MRI only) the MRI tokens are projected and pooled, no attention.
    dropout
        Dropout rate.
    pooling
        How a stage's tokens become one vector: ``attention``, ``flatten`` or ``mean``.
    pool_queries
        Learned queries per stage for attention pooling.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        stage_grids: Sequence[Sequence[int]],
        fusion_dim: int = 256,
        heads: int = 8,
        with_pet: bool = True,
        dropout: float = 0.0,
        pooling: str = "attention",
        pool_queries: int = 4,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"`fusion_pooling` must be one of {POOLINGS}, got {pooling!r}")
        if pool_queries < 1:
            raise ValueError(f"`fusion_pool_queries` must be >= 1, got {pool_queries}")
        if fusion_dim < 1 or heads < 1 or fusion_dim % heads:
            raise ValueError(
                f"`fusion_dim` must be divisible by `fusion_heads`, got fusion_dim={fusion_dim}, "
                f"fusion_heads={heads}"
            )
        self.with_pet = with_pet
        self.fusion_dim = fusion_dim
        self.mri_proj = nn.ModuleList(nn.Linear(c, fusion_dim) for c in stage_channels)
        self.pool_norm = nn.ModuleList(nn.LayerNorm(fusion_dim) for _ in stage_channels)
        self.pooling = pooling
        self.heads = heads
        n_tokens = [int(torch.tensor([int(g) for g in grid]).prod()) for grid in stage_grids]
        self.mri_std = nn.ModuleList(
            SubjectStandardize(c * n, affine=False) for c, n in zip(stage_channels, n_tokens)
        )
        if pooling == "attention":
            self.pool_queries = nn.Parameter(torch.zeros(len(stage_channels), pool_queries,
                                                         fusion_dim))
            nn.init.trunc_normal_(self.pool_queries, std=0.02)
            self.pool_proj = nn.ModuleList(
                nn.Linear(pool_queries * fusion_dim, fusion_dim) for _ in stage_channels
            )
        elif pooling == "flatten":
            self.pool_proj = nn.ModuleList(nn.Linear(n * fusion_dim, fusion_dim) for n in n_tokens)
        for i, grid in enumerate(stage_grids):
            code = sincos_position_code(tuple(int(g) for g in grid), fusion_dim)
            self.register_buffer(f"pos_{i}", code, persistent=False)
        if with_pet:
            self.pet_std = nn.ModuleList(
                SubjectStandardize(c * n, affine=False) for c, n in zip(stage_channels, n_tokens)
            )
            self.pet_proj = nn.ModuleList(nn.Linear(c, fusion_dim) for c in stage_channels)
            self.blocks = nn.ModuleList(
                CrossAttentionBlock(fusion_dim, heads, dropout) for _ in stage_channels
            )
            self.absent_token = nn.Parameter(torch.zeros(len(stage_channels), fusion_dim))
            nn.init.trunc_normal_(self.absent_token, std=0.02)
        self.out = nn.Sequential(
            nn.Linear(len(stage_channels) * fusion_dim, fusion_dim), nn.GELU(), nn.Dropout(dropout)
        )

    @staticmethod
    def _tokens(feature: torch.Tensor) -> torch.Tensor:
        return feature.flatten(2).transpose(1, 2)  # (B, C, D, H, W) -> (B, N, C)

    def _pool(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim)`` tokens of stage ``i`` -> ``(B, dim)``."""
        x = self.pool_norm[i](x)
        if self.pooling == "mean":
            return x.mean(dim=1)
        b, n, d = x.shape
        if self.pooling == "flatten":
            return self.pool_proj[i](x.reshape(b, n * d))
        h = self.heads
        q = self.pool_queries[i].to(x.dtype).expand(b, -1, -1)
        q = q.reshape(b, -1, h, d // h).transpose(1, 2)
        kv = x.reshape(b, n, h, d // h).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, kv, kv)  # (B, h, Q, d/h)
        return self.pool_proj[i](pooled.transpose(1, 2).reshape(b, -1))

    def forward(
        self,
        mri_features: Sequence[torch.Tensor],
        pet_features: Sequence[torch.Tensor] | None = None,
        pet_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return ``(B, fusion_dim)``; ``pet_present`` is ``(B,)`` bool (or 0/1)."""
        pooled = []
        for i, mri in enumerate(mri_features):
            pos = getattr(self, f"pos_{i}").to(mri.dtype)
            x = self.mri_proj[i](self._tokens(self.mri_std[i](mri))) + pos
            if self.with_pet:
                if pet_features is None or pet_present is None:
                    raise ValueError("`pet_features` and `pet_present` must be given when with_pet")
                b = x.shape[0]
                pet = self.pet_std[i](pet_features[i])
                ctx = self.pet_proj[i](self._tokens(pet)) + pos
                absent = self.absent_token[i].to(ctx.dtype).expand(b, 1, -1)
                ctx = torch.cat([absent, ctx], dim=1)
                present = pet_present.bool().view(b, 1).expand(b, ctx.shape[1] - 1)
                keep = torch.cat([present.new_ones(b, 1), present], dim=1)
                x = self.blocks[i](x, ctx, keep)
            pooled.append(self._pool(i, x))
        return self.out(torch.cat(pooled, dim=1))
