"""Interpretability maps in MNI space: gradient saliency and occlusion sensitivity.

Every function takes a *model* called as ``model(batch) -> (B,)`` scores in
[0, 1] on a batch dict of the datamodule (``images`` ``(B, C, D, H, W)``,
``modality_mask``, ``clinical_features``, ``clinical_mask``, ...), such as
:class:`gazimed_lab.models.AlzheimersLightningModule`. Maps are returned as
numpy arrays on the batch's voxel grid, so :func:`map_to_image` /
:func:`save_map_nifti` put them in MNI space with the grid's affine.

Sign conventions
----------------
* :func:`gradient_saliency` is ``|d score / d input|`` (>= 0).
* :func:`occlusion_map` is the *drop* in score when a region is occluded,
  ``score(image) - score(occluded image)``: positive where the region pushes the
  score up (towards AD), negative where it pushes it down.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.visualize import OcclusionSensitivity
from torch import nn

from gazimed_lab.data.grid import Grid, get_grid

__all__ = [
    "gradient_saliency",
    "map_to_image",
    "maps_by_group",
    "occlusion_map",
    "save_map_nifti",
]

Batch = Mapping[str, Any]
METHODS = ("saliency", "occlusion")
_MNI_CODE = 4  # NIfTI xform code "mni"


# --------------------------------------------------------------------- helpers
def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            "`model` must be a torch nn.Module called as model(batch) -> (B,) scores (e.g. "
            f"AlzheimersLightningModule), got {type(model).__name__}"
        )
    return model


def _device(model: nn.Module) -> torch.device:
    param = next(iter(_check_model(model).parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _check_batch(batch: Any) -> torch.Tensor:
    images = batch.get("images") if isinstance(batch, Mapping) else None
    if not isinstance(images, torch.Tensor) or images.ndim != 5:
        got = type(batch).__name__ if images is None else getattr(images, "shape", type(images))
        raise ValueError(
            "`batch` must be a dict with `images` as a (B, C, D, H, W) tensor (a datamodule "
            f"batch), got {got}"
        )
    return images


def _to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _subset(batch: Batch, index: list[int]) -> dict[str, Any]:
    """Select the samples ``index`` of a batch (tensors and per-sample lists)."""
    n = batch["images"].shape[0]
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
            out[key] = value[index]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            out[key] = [value[i] for i in index]
        else:
            out[key] = value
    return out


def _scores(model: Callable[[Batch], torch.Tensor], batch: Batch) -> torch.Tensor:
    n = batch["images"].shape[0]
    out = model(batch)
    if not isinstance(out, torch.Tensor) or out.numel() != n:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`model(batch)` must return (B,) = ({n},) scores, got {got}")
    return out.reshape(n).float()


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters (gradients flow to the input only); restored after."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _check_channel(channel: int | None, n_channels: int) -> None:
    if channel is not None and (
        isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < n_channels
    ):
        raise ValueError(
            f"`channel` must be None or an int in 0..{n_channels - 1} (0 = MRI, 1 = PET), "
            f"got {channel!r}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# -------------------------------------------------------------------- saliency
def gradient_saliency(
    model: nn.Module,
    batch: Batch,
    channel: int | None = None,
    smooth_samples: int = 0,
    noise_std: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Gradient saliency ``|d score / d images|``, optionally SmoothGrad.

    Parameters
    ----------
    model
        Called as ``model(batch) -> (B,)`` scores; run in eval mode with its
        parameters frozen (its training flag and ``requires_grad`` are restored).
    batch
        A datamodule batch dict; only ``images`` is differentiated, the other
        entries (modality mask, clinical features) are passed through unchanged.
    channel
        Return only this image channel (0 = MRI, 1 = PET, ...); ``None`` keeps all.
    smooth_samples
        0: plain gradient. ``n > 0``: SmoothGrad, the mean of ``|gradient|`` over
        ``n`` noisy copies of the images (Smilkov et al. 2017).
    noise_std
        SmoothGrad noise standard deviation as a fraction of each sample's
        per-channel intensity range (max - min).
    seed
        Seed of the SmoothGrad noise.

    Returns
    -------
    numpy.ndarray
        float32 ``(B, C, D, H, W)``, or ``(B, D, H, W)`` when ``channel`` is given.
    """
    images = _check_batch(batch)
    _check_channel(channel, images.shape[1])
    if not _is_int(smooth_samples) or smooth_samples < 0:
        raise ValueError(f"`smooth_samples` must be an int >= 0, got {smooth_samples!r}")
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"`noise_std` must be a finite float >= 0, got {noise_std!r}")
    device = _device(model)
    work = _to_device(batch, device)
    x0 = work["images"].detach().float()
    spread = (x0.amax(dim=(2, 3, 4), keepdim=True) - x0.amin(dim=(2, 3, 4), keepdim=True))
    generator = torch.Generator(device=device).manual_seed(int(seed))
    total = torch.zeros_like(x0)
    with _inference(model), torch.enable_grad():
        for _ in range(max(1, int(smooth_samples))):
            x = x0
            if smooth_samples:
                noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
                x = x0 + noise * spread * float(noise_std)
            x = x.clone().requires_grad_(True)
            scores = _scores(model, {**work, "images": x})
            (grad,) = torch.autograd.grad(scores.sum(), x)
            total += grad.detach().abs()
    result = (total / max(1, int(smooth_samples))).cpu().numpy().astype(np.float32)
    return result if channel is None else result[:, channel]


