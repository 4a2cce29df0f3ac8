"""An image pathway over anatomical regions: mean intensity per atlas region, standardized.

Alzheimer's effects are regional (medial temporal atrophy, posterior cingulate and
temporoparietal hypometabolism), and on MNI-space data a linear model on a handful
of regional means is a strong baseline. :class:`RegionEncoder` gives the network
that view directly: each channel's mean in each atlas region (a fixed, normalized
mask matrix, rebuilt from the grid and not saved in checkpoints), standardized with
the training split's statistics
(:class:`~gazimed_lab.models.standardize.FittedStandardize`, fitted once before the
first epoch), then a readout: an MLP, one linear map trained with the network
(``readout="linear"``), or one linear map fitted in closed form at the same time as
the standardization and then kept fixed (``readout="ridge"``: a ridge regression of
the standardized target on the standardized means, its penalty chosen by
leave-one-out error, :mod:`gazimed_lab.models.ridge`; the head maps it to the
score). A subject without PET has its PET region features replaced by the mean (0
after standardization) and a presence flag; its PET tensor is never read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from gazimed_lab.config import REGION_READOUTS
from gazimed_lab.models.clinical import mlp
from gazimed_lab.models.ridge import RidgeFit
from gazimed_lab.models.standardize import FittedStandardize

__all__ = ["RegionEncoder", "RegionPooling"]

log = logging.getLogger(__name__)


class RegionPooling(nn.Module):
    """Mean of each channel in each region: ``(B, C, D, H, W)`` -> ``(B, C, R)``.

    Parameters
    ----------
    masks
        Boolean ``(R, D, H, W)`` region masks on the input grid; each must hold a voxel.
    """

    def __init__(self, masks: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        masks_t = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
        if masks_t.ndim != 4 or masks_t.shape[0] < 1:
            raise ValueError(
                f"`masks` must be (R, D, H, W) with R >= 1, got {tuple(masks_t.shape)}")
        counts = masks_t.flatten(1).sum(dim=1)
        if (counts == 0).any():
            raise ValueError(
                f"`masks` must each hold a voxel, got {int((counts == 0).sum())} empty region(s)"
            )
        self.grid = tuple(int(s) for s in masks_t.shape[1:])
        self.weights: torch.Tensor
        # Derived from the grid, not learned: kept out of checkpoints.
        self.register_buffer("weights", masks_t.flatten(1) / counts[:, None], persistent=False)

    @property
    def n_regions(self) -> int:
        """Number of regions ``R``."""
        return int(self.weights.shape[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Regional means of ``images`` ``(B, C, *grid)`` -> ``(B, C, R)``."""
        if images.ndim != 5 or tuple(images.shape[2:]) != self.grid:
            raise ValueError(
                f"`images` must have shape (B, C, {', '.join(map(str, self.grid))}), got "
                f"{tuple(images.shape)}"
            )
        return images.flatten(2).float() @ self.weights.t()


