"""The naive baseline: the reference design's data flow built from this package's layers.

What the reference design did per sample, and this module reproduces at equal
settings (same Swin encoder sizes, ``fusion_dim``, heads, clinical encoder and head):

- the image encoder runs **three** times: once on the stacked MRI + PET channels (an
  output the fusion never uses), then on the MRI, then on the PET;
- the fusion flattens the tokens of every fused stage, concatenates them, and runs
  **dense** cross-attention (MRI tokens over PET tokens, an explicit
  ``softmax(q k^T) v`` that materializes the attention matrix) in two blocks, then
  averages the tokens.

``stages="fused"`` attends over the tokens of the network's own ``fusion_stages``
(equal settings). ``stages="all"`` attends over the tokens of all five encoder
outputs, as the reference did: its attention matrix grows with the square of the
token count (see :func:`dense_attention_bytes`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gazimed_lab.models.clinical import ClinicalEncoder, mlp
from gazimed_lab.models.encoders import SwinImageEncoder

__all__ = ["NaiveReferenceNet", "dense_attention_bytes", "stage_tokens"]


def stage_tokens(encoder: SwinImageEncoder, stages: Sequence[int]) -> int:
    """Number of tokens of ``stages`` of an encoder, summed."""
    total = 0
    for s in stages:
        d, h, w = encoder.stage_grids[s]
        total += d * h * w
    return total


def dense_attention_bytes(tokens: int, heads: int, batch: int, element_bytes: int = 4) -> int:
    """Bytes of one ``(batch, heads, tokens, tokens)`` attention matrix."""
    return batch * heads * tokens * tokens * element_bytes


class DenseCrossAttention(nn.Module):
    """Pre-norm cross-attention with an explicit attention matrix, then an MLP.

    Parameters
    ----------
    dim, heads, dropout
        Token width, heads and dropout (on the attention weights and the outputs).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Update ``x`` (B, N, dim) from ``context`` (B, M, dim)."""
        b, n, d = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).view(b, n, h, d // h).transpose(1, 2)
        kv = self.norm_kv(context)
        k = self.k(kv).view(b, -1, h, d // h).transpose(1, 2)
        v = self.v(kv).view(b, -1, h, d // h).transpose(1, 2)
        weights = self.drop(torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1))
        x = x + self.drop(self.out((weights @ v).transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class NaiveReferenceNet(nn.Module):
    """Reference-style network: encoder three times per sample, dense fusion attention.

    Takes the keyword arguments of :class:`gazimed_lab.models.network.MultimodalAlzheimersNet`
    (multimodal mode, ``in_channels`` >= 2) and has the same :meth:`logits` signature.

    Parameters
    ----------
    stages
        ``"fused"``: attend over the tokens of ``fusion_stages``; ``"all"``: over the
        tokens of all five encoder outputs (the reference design).
    **kwargs
        Model config fields (``img_size``, ``embed_dim``, ``fusion_dim``, ...).
    """

    def __init__(self, stages: str = "fused", **kwargs: Any) -> None:
        super().__init__()
        in_channels = int(kwargs["in_channels"])
        if in_channels < 2:
            raise ValueError(
                f"`in_channels` must be >= 2 for the naive baseline, got {in_channels}")
        enc_args = {k: kwargs[k] for k in ("img_size", "patch_size", "embed_dim", "depths",
                                           "num_heads", "window_size", "drop_path_rate")}
        enc_args["use_checkpoint"] = bool(kwargs.get("activation_checkpointing", False))
        self.joint_encoder = SwinImageEncoder(in_channels, **enc_args)
        self.mri_encoder = SwinImageEncoder(1, **enc_args)
        self.pet_encoder = SwinImageEncoder(in_channels - 1, **enc_args)
        enc = self.mri_encoder
        self.stages = (list(range(len(enc.stage_channels))) if stages == "all"
                       else [int(s) for s in kwargs["fusion_stages"]])
        self.tokens = stage_tokens(enc, self.stages)
        dim, heads, dropout = int(kwargs["fusion_dim"]), int(kwargs["fusion_heads"]), float(
            kwargs["dropout"])
        self.heads = heads
        self.proj = nn.ModuleList(nn.Linear(enc.stage_channels[s], dim) for s in self.stages)
        self.blocks = nn.ModuleList(DenseCrossAttention(dim, heads, dropout) for _ in range(2))
        self.aggregate = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.clinical_encoder = ClinicalEncoder(
            int(kwargs["clinical_features_dim"]), kwargs["clinical_hidden"],
            int(kwargs["clinical_out_dim"]), dropout, 0.0)
        width = dim + int(kwargs["clinical_out_dim"])
        hidden = list(kwargs["head_hidden"])
        self.head = nn.Sequential(mlp(width, hidden[:-1], int(hidden[-1]), dropout),
                                  nn.Linear(int(hidden[-1]), 1))

    def _tokens(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self._tokens_with(self.proj, features)

    def fuse(self, mri_features: list[torch.Tensor], pet_features: list[torch.Tensor]
             ) -> torch.Tensor:
        """Dense cross-attention over the concatenated stage tokens -> ``(B, fusion_dim)``."""
        x, pet = self._tokens(mri_features), self._tokens(pet_features)
        for block in self.blocks:
            x = block(x, pet)
        return self.aggregate(x.mean(dim=1))

    def fusion_flops(self, batch: int) -> int:
        """FLOPs of :meth:`fuse` forward + backward, counted on meta tensors (no memory)."""
        from torch.utils.flop_counter import FlopCounterMode

        enc = self.mri_encoder
        parts = nn.ModuleList([self.proj, self.blocks, self.aggregate])
        proj, blocks, aggregate = copy.deepcopy(parts).to("meta")
        shapes = [(batch, c, *g) for c, g in zip(enc.stage_channels, enc.stage_grids)]
        mri = [torch.randn(s, device="meta", requires_grad=True) for s in shapes]
        pet = [torch.randn(s, device="meta", requires_grad=True) for s in shapes]
        counter = FlopCounterMode(display=False)
        with counter:
            x, ctx = self._tokens_with(proj, mri), self._tokens_with(proj, pet)
            for block in blocks:
                x = block(x, ctx)
            aggregate(x.mean(dim=1)).sum().backward()
        return int(counter.get_total_flops())

    def _tokens_with(self, proj: nn.ModuleList, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p(features[s].flatten(2).transpose(1, 2))
                          for p, s in zip(proj, self.stages)], dim=1)

    def logits(self, images: torch.Tensor, modality_mask: torch.Tensor | None = None,
               clinical_features: torch.Tensor | None = None,
               clinical_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-sigmoid scores ``(B,)``; same inputs as the package's network."""
        self.joint_encoder(images)  # the reference's first pass, whose output goes unused
        image = self.fuse(self.mri_encoder(images[:, :1]), self.pet_encoder(images[:, 1:]))
        clinical = self.clinical_encoder(clinical_features, clinical_mask)
        return self.head(torch.cat([image, clinical], dim=1)).squeeze(1)
