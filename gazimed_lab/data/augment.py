"""Training augmentation on whole batches, on the device the model trains on.

:class:`BatchAugment` applies a small random affine (rotation, zoom, shift), a
per-channel intensity scale and shift, and Gaussian noise to a batch of
``(B, C, D, H, W)`` float32 images, each transform firing with probability
``prob``, in that order (the kinds and ranges of MONAI's ``RandAffine``,
``RandScaleIntensity``, ``RandShiftIntensity`` and ``RandGaussianNoise`` that the
workbench used per sample before; ``tests/test_augment.py`` checks the result
against MONAI's own deterministic transforms with the same parameters).

Every draw is a function of ``(seed, epoch, subject index)`` only
(:meth:`BatchAugment.draw`): the parameters come from a NumPy generator seeded with
:func:`~gazimed_lab.data.sampling.derive_seed`, and the noise from a torch generator
on the images' device seeded from that draw. Each subject is transformed on its
own, so its result does not depend on the batch it lands in, on the number of
processes (DDP), or on a resume from a checkpoint. The noise stream differs
between CPU and CUDA (each device's own generator): a run is reproducible on the
kind of device it ran on.

The items of a batch whose affine fires are resampled by one ``grid_sample`` call
(torch spreads it over its threads); intensity changes and noise run per item, in
place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.utils import create_rotate, create_scale, create_translate

from gazimed_lab.config import DataConfig
from gazimed_lab.data.sampling import derive_seed

__all__ = ["PADDING_MODES", "BatchAugment", "SubjectDraw"]

#: How the affine fills voxels moved in from outside the field of view.
PADDING_MODES: tuple[str, ...] = ("zeros", "border")
_DATA = DataConfig()  # defaults are the config's ``aug_*`` (typed once)


@dataclass(frozen=True)
class SubjectDraw:
    """The random choices for one subject in one epoch (``None``: that transform did not fire).

    Attributes
    ----------
    rotate, translate, zoom
        The random affine's rotation about each axis (radians), shift (voxels) and
        zoom factors, as MONAI's ``Affine(rotate_params, translate_params,
        scale_params)`` takes them; ``None`` when the affine does not fire.
    scale
        Per-channel intensity factors ``1 + f``.
    shift
        Per-channel intensity offsets.
    noise_std
        Standard deviation of the added Gaussian noise.
    noise_seed
        Seed of the noise generator (drawn always, used when noise fires).
    """

    rotate: tuple[float, float, float] | None
    translate: tuple[float, float, float] | None
    zoom: tuple[float, float, float] | None
    scale: tuple[float, ...] | None
    shift: tuple[float, ...] | None
    noise_std: float | None
    noise_seed: int

    @property
    def fired(self) -> bool:
        """Whether any transform fires for this subject."""
        return any(v is not None for v in (self.rotate, self.scale, self.shift, self.noise_std))

    @property
    def affine(self) -> np.ndarray | None:
        """(4, 4) float64 map from centred output to centred input voxel coordinates.

        MONAI's convention (``AffineGrid``): rotate @ translate @ scale.
        """
        if self.rotate is None or self.translate is None or self.zoom is None:
            return None
        return (np.asarray(create_rotate(3, list(self.rotate)), dtype=np.float64)
                @ np.asarray(create_translate(3, list(self.translate)), dtype=np.float64)
                @ np.asarray(create_scale(3, list(self.zoom)), dtype=np.float64))


class BatchAugment:
    """Random affine, intensity scale / shift and Gaussian noise on a batch, per subject.

    Parameters
    ----------
    prob
        Probability of each transform (drawn independently per subject).
    rotate_deg
        Maximum rotation about each axis, degrees.
    scale
        Maximum relative zoom per axis (factor drawn in ``1 +/- scale``).
    translate_vox
        Maximum shift along each axis, voxels.
    intensity
        Maximum relative intensity scale and absolute shift (per channel).
    noise_std
        Maximum standard deviation of the noise (drawn in ``[0, noise_std)``).
    padding_mode
        ``zeros`` (the normalized volumes are 0 outside the brain) or ``border``.
    seed
        The run's seed (``system.seed``).
    """

    def __init__(
        self,
        prob: float = _DATA.aug_prob,
        rotate_deg: float = _DATA.aug_rotate_deg,
        scale: float = _DATA.aug_scale,
        translate_vox: float = _DATA.aug_translate_vox,
        intensity: float = _DATA.aug_intensity,
        noise_std: float = _DATA.aug_noise_std,
        padding_mode: str = "zeros",
        seed: int = 0,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"`data.aug_prob` must be in [0, 1], got {prob!r}")
        for name, value in (("aug_rotate_deg", rotate_deg), ("aug_scale", scale),
                            ("aug_translate_vox", translate_vox), ("aug_intensity", intensity),
                            ("aug_noise_std", noise_std)):
            if not value >= 0:
                raise ValueError(f"`data.{name}` must be >= 0, got {value!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"`padding_mode` must be one of {PADDING_MODES}, got "
                             f"{padding_mode!r}")
        self.prob = float(prob)
        self.rotate = math.radians(rotate_deg)
        self.scale = float(scale)
        self.translate = float(translate_vox)
        self.intensity = float(intensity)
        self.noise_std = float(noise_std)
        self.padding_mode = padding_mode
        self.seed = int(seed)
        self.spatial = bool(rotate_deg or scale or translate_vox)
        self._scratch: dict[tuple[Any, ...], torch.Tensor] = {}

    @classmethod
    def from_config(cls, data: Any, seed: int = 0) -> BatchAugment:
        """Build from a config's ``data`` section (``aug_*`` fields)."""
        return cls(prob=float(data.aug_prob), rotate_deg=float(data.aug_rotate_deg),
                   scale=float(data.aug_scale), translate_vox=float(data.aug_translate_vox),
                   intensity=float(data.aug_intensity), noise_std=float(data.aug_noise_std),
                   seed=seed)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_scratch"] = {}  # per-process buffers never travel to workers
        return state

    # ------------------------------------------------------------------ draws
    def draw(self, epoch: int, index: int, channels: int) -> SubjectDraw:
        """Draw the choices for subject ``index`` in ``epoch``: a function of (seed, epoch, index).

        Always the same number of values is drawn, whichever transforms fire.
        """
        rng = np.random.default_rng(derive_seed(self.seed, epoch, index))
        fire = rng.random(4) < self.prob
        rot = rng.uniform(-self.rotate, self.rotate, 3)
        zoom = 1.0 + rng.uniform(-self.scale, self.scale, 3)
        move = rng.uniform(-self.translate, self.translate, 3)
        factors = 1.0 + rng.uniform(-self.intensity, self.intensity, channels)
        offsets = rng.uniform(-self.intensity, self.intensity, channels)
        std = float(rng.uniform(0.0, self.noise_std))
        noise_seed = int(rng.integers(0, 2**62))
        spatial = bool(fire[0] and self.spatial)

        def three(values: np.ndarray) -> tuple[float, float, float] | None:
            return (float(values[0]), float(values[1]), float(values[2])) if spatial else None

        return SubjectDraw(
            rotate=three(rot), translate=three(move), zoom=three(zoom),
            scale=tuple(float(v) for v in factors) if fire[1] and self.intensity else None,
            shift=tuple(float(v) for v in offsets) if fire[2] and self.intensity else None,
            noise_std=std if fire[3] and self.noise_std else None,
            noise_seed=noise_seed,
        )

    # ------------------------------------------------------------------ apply
    def __call__(self, images: torch.Tensor, modality_mask: torch.Tensor,
                 keys: Sequence[tuple[int, int]], inplace: bool = False) -> torch.Tensor:
        """Augment ``images`` (B, C, D, H, W) float32; item ``b`` is subject ``keys[b]``.

        Parameters
        ----------
        images
            Float32 batch on any device.
        modality_mask
            (B, 2) ``[MRI present, PET present]``: the PET channels of a subject
            without PET are zero again afterwards.
        keys
            ``(epoch, subject index)`` of each item (the training sampler's keys).
        inplace
            Write into ``images`` (the caller owns it) instead of a copy.
        """
        if images.ndim != 5 or images.dtype != torch.float32:
            raise ValueError(f"`images` must be a (B, C, D, H, W) float32 tensor, got "
                             f"{tuple(images.shape)} {images.dtype}")
        if len(keys) != images.shape[0]:
            raise ValueError(f"`keys` must hold one (epoch, index) per item, got {len(keys)} "
                             f"for a batch of {images.shape[0]}")
        channels = int(images.shape[1])
        draws = [self.draw(int(e), int(i), channels) for e, i in keys]
        out = images if inplace else images.clone()
        if not any(d.fired for d in draws):
            return out
        has_pet = (modality_mask[:, 1] > 0.5).tolist()
        moving = [(b, d.affine) for b, d in enumerate(draws) if d.affine is not None]
        if moving:
            self._affine(out, moving)
        for b, d in enumerate(draws):
            if d.fired:
                self._intensity_and_noise(out[b], d, bool(has_pet[b]))
        return out

    def _intensity_and_noise(self, x: torch.Tensor, d: SubjectDraw, has_pet: bool) -> None:
        """Scale, shift and add noise to one (C, D, H, W) sample in place."""
        channels = x.shape[0]
        if d.scale is not None:
            x.mul_(torch.tensor(d.scale, dtype=x.dtype, device=x.device).view(channels, 1, 1, 1))
        if d.shift is not None:
            x.add_(torch.tensor(d.shift, dtype=x.dtype, device=x.device).view(channels, 1, 1, 1))
        if d.noise_std is not None:
            noise = self._noise(x, d.noise_seed)
            noise.mul_(d.noise_std)  # mul, then add (no fused alpha): one rounding everywhere
            x.add_(noise)
        if channels > 1 and not has_pet:
            x[1:].zero_()

    def _noise(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """Draw standard normal noise shaped like ``x`` from a generator seeded with ``seed``."""
        generator = torch.Generator(device=x.device).manual_seed(seed)
        if x.device.type != "cpu":
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        key = (tuple(x.shape), x.dtype)
        buffer = self._scratch.get(key)
        if buffer is None:  # reused: a fresh large CPU buffer costs its page faults every time
            from gazimed_lab.data.batches import host_empty

            buffer = self._scratch[key] = host_empty(tuple(x.shape), x.dtype)
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, out=buffer)

    def _affine(self, out: torch.Tensor, moving: list[tuple[int, np.ndarray]]) -> None:
        """Resample the items ``moving`` names, in place (trilinear, ``padding_mode``).

        One ``grid_sample`` over those items (torch parallelizes it over them); each
        item's grid depends on its own matrix only, so it comes out as if alone.
        """
        shape = tuple(int(n) for n in out.shape[2:])
        items = [b for b, _ in moving]
        grid = torch.cat([_sampling_grid(a, shape, out.device) for _, a in moving])
        source = out if items == list(range(out.shape[0])) else out[items]
        moved = F.grid_sample(source, grid, mode="bilinear", padding_mode=self.padding_mode,
                              align_corners=False)
        for j, b in enumerate(items):
            out[b].copy_(moved[j])


