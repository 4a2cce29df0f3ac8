"""Training augmentation on whole batches, on the device the model trains on.

:class:`BatchAugment` applies a small random affine (rotation, zoom, shift), a
per-channel intensity scale and shift, and Gaussian noise to a batch of
``(B, C, D, H, W)`` float32 images, each transform firing with probability
``prob``, in that order (the kinds and ranges of MONAI's ``RandAffine``,
``RandScaleIntensity``, ``RandShiftIntensity`` and ``RandGaussianNoise`` that the
workbench used per sample before; ``tests/test_augment.py`` checks the result
against MONAI's own deterministic transforms with the same parameters, with the
``trilinear`` resampler).

Every draw is a function of ``(seed, epoch, subject index)`` only
(:meth:`BatchAugment.draw`): the parameters come from a NumPy generator seeded with
:func:`~gazimed_lab.data.sampling.derive_seed`. Each subject is transformed on its
own, so its result does not depend on the batch it lands in, on the number of
processes (DDP), or on a resume from a checkpoint.

The noise comes from one bank per run: ``2 n`` independent standard normals (``n``
voxels in a sample) drawn on the CPU from the seed and moved to the images' device
once; a subject's noise in an epoch is the ``n`` consecutive values from an offset it
draws uniformly in ``[0, n]`` from ``(seed, epoch, subject)``, times its drawn std. So
within a subject the noise is i.i.d. Gaussian, as MONAI's ``RandGaussianNoise`` draws
it; any two draws (two subjects, or one subject in two epochs) get windows of the same
values shifted against each other: at each voxel the two values are independent
unless the offsets coincide (chance ``1 / (n + 1)``). Drawing ``n`` fresh normals per
subject cost 8-11 ms at 2 mm on one CPU core, as much as the whole random affine
(README, Performance); a bank per epoch cost 27 ms each epoch (0.8 ms per sample over a
34-subject epoch); the bank per run costs that once. The same bank on every device:
CPU and CUDA runs get the same noise.

The items of a batch whose affine fires are resampled by
:mod:`gazimed_lab.data.resample` (``data.aug_resampler``: exact trilinear by default, a
compiled kernel on CPU and one 3D ``grid_sample`` on CUDA; or two 2D passes); intensity
changes and noise run per item. On the CPU each item is written once by a kernel of ours,
read from the batch as served (float16 or float32): the trilinear kernel writes a moved
item with its intensity change and noise folded in, a pointwise pass the others
(:meth:`BatchAugment._apply_cpu`); an item resampled in two passes is written once from
their output, the same way (:meth:`BatchAugment._write_moved`). On CUDA intensity and
noise run in place after the affine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms.utils import create_rotate, create_scale, create_translate

from gazimed_lab.config import RESAMPLERS, DataConfig
from gazimed_lab.data.batches import host_empty
from gazimed_lab.data.numba_cpu import write_pointwise
from gazimed_lab.data.resample import (
    Box,
    Support,
    box_index,
    kernel_resamples,
    resample_,
    resample_into,
    resampled_apart,
    resamples_apart,
)
from gazimed_lab.data.sampling import derive_seed

__all__ = ["PADDING_MODES", "BatchAugment", "SubjectDraw"]

#: How the affine fills voxels moved in from outside the field of view.
PADDING_MODES: tuple[str, ...] = ("zeros", "border")
_DATA = DataConfig()  # defaults are the config's ``aug_*`` (typed once)
_NOISE_STREAM = 0x6E6F697365  # derive_seed(seed, this): the run's noise bank


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
        Where the subject's noise window starts in the run's bank (``noise_seed
        % (n + 1)`` for samples of ``n`` voxels; drawn always, used when noise fires).
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
    resampler
        How the affine resamples (:data:`~gazimed_lab.config.RESAMPLERS`; see
        :mod:`gazimed_lab.data.resample`).
    support
        A :class:`~gazimed_lab.data.resample.Support` (the grid's brain mask: the
        datamodule passes it) or a box outside which every image is zero; the affine then
        computes only what can be nonzero. ``None``: the whole grid.
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
        resampler: str = _DATA.aug_resampler,
        support: Box | Support | None = None,
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
        if resampler not in RESAMPLERS:
            raise ValueError(f"`data.aug_resampler` must be one of {RESAMPLERS}, got "
                             f"{resampler!r}")
        self.prob = float(prob)
        self.rotate = math.radians(rotate_deg)
        self.scale = float(scale)
        self.translate = float(translate_vox)
        self.intensity = float(intensity)
        self.noise_std = float(noise_std)
        self.padding_mode = padding_mode
        self.resampler = resampler
        self.support = support
        self.seed = int(seed)
        self.spatial = bool(rotate_deg or scale or translate_vox)
        self._scratch: dict[tuple[Any, ...], torch.Tensor] = {}

    @classmethod
    def from_config(cls, data: Any, seed: int = 0,
                    support: Box | Support | None = None) -> BatchAugment:
        """Build from a config's ``data`` section (``aug_*`` fields)."""
        return cls(prob=float(data.aug_prob), rotate_deg=float(data.aug_rotate_deg),
                   scale=float(data.aug_scale), translate_vox=float(data.aug_translate_vox),
                   intensity=float(data.aug_intensity), noise_std=float(data.aug_noise_std),
                   resampler=str(data.aug_resampler), support=support, seed=seed)

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
        """Augment ``images`` (B, C, D, H, W); item ``b`` is subject ``keys[b]``; float32 out.

        Parameters
        ----------
        images
            Float32 or float16 batch on any device. A float16 batch is converted on its
            device into a new float32 tensor (on the CPU an item the trilinear kernel
            moves is converted into the kernel's source only, and written once, by it).
        modality_mask
            (B, 2) ``[MRI present, PET present]``: the PET channels of a subject
            without PET are zero again afterwards.
        keys
            ``(epoch, subject index)`` of each item (the training sampler's keys).
        inplace
            Write into a float32 ``images`` (the caller owns it) instead of a copy.
        """
        if images.ndim != 5 or images.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"`images` must be a (B, C, D, H, W) float32 or float16 tensor, "
                             f"got {tuple(images.shape)} {images.dtype}")
        if len(keys) != images.shape[0]:
            raise ValueError(f"`keys` must hold one (epoch, index) per item, got {len(keys)} "
                             f"for a batch of {images.shape[0]}")
        channels = int(images.shape[1])
        draws = [self.draw(int(e), int(i), channels) for e, i in keys]
        has_pet = (modality_mask[:, 1] > 0.5).tolist()
        if images.device.type == "cpu":
            return self._apply_cpu(images, draws, has_pet, inplace)
        if images.dtype != torch.float32:
            out = images.to(torch.float32)
        else:
            out = images if inplace else images.clone()
        moving = [(b, d.affine) for b, d in enumerate(draws) if d.affine is not None]
        boxes = self._affine(out, moving) if moving else {}
        for b, d in enumerate(draws):
            if b in boxes:
                self._write_moved(out[b], d, bool(has_pet[b]), boxes[b])
            elif d.fired:
                self._intensity_and_noise(out[b], d, bool(has_pet[b]))
        return out

    def _apply_cpu(self, images: torch.Tensor, draws: list[SubjectDraw], has_pet: list[bool],
                   inplace: bool) -> torch.Tensor:
        """:meth:`__call__` on the CPU: each item written once, by a kernel of ours.

        An item the trilinear kernel moves is read from the batch as served (float16 or
        float32) and written with its intensity change and noise; an item that does not
        move is converted, scaled, shifted and noised in one pass
        (:func:`~gazimed_lab.data.numba_cpu.write_pointwise`). Only the two passes
        (``two_pass``) and ``border`` padding still go through torch. No torch op runs
        here otherwise, so no OpenMP worker spins beside the kernels' threads.
        """
        threads = torch.get_num_threads()
        own = inplace and images.dtype == torch.float32 and images.is_contiguous()
        out = images if own else host_empty(images.shape, torch.float32)
        for b, d in enumerate(draws):
            x, item = out[b].numpy(), images[b].detach().contiguous().numpy()
            keep = x.shape[0] if has_pet[b] or x.shape[0] == 1 else 1
            if d.affine is not None and kernel_resamples(self.resampler, d.affine,
                                                         images.device, self.padding_mode):
                if own:  # the kernel needs a source apart from its output
                    source = self._buffer(("source",), out[b]).numpy()
                    write_pointwise(source, item, threads)
                    item = source
                noise = self._noise(out[b], d.noise_seed) if d.noise_std is not None else None
                resample_into(torch.from_numpy(item), out[b], d.affine, self.support,
                              scale=d.scale, shift=d.shift, noise=noise,
                              noise_std=d.noise_std or 0.0, keep=keep)
            elif d.affine is not None:  # two passes, or border padding: torch
                if not own:
                    write_pointwise(x, item, threads)
                moved = self._affine(out, [(b, d.affine)])
                if b in moved:
                    self._write_moved(out[b], d, bool(has_pet[b]), moved[b])
                else:
                    self._intensity_and_noise(out[b], d, bool(has_pet[b]))
            elif d.fired:
                noise = self._noise(out[b], d.noise_seed) if d.noise_std is not None else None
                write_pointwise(x, item, threads, scale=d.scale, shift=d.shift,
                                noise=None if noise is None else noise.numpy(),
                                noise_std=d.noise_std or 0.0, keep=keep)
            elif not own:
                write_pointwise(x, item, threads)
        return out

    def _intensity_and_noise(self, x: torch.Tensor, d: SubjectDraw, has_pet: bool) -> None:
        """Scale, shift and add noise to one (C, D, H, W) sample in place."""
        channels = x.shape[0]
        if d.scale is not None or d.shift is not None:
            scales = d.scale or (1.0,) * channels
            shifts = d.shift or (0.0,) * channels
            for c in range(channels):  # x * scale + shift in one pass per channel
                torch.add(_scalar(shifts[c], x), x[c], alpha=scales[c], out=x[c])
        if d.noise_std is not None:
            x.add_(self._noise(x, d.noise_seed), alpha=d.noise_std)  # one pass
        if channels > 1 and not has_pet:
            x[1:].zero_()

    def _write_moved(self, x: torch.Tensor, d: SubjectDraw, has_pet: bool,
                     moved: tuple[Box, torch.Tensor] | None) -> None:
        """Write one (C, D, H, W) sample from its affine output, scaled, shifted and noised.

        ``moved`` is :func:`~gazimed_lab.data.resample.resampled_apart`'s ``(box, values)``
        (zero outside the box; ``None``: zero everywhere). The same values as the affine
        followed by :meth:`_intensity_and_noise`, in two passes per channel instead of
        four: the fill outside the box is ``shift + std * noise``, the box adds
        ``scale * values`` to it.
        """
        channels = x.shape[0]
        scales = d.scale or (1.0,) * channels
        shifts = d.shift or (0.0,) * channels
        noise = self._noise(x, d.noise_seed) if d.noise_std is not None else None
        kept = channels if has_pet or channels == 1 else 1
        x[kept:].zero_()  # the PET channels of a subject without PET
        for c in range(kept):
            if noise is not None:
                torch.add(_scalar(shifts[c], x), noise[c], alpha=d.noise_std, out=x[c])
            else:
                x[c].fill_(shifts[c])
            if moved is None:
                continue
            box, values = moved
            target = x[c][box_index(box)[1:]]
            if noise is None and shifts[c] == 0.0:  # the fill was zeros: write, not add
                torch.mul(values[c], scales[c], out=target)
            else:
                target.add_(values[c], alpha=scales[c])

    def noise_bank(self, numel: int, device: torch.device) -> torch.Tensor:
        """Return the run's bank: ``2 * numel`` standard normals, float32, on ``device``.

        Drawn on the CPU from the seed (the same values on every device and in every
        epoch) and kept; a bank for another sample size replaces it.
        """
        key = ("bank", int(numel), str(device))
        bank = self._scratch.get(key)
        if bank is None:
            for old in [k for k in self._scratch if k[0] == "bank"]:
                del self._scratch[old]
            generator = torch.Generator().manual_seed(derive_seed(self.seed, _NOISE_STREAM))
            bank = torch.randn(2 * numel, generator=generator, dtype=torch.float32)
            bank = self._scratch[key] = bank.to(device)
        return bank

    def _noise(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """Return standard normals shaped like ``x``: the bank window ``seed`` picks."""
        n = x.numel()
        start = int(seed) % (n + 1)
        return self.noise_bank(n, x.device)[start:start + n].view(x.shape)

    def _affine(self, out: torch.Tensor, moving: list[tuple[int, np.ndarray]]
                ) -> dict[int, tuple[Box, torch.Tensor] | None]:
        """Resample the items ``moving`` names (``resampler``, ``padding_mode``).

        Items resampled together by one 3D ``grid_sample`` are overwritten in place; for
        the items resampled apart, returns
        :func:`~gazimed_lab.data.resample.resampled_apart`'s result by item, for
        :meth:`_write_moved` (they are left unchanged here).
        """
        args = (self.resampler, self.padding_mode)
        apart = {b: resamples_apart(self.resampler, a, out.device, self.padding_mode)
                 for b, a in moving}
        flat = [(b, a) for b, a in moving if not apart[b]]
        if flat:
            resample_(out, flat, *args, support=self.support)
        return {b: resampled_apart(out[b], a, *args, support=self.support)
                for b, a in moving if apart[b]}

    def _buffer(self, key: tuple[Any, ...], like: torch.Tensor) -> torch.Tensor:
        """Return a float32 buffer shaped like ``like``, kept between batches (no fresh pages)."""
        full = (*key, tuple(like.shape), str(like.device))
        buffer = self._scratch.get(full)
        if buffer is None:
            for old in [k for k in self._scratch if k[:len(key)] == key]:
                del self._scratch[old]
            buffer = self._scratch[full] = torch.empty(like.shape, dtype=torch.float32,
                                                       device=like.device)
        return buffer


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """Return ``value`` as a 0-d tensor of ``like``'s dtype and device (for ``torch.add``)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)