class RegionEncoder(nn.Module):
    """Regional means of MRI (and PET) -> standardized -> MLP -> ``(B, out_dim)``.

    Parameters
    ----------
    masks
        ``(R, D, H, W)`` region masks on the input grid.
    mri_channels, pet_channels
        How many leading channels are MRI (0 or 1) and how many following are PET
        (0, 1 or 2: PET and PET - MRI).
    out_dim, dropout
        Output width; dropout in the MLP.
    readout
        ``mlp`` (one hidden layer of ``out_dim``), ``linear`` (one linear map: with
        ``out_dim = 1``, a ridge-like regional score) or ``ridge`` (``out_dim = 1``:
        the ridge regression of the standardized target, fitted by
        :meth:`fit_statistics`, not trained).
    """

    def __init__(self, masks: np.ndarray | torch.Tensor, mri_channels: int, pet_channels: int,
                 out_dim: int, dropout: float = 0.0, readout: str = "mlp") -> None:
        super().__init__()
        if readout not in REGION_READOUTS:
            raise ValueError(f"`region_readout` must be one of {', '.join(REGION_READOUTS)}, "
                             f"got {readout!r}")
        if int(out_dim) < 1:
            raise ValueError(f"`region_dim` must be >= 1, got {out_dim}")
        if readout == "ridge" and int(out_dim) != 1:
            raise ValueError(f"`region_dim` must be 1 with `region_readout` ridge (one fitted "
                             f"regional score), got {out_dim}")
        if mri_channels not in (0, 1) or pet_channels not in (0, 1, 2) or not (
                mri_channels + pet_channels):
            raise ValueError(
                f"`mri_channels` must be 0 or 1 and `pet_channels` 0, 1 or 2 (not both 0), got "
                f"{mri_channels} and {pet_channels}"
            )
        self.pool = RegionPooling(masks)
        r = self.pool.n_regions
        self.mri_channels, self.pet_channels = int(mri_channels), int(pet_channels)
        self.mri_norm = FittedStandardize(r * self.mri_channels) if self.mri_channels else None
        self.pet_norm = FittedStandardize(r * self.pet_channels) if self.pet_channels else None
        width = r * (self.mri_channels + self.pet_channels) + (1 if self.pet_channels else 0)
        self.readout = readout
        self.out_dim = int(out_dim)
        self.width = width
        self.mlp: nn.Module = (mlp(width, [self.out_dim], self.out_dim, float(dropout))
                               if readout == "mlp" else nn.Linear(width, self.out_dim))
        self.ridge_alpha: torch.Tensor | None
        if readout == "ridge":
            # Fitted, not trained: the readout and the standardization's affine (which
            # a trained readout absorbs, but a fixed one would see drift).
            self.requires_grad_(False)
            # The penalty chosen (a multiple of the training rows); NaN until fitted.
            self.register_buffer("ridge_alpha", torch.full((), float("nan")))
        else:
            self.ridge_alpha = None

    @property
    def fitted(self) -> bool:
        """Whether the standardization (and a ridge readout) have been fitted."""
        norms = all(bool(n.fitted) for n in (self.mri_norm, self.pet_norm) if n is not None)
        return norms and (self.ridge_alpha is None or bool(torch.isfinite(self.ridge_alpha)))

    def fit_statistics(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None,
                                                     torch.Tensor | None]]) -> int:
        """Fit on ``(images, pet_present, targets)`` batches; return the subjects.

        The standardization: the mean and variance of each regional mean over every
        subject of ``batches`` (the PET ones over the subjects with PET), all-reduced
        over processes. A ``ridge`` readout is then fitted on the standardized
        features of the same subjects and their ``targets`` (:class:`RidgeFit`).
        """
        norms = [n for n in (self.mri_norm, self.pet_norm) if n is not None]
        for norm in norms:
            norm.begin_fit()
        seen: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        with torch.no_grad():
            for images, pet_present, targets in batches:
                means = self.pool(images)
                if self.mri_norm is not None:
                    self.mri_norm.accumulate(means[:, 0])
                if self.pet_norm is not None:
                    pet = means[:, self.mri_channels:].flatten(1)
                    if pet_present is not None:
                        pet = pet[pet_present.to(torch.bool)]
                    self.pet_norm.accumulate(pet)
                if self.ridge_alpha is not None:
                    if targets is None:
                        raise ValueError("the ridge readout must see the training targets, "
                                         "got batches without `targets`")
                    seen.append((means, pet_present, targets))
        counts = [norm.end_fit() for norm in norms]
        if self.ridge_alpha is not None:
            self._fit_ridge(seen)
        return counts[0]

    def _fit_ridge(self, seen: list[tuple[torch.Tensor, torch.Tensor | None,
                                          torch.Tensor | None]]) -> None:
        fit = RidgeFit(self.width)
        with torch.no_grad():
            for means, pet_present, targets in seen:
                assert targets is not None
                fit.accumulate(self._features(means, pet_present), targets)
            solution = fit.solve(standardize_target=True)
            linear = self.mlp
            assert isinstance(linear, nn.Linear) and self.ridge_alpha is not None
            linear.weight.copy_(solution.coef.to(linear.weight)[None])
            linear.bias.fill_(solution.intercept)
            self.ridge_alpha.fill_(solution.alpha)
        log.info("ridge readout fitted on %d training subjects: penalty %g x rows (leave-one-out "
                 "MSE %.4g; at the smallest and largest penalty %.4g, %.4g)", solution.rows,
                 solution.alpha, solution.loo_mse[solution.alpha],
                 solution.loo_mse[min(solution.loo_mse)], solution.loo_mse[max(solution.loo_mse)])

    def forward(self, images: torch.Tensor, pet_present: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``(B, mri_channels + pet_channels, *grid)`` and PET presence ``(B,)`` -> ``(B, out)``."""
        return self.mlp(self._features(self.pool(images), pet_present))

    def _features(self, means: torch.Tensor, pet_present: torch.Tensor | None) -> torch.Tensor:
        """Standardized regional means ``(B, C, R)`` (and the PET flag) -> ``(B, width)``."""
        parts = []
        if self.mri_norm is not None:
            parts.append(self.mri_norm(means[:, 0].contiguous()))
        if self.pet_norm is not None:
            pet = means[:, self.mri_channels:].flatten(1)
            present = (torch.ones(len(pet), dtype=torch.bool, device=pet.device)
                       if pet_present is None else pet_present.to(torch.bool))
            keep = present.view(-1, 1)
            if keep.any():  # absent rows take the mean of present ones: no effect on the stats
                fill = pet[present].mean(dim=0, keepdim=True).detach()
                pet = torch.where(keep, pet, fill)
            parts.append(torch.where(keep, self.pet_norm(pet), torch.zeros_like(pet)))
            parts.append(present.to(pet.dtype).view(-1, 1))
        return torch.cat(parts, dim=1)