def _sampling_grid(affine: np.ndarray, shape: tuple[int, ...],
                   device: torch.device) -> torch.Tensor:
    """``grid_sample`` grid (1, D, H, W, 3) of an affine in MONAI's convention.

    Output voxel ``p`` (centred coordinates) samples the input at ``affine @ p``,
    normalized as ``2 q / n`` (``align_corners=False``), as MONAI's ``Resample`` does.
    Built by broadcasting (elementwise, the same rounding whatever else is in the batch).
    """
    sizes = np.asarray(shape, dtype=np.float64)
    # grid channel g holds the coordinate along input axis 2 - g (x = W, y = H, z = D)
    order = [2, 1, 0]
    coef = 2.0 * affine[order, :3] / sizes[order, None]   # (3 grid channels, 3 output axes)
    offset = 2.0 * affine[order, 3] / sizes[order]
    f32 = torch.float32
    axes = [torch.arange(n, dtype=f32, device=device) - (n - 1) / 2.0 for n in shape]
    c = torch.as_tensor(coef, dtype=f32, device=device)
    o = torch.as_tensor(offset, dtype=f32, device=device)
    depth_height = (axes[0].view(-1, 1, 1, 1) * c[:, 0] + o) + axes[1].view(1, -1, 1, 1) * c[:, 1]
    grid = depth_height + axes[2].view(1, 1, -1, 1) * c[:, 2]
    return grid.unsqueeze(0)
