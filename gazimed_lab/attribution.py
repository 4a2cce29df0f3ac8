"""Integrated gradients from a cohort-mean reference, and maps summed per atlas region.

Why not plain gradients: the network standardizes features across subjects and the
regions pathway averages voxels within atlas regions, so ``|d score / d voxel|``
mostly shows region size (a voxel of a small region moves its mean more) and the
group saliency maps localized the disease at chance. Integrated gradients (Sundararajan
et al. 2017) attribute the score difference between a subject and a reference to the
voxels where they differ; with the cohort-mean image as reference, an AD subject's
attributions sit where its images depart from the typical brain *and* the model
listens. They satisfy completeness: the attributions add up to
``score(subject) - score(reference)`` (tested). :func:`regional_map` then sums them
within atlas regions, the unit the disease effects (and the regions pathway) live in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from gazimed_lab.data.atlas import Atlas

__all__ = ["cohort_reference", "group_attribution", "integrated_gradients", "regional_map"]


def cohort_reference(batches: Iterable[dict[str, Any]]) -> torch.Tensor:
    """Mean image ``(C, D, H, W)`` of a cohort's batches; PET channels over subjects with PET."""
    mri_sum: torch.Tensor | None = None
    pet_sum: torch.Tensor | None = None
    n_all = n_pet = 0
    for batch in batches:
        images = batch["images"].float()
        mri = images[:, :1].sum(dim=0)
        mri_sum = mri if mri_sum is None else mri_sum + mri
        n_all += len(images)
        has_pet = batch["modality_mask"][:, 1] > 0.5
        if images.shape[1] > 1 and bool(has_pet.any()):
            pet = images[has_pet, 1:].sum(dim=0)
            pet_sum = pet if pet_sum is None else pet_sum + pet
            n_pet += int(has_pet.sum())
    if mri_sum is None:
        raise ValueError("`batches` must hold at least one subject, got none")
    if pet_sum is None:
        return mri_sum / n_all
    return torch.cat([mri_sum / n_all, pet_sum / n_pet])


def integrated_gradients(model: nn.Module, batch: dict[str, Any], reference: torch.Tensor,
                         steps: int = 16) -> np.ndarray:
    """Attributions ``(B, C, D, H, W)`` of the score to the images, from ``reference``.

    ``(x - reference) * mean of d score / d x`` along the straight path (midpoint rule,
    ``steps`` points); the model is put in eval mode for the call. The other batch
    entries (clinical features, masks) are held fixed.
    """
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    images = batch["images"].float()
    if tuple(reference.shape) != tuple(images.shape[1:]):
        raise ValueError(f"`reference` must have the image shape {tuple(images.shape[1:])}, "
                         f"got {tuple(reference.shape)}")
    was_training = model.training
    model.eval()
    base = reference.to(images).expand_as(images)
    total = torch.zeros_like(images)
    try:
        for k in range(steps):
            point = (base + (k + 0.5) / steps * (images - base)).requires_grad_(True)
            score = model({**batch, "images": point}).sum()
            (grad,) = torch.autograd.grad(score, point)
            total += grad / steps
    finally:
        model.train(was_training)
    return ((images - base) * total).detach().cpu().numpy()


def group_attribution(model: nn.Module, batches: Iterable[dict[str, Any]],
                      groups: Mapping[str, Any], reference: torch.Tensor,
                      max_per_group: int | None = None, steps: int = 16
                      ) -> dict[Any, np.ndarray]:
    """Mean integrated-gradients map ``(C, D, H, W)`` per group (e.g. diagnosis).

    ``groups`` maps subject id -> group; subjects without a group are skipped, and at
    most ``max_per_group`` subjects of each group are used (first come).
    """
    sums: dict[Any, np.ndarray] = {}
    counts: dict[Any, int] = {}
    for batch in batches:
        keep = [i for i, sid in enumerate(batch["subject_id"])
                if sid in groups and (max_per_group is None
                                      or counts.get(groups[sid], 0) < max_per_group)]
        if not keep:
            continue
        sub = {k: (v[keep] if torch.is_tensor(v) else [v[i] for i in keep])
               for k, v in batch.items()}
        attr = integrated_gradients(model, sub, reference, steps)
        for sid, a in zip(sub["subject_id"], attr):
            group = groups[sid]
            if max_per_group is not None and counts.get(group, 0) >= max_per_group:
                continue
            sums[group] = sums.get(group, 0.0) + a
            counts[group] = counts.get(group, 0) + 1
    return {g: sums[g] / counts[g] for g in sums}


def regional_map(map3d: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Each atlas region's voxels set to the region's summed ``map3d`` (0 outside regions)."""
    map3d = np.asarray(map3d)
    if map3d.shape != atlas.labels.shape:
        raise ValueError(f"`map3d` must have the atlas grid shape {atlas.labels.shape}, got "
                         f"{map3d.shape}")
    out = np.zeros_like(map3d, dtype=np.float64)
    flat = atlas.labels.ravel()
    sums = np.bincount(flat, weights=map3d.ravel(), minlength=int(flat.max()) + 1)
    for i in atlas.ids:
        out[atlas.labels == i] = sums[i]
    return out
