"""Image encoder: MONAI's Swin transformer (the SwinUNETR encoder) on any input grid.

The volume is padded (edge values, centred) to the grid the encoder needs: every
dimension divisible by ``patch_size``. MONAI's patch merging pads odd sizes itself
(a stage grid is the ceiling of half the previous one) and its window attention pads
to the window, so padding further (to ``patch * 16``) would only add compute: 3.4x the
voxels on the 4 mm demo grid. The padding is recorded on the module.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from gazimed_lab.config import ModelConfig

__all__ = ["SwinImageEncoder", "check_triple", "padded_grid"]

N_STAGES = 4  # MONAI's SwinTransformer always builds four stages (five outputs)
_MODEL = ModelConfig()  # the defaults below are the config's (typed once, in config.py)


def check_triple(name: str, value: Sequence[int] | None) -> tuple[int, int, int]:
    """Return ``value`` as three positive ints or raise naming ``name``."""
    try:
        triple = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or any(v < 1 for v in triple):
        raise ValueError(f"`{name}` must be 3 positive integers, got {value!r}")
    return triple  # three ints: checked above


def padded_grid(
    img_size: Sequence[int], patch_size: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[tuple[int, int], ...]]:
    """Grid the encoder needs for ``img_size`` and the (before, after) padding per axis.

    Examples
    --------
    >>> padded_grid((91, 109, 91), (4, 4, 4))[0]
    (92, 112, 92)
    """
    size: list[int] = []
    pads: list[tuple[int, int]] = []
    for n, p in zip(img_size, patch_size):
        multiple = int(p)
        target = -(-int(n) // multiple) * multiple
        extra = target - int(n)
        size.append(target)
        pads.append((extra // 2, extra - extra // 2))
    return tuple(size), tuple(pads)  # type: ignore[return-value]


class SwinImageEncoder(nn.Module):
    """One modality's encoder: pad to the encoder grid, then MONAI ``SwinTransformer``.

    Parameters
    ----------
    in_channels
        Input channels of this modality (1 for MRI; 1 or 2 for PET [+ PET-MRI]).
    img_size
        Spatial size ``(D, H, W)`` of the input volumes.
    patch_size, embed_dim, depths, num_heads, window_size
        Swin settings; the defaults are those of
        :class:`~gazimed_lab.config.ModelConfig` (the reference design: patch 4,
        embed 96, depths ``[2, 2, 6, 2]``, heads ``[3, 6, 12, 24]``, window 7).
    drop_path_rate
        Stochastic depth rate.
    use_checkpoint
        Activation checkpointing inside the Swin blocks (MONAI ``use_checkpoint``).
    n_outputs
        How many of the five outputs to compute (1..5). Stages deeper than the
        last output are not built: no compute, and no unused parameters (which
        DDP would reject).

    Attributes
    ----------
    padded_size : tuple of int
        The grid actually fed to the Swin transformer.
    padding : tuple of (int, int)
        Voxels added (before, after) along each axis.
    stage_channels : list of int
        Channels of the five outputs: ``embed_dim * 2**i``.
    stage_grids : list of tuple of int
        Spatial size of the five outputs.
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int],
        patch_size: Sequence[int] = tuple(_MODEL.patch_size),
        embed_dim: int = _MODEL.embed_dim,
        depths: Sequence[int] = tuple(_MODEL.depths),
        num_heads: Sequence[int] = tuple(_MODEL.num_heads),
        window_size: Sequence[int] = tuple(_MODEL.window_size),
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        n_outputs: int = N_STAGES + 1,
    ) -> None:
        super().__init__()
        if not 1 <= int(n_outputs) <= N_STAGES + 1:
            raise ValueError(f"`n_outputs` must be in 1..{N_STAGES + 1}, got {n_outputs}")
        if int(in_channels) < 1:
            raise ValueError(f"`in_channels` must be >= 1, got {in_channels}")
        self.img_size = check_triple("img_size", img_size)
        self.patch_size = check_triple("patch_size", patch_size)
        window = check_triple("window_size", window_size)
        depths = [int(d) for d in depths]
        num_heads = [int(h) for h in num_heads]
        if len(depths) != N_STAGES or any(d < 1 for d in depths):
            raise ValueError(
                f"`depths` must be {N_STAGES} positive integers (MONAI's SwinTransformer has "
                f"{N_STAGES} stages), got {depths}"
            )
        if len(num_heads) != N_STAGES or any(h < 1 for h in num_heads):
            raise ValueError(f"`num_heads` must be {N_STAGES} positive integers, got {num_heads}")
        if int(embed_dim) < 1:
            raise ValueError(f"`embed_dim` must be >= 1, got {embed_dim}")
        for i, heads in enumerate(num_heads):
            dim = int(embed_dim) * 2**i
            if dim % heads:
                raise ValueError(
                    f"`embed_dim` must be divisible by `num_heads[{i}]` at stage {i} "
                    f"(stage width embed_dim * 2**{i} = {dim}), got embed_dim={embed_dim}, "
                    f"num_heads[{i}]={heads}"
                )
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"`drop_path_rate` must be in [0, 1), got {drop_path_rate}")
        self.in_channels = int(in_channels)
        self.embed_dim = int(embed_dim)
        self.padded_size, self.padding = padded_grid(self.img_size, self.patch_size)
        self.stage_channels = [self.embed_dim * 2**i for i in range(N_STAGES + 1)]
        base = [s // p for s, p in zip(self.padded_size, self.patch_size)]
        self.stage_grids = [tuple(base)]
        for _ in range(N_STAGES):  # patch merging pads odd sizes: ceil of half
            self.stage_grids.append(tuple(-(-g // 2) for g in self.stage_grids[-1]))
        # F.pad wants the last axis first.
        self._pad = tuple(v for pair in reversed(self.padding) for v in pair)
        extra: dict[str, Any] = {}
        if "use_flash_attention" in inspect.signature(SwinTransformer.__init__).parameters:
            extra["use_flash_attention"] = True  # fused attention at inference
        self.swin = SwinTransformer(
            in_chans=self.in_channels,
            embed_dim=self.embed_dim,
            window_size=window,
            patch_size=self.patch_size,
            depths=depths,
            num_heads=num_heads,
            drop_path_rate=float(drop_path_rate),
            use_checkpoint=bool(use_checkpoint),
            spatial_dims=3,
            **extra,
        )
        self.n_outputs = int(n_outputs)
        for stage in range(self.n_outputs, N_STAGES + 1):
            delattr(self.swin, f"layers{stage}")  # never run: see n_outputs

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``(B, C, *img_size)`` to ``(B, C, *padded_size)`` with edge values."""
        if not any(self._pad):
            return x
        return F.pad(x, self._pad, mode="replicate")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``(B, in_channels, *img_size)`` into ``n_outputs`` feature maps.

        Output ``i`` (shallow to deep) has shape
        ``(B, embed_dim * 2**i, *stage_grids[i])``: the patch embedding, then one per
        Swin stage, each layer-normalized as in MONAI's ``SwinTransformer.forward``.
        """
        expected = (self.in_channels, *self.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"encoder input must have shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        swin = self.swin
        hidden = swin.pos_drop(swin.patch_embed(self.pad(x)))
        outputs = [swin.proj_out(hidden, True)]
        for stage in range(1, self.n_outputs):
            hidden = getattr(swin, f"layers{stage}")[0](hidden.contiguous())
            outputs.append(swin.proj_out(hidden, True))
        return outputs