# ------------------------------------------------------------------- occlusion
class _FixedContext(nn.Module):
    """``images (N, c, D, H, W) -> (N, 1)`` scores of one subject, other inputs held fixed."""

    def __init__(self, model: nn.Module, sample: Batch, channel: int | None) -> None:
        super().__init__()
        self.model = model
        self.sample = sample
        self.channel = channel

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        if self.channel is not None:  # re-insert the occluded channel among the fixed ones
            full = self.sample["images"].expand(n, -1, -1, -1, -1).clone()
            full[:, self.channel] = images[:, 0]
            images = full
        batch: dict[str, Any] = {"images": images}
        for key, value in self.sample.items():
            if key == "images":
                continue
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1:
                batch[key] = value.expand(n, *value.shape[1:])
            elif isinstance(value, list) and len(value) == 1:
                batch[key] = value * n
            else:
                batch[key] = value
        return _scores(self.model, batch).unsqueeze(1)


def _mask_triple(mask_size: int | Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    given: Any = [mask_size] * 3 if _is_int(mask_size) else mask_size
    image = "x".join(map(str, shape))
    ok = isinstance(given, Sequence) and len(given) == 3 and all(_is_int(s) for s in given)
    sizes = [int(s) for s in given] if ok else []
    if not ok or any(not 0 < s < d for s, d in zip(sizes, shape)):
        raise ValueError(
            f"`mask_size` must be a positive int smaller than the image, got {mask_size!r} "
            f"(image {image})"
        )
    return tuple(sizes)


def occlusion_map(
    model: nn.Module,
    batch: Batch,
    mask_size: int | Sequence[int] = 8,
    overlap: float = 0.5,
    n_batch: int = 64,
    mode: str | float = "gaussian",
    channel: int | None = None,
) -> np.ndarray:
    """Occlusion sensitivity (MONAI ``OcclusionSensitivity``) as a drop in score.

    Each subject is handled on its own: its modality mask and clinical features
    are held fixed while boxes of ``mask_size`` voxels slide over the image
    (all channels occluded together unless ``channel`` is given).

    Parameters
    ----------
    model
        Called as ``model(batch) -> (B,)`` scores; run in eval mode without gradients.
    batch
        A datamodule batch dict.
    mask_size
        Edge of the occluding box in voxels (int or 3 ints), smaller than the image.
    overlap
        Overlap of neighbouring boxes, in [0, 1). The number of forward passes
        grows as ``1 / (1 - overlap) ** 3``: 0.5 costs 8x (0.25: 2.4x) the
        passes of non-overlapping boxes.
    n_batch
        Occluded copies scored per forward pass (larger batches mostly pay off
        on a GPU; on a CPU the forward passes themselves dominate).
    mode
        MONAI occlusion mode: ``gaussian`` (multiply by 1 - Gaussian: the box
        centre goes to 0, i.e. the brain mean of a z-scored MRI), ``mean_patch``,
        ``mean_img``, or a constant fill value.
    channel
        Occlude only this channel (0 = MRI, 1 = PET); ``None`` occludes all.

    Returns
    -------
    numpy.ndarray
        float32 ``(B, D, H, W)``: ``score - score_occluded`` (positive: the region
        raises the score).
    """
    images = _check_batch(batch)
    _check_channel(channel, images.shape[1])
    sizes = _mask_triple(mask_size, tuple(images.shape[2:]))
    if not (isinstance(overlap, (int, float)) and 0 <= overlap < 1):
        raise ValueError(f"`overlap` must be a float in [0, 1), got {overlap!r}")
    if not _is_int(n_batch) or n_batch < 1:
        raise ValueError(f"`n_batch` must be a positive int, got {n_batch!r}")
    device = _device(model)
    work = _to_device(batch, device)
    maps = []
    with _inference(model), torch.no_grad():
        for i in range(images.shape[0]):
            sample = _subset(work, [i])
            sample["images"] = sample["images"].float()
            net = _FixedContext(model, sample, channel)
            x = sample["images"] if channel is None else sample["images"][:, channel : channel + 1]
            occluder = OcclusionSensitivity(
                net, mask_size=sizes, n_batch=int(n_batch), verbose=False, mode=mode,
                overlap=float(overlap), activate=False,
            )
            with warnings.catch_warnings():  # MONAI's list indexing, deprecated in torch 2.9
                warnings.filterwarnings("ignore", "Using a non-tuple sequence", UserWarning)
                occluded, _ = occluder(x)
            baseline = net(x)[0, 0]
            maps.append((baseline - torch.as_tensor(occluded)[0, 0]).cpu().numpy())
    return np.stack(maps).astype(np.float32)


# ---------------------------------------------------------------- group means
def maps_by_group(
    model: nn.Module,
    dataloader: Iterable[Batch],
    groups: Mapping[str, Any],
    method: str = "saliency",
    max_per_group: int | None = None,
    channel: int | None = None,
    **kwargs: Any,
) -> dict[Any, np.ndarray]:
    """Mean map per group (e.g. diagnosis) over the subjects of a dataloader.

    Parameters
    ----------
    model
        Called as ``model(batch) -> (B,)`` scores.
    dataloader
        Iterable of batch dicts, e.g. ``dm.split_dataloader("test")``.
    groups
        ``subject_id -> group`` (a dict or pandas Series). Subjects not in it, or
        with a missing (None / NaN) group, are skipped.
    method
        ``saliency`` (:func:`gradient_saliency`) or ``occlusion`` (:func:`occlusion_map`).
    max_per_group
        At most this many subjects per group (in loader order); ``None``: all.
    channel
        Image channel of the map; ``None``: saliency takes the max over channels,
        occlusion occludes all channels together.
    **kwargs
        Passed on to the method (``smooth_samples``, ``mask_size``, ...).

    Returns
    -------
    dict
        ``group -> (D, H, W)`` float32 mean map, keys sorted.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")
    if max_per_group is not None and (not _is_int(max_per_group) or max_per_group < 1):
        raise ValueError(f"`max_per_group` must be None or a positive int, got {max_per_group!r}")
    lookup = {str(k): v for k, v in dict(groups).items() if not _missing(v)}
    if not lookup:
        raise ValueError("`groups` must map subject_id to a group, got no non-missing entries")
    sums: dict[Any, np.ndarray] = {}
    counts: dict[Any, int] = {}
    wanted = set(lookup.values())
    for batch in dataloader:
        _check_batch(batch)
        if "subject_id" not in batch:
            raise ValueError(
                f"`batch` must have a `subject_id` list to match `groups`, got keys {sorted(batch)}"
            )
        index = []
        for i, sid in enumerate(batch["subject_id"]):
            group = lookup.get(str(sid))
            if group is None or (max_per_group and counts.get(group, 0) >= max_per_group):
                continue
            counts[group] = counts.get(group, 0) + 1
            index.append(i)
        if not index:
            continue
        part = _subset(batch, index)
        if method == "saliency":
            maps = gradient_saliency(model, part, channel=channel, **kwargs)
            maps = maps if channel is not None else maps.max(axis=1)
        else:
            maps = occlusion_map(model, part, channel=channel, **kwargs)
        for i, m in zip(index, maps):
            group = lookup[str(batch["subject_id"][i])]
            sums[group] = sums.get(group, 0) + m.astype(np.float64)
        if max_per_group and all(counts.get(g, 0) >= max_per_group for g in wanted):
            break
    if not sums:
        raise ValueError(
            "`groups` must name subjects of the dataloader, got no match (e.g. "
            f"{sorted(lookup)[:3]}); build it from the same split's table"
        )
    return {g: (sums[g] / counts[g]).astype(np.float32) for g in sorted(sums, key=str)}


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # not a scalar
        return False


# ------------------------------------------------------------------------ NIfTI
def map_to_image(map3d: Any, grid: Grid | str) -> nib.Nifti1Image:
    """Make a float32 NIfTI image of a ``(D, H, W)`` map on ``grid`` (MNI xform codes).

    Parameters
    ----------
    map3d
        Array (or CPU tensor) with the grid's shape.
    grid
        A :class:`~gazimed_lab.data.grid.Grid` (e.g. ``dm.grid``) or a grid name.
    """
    grid = get_grid(grid)
    if isinstance(map3d, torch.Tensor):
        map3d = map3d.detach().cpu().numpy()
    data = np.asarray(map3d, dtype=np.float32)
    if data.shape != tuple(grid.shape):
        raise ValueError(
            f"`map3d` must have the grid shape {tuple(grid.shape)} (grid {grid.name}), got "
            f"{data.shape}; pass one subject's or group's 3D map"
        )
    img = nib.Nifti1Image(data, grid.affine)
    img.set_sform(grid.affine, code=_MNI_CODE)
    img.set_qform(grid.affine, code=_MNI_CODE)
    img.header.set_data_dtype(np.float32)
    return img


def save_map_nifti(map3d: Any, grid: Grid | str, path: str | Path) -> Path:
    """Save a ``(D, H, W)`` map on ``grid`` as float32 NIfTI; return the path.

    Parameters
    ----------
    map3d
        Array (or CPU tensor) with the grid's shape.
    grid
        A :class:`~gazimed_lab.data.grid.Grid` or a grid name.
    path
        Target file ending in ``.nii`` or ``.nii.gz``; parent folders are created.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"`path` must end in .nii or .nii.gz, got {str(path)!r}")
    img = map_to_image(map3d, grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
