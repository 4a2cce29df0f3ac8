"""The training loader before issue 15, kept to be measured in the same run as its successor.

Until issue 15 each training item was read as float32 and augmented on its own by
MONAI's ``RandAffine``, ``RandScaleIntensity``, ``RandShiftIntensity`` and
``RandGaussianNoise`` (reseeded from (seed, epoch, subject)), then collated by torch;
:class:`MonaiItemDataset` does exactly that over the datamodule's training dataset.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gazimed_lab.data.sampling import derive_seed

__all__ = ["MonaiItemDataset"]


class MonaiItemDataset(Dataset):
    """Float32 items augmented one by one with MONAI (the pre-issue-15 training items).

    Parameters
    ----------
    dataset
        The data module's training :class:`~gazimed_lab.data.transforms.VolumeDataset`.
    data
        The config's ``data`` section (``aug_*``).
    seed
        The run's seed.
    augment
        False: the old cached loader without augmentation (float32 per item, torch's
        collation).
    """

    def __init__(self, dataset: Any, data: Any, seed: int, augment: bool = True) -> None:
        from monai.transforms import (
            Compose,
            RandAffine,
            RandGaussianNoise,
            RandScaleIntensity,
            RandShiftIntensity,
        )

        self.dataset = dataset.as_stored(augment=False)
        prob, rot = float(data.aug_prob), math.radians(float(data.aug_rotate_deg))
        scale, move = float(data.aug_scale), float(data.aug_translate_vox)
        shape = tuple(np.load(self.dataset.arrays[0], mmap_mode="r").shape[1:])
        spatial = [RandAffine(prob=prob, rotate_range=(rot,) * 3, scale_range=(scale,) * 3,
                              translate_range=(move,) * 3, mode="bilinear",
                              padding_mode="zeros", spatial_size=shape, cache_grid=True)
                   ] if rot or scale or move else []
        intensity = float(data.aug_intensity)
        self.transform = Compose([
            *spatial,
            RandScaleIntensity(factors=intensity, prob=prob, channel_wise=True),
            RandShiftIntensity(offsets=intensity, prob=prob, channel_wise=True),
            RandGaussianNoise(prob=prob, mean=0.0, std=float(data.aug_noise_std)),
        ])
        self.seed = int(seed)
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.dataset[index]
        image = item["images"].float()  # the old path: float32 per item
        if not self.augment:
            item["images"] = image
            return item
        self.transform.set_random_state(seed=derive_seed(self.seed, epoch, index) % (2**32))
        out = self.transform(image)
        out = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
        out = out.to(torch.float32).contiguous()
        if out.shape[0] > 1 and float(item["modality_mask"][1]) == 0.0:
            out[1:] = 0.0
        item["images"] = out
        return item
