"""Per-subject preprocessing and the Dataset of cached volumes.

:func:`preprocess_subject` turns one subject's MRI (and PET) files into the
(C, D, H, W) float32 array that is cached: load, conform each to the grid through
its own affine (MRI and PET may come on different grids), check that the two agree
in world space, normalize, stack the channels. :class:`VolumeDataset` serves
cached arrays with their clinical features as batch items. Training augmentation
runs on whole batches (:class:`~gazimed_lab.data.augment.BatchAugment`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gazimed_lab.data.agreement import agreement_problem, brain_and_rim, pair_agreement
from gazimed_lab.data.batches import as_float32, read_batch
from gazimed_lab.data.grid import Grid
from gazimed_lab.data.images import ImageError, conform_flagged, load_volume
from gazimed_lab.data.normalize import (
    normalize_mri,
    normalize_pet,
    pet_minus_mri,
    reference_mask,
)

__all__ = [
    "MRI_NORMALIZATION",
    "VolumeDataset",
    "preprocess_subject",
    "warm_preprocessing",
]

#: Name of the MRI normalization, part of the cache key.
MRI_NORMALIZATION = "zscore_brain_mask"


def _named(func: Any, where: str, *args: Any) -> np.ndarray:
    """Call a normalization function; add the file to its error message."""
    try:
        return np.asarray(func(*args), dtype=np.float32)
    except ValueError as exc:
        raise ImageError(f"{exc}; file: {where}") from exc


def warm_preprocessing(grid: Grid, channels: int, pet_reference: str) -> None:
    """Compute the per-grid masks :func:`preprocess_subject` reuses (cached per process).

    The MNI brain mask, the normalization's reference regions and the pair-agreement
    rim on ``grid``: a process that calls this before forking workers hands them the
    masks, so no worker rebuilds them and none has to wait for a first subject.
    """
    reference_mask("whole_brain", grid)  # the brain mask (template) and reference regions
    if channels >= 2:
        brain_and_rim(grid)
        try:
            reference_mask(pet_reference, grid)
        except ValueError:  # too coarse a grid: each subject's build reports it, by file
            pass


def preprocess_subject(
    mri: str,
    pet: str | None,
    grid: Grid,
    channels: int,
    pet_reference: str,
    subject: str = "",
    accept_flagged: bool = False,
    notes: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load, conform and normalize one subject's volumes.

    Parameters
    ----------
    mri, pet
        NIfTI paths; ``pet`` is None or "" when the subject has no PET.
    grid
        Target MNI grid.
    channels
        1: MRI; 2: MRI, PET; 3: MRI, PET, PET - MRI.
    pet_reference
        Reference region for the PET ratio (see ``normalize.PET_REFERENCES``).
    subject
        Subject id, added to messages.
    accept_flagged
        Use an image flagged as probably not in MNI space (brain coverage below
        the minimum, :func:`~gazimed_lab.data.images.coverage_problem`), or an MRI /
        PET pair that does not agree in world space once conformed
        (:func:`~gazimed_lab.data.agreement.agreement_problem`), instead of refusing it
        (``data.accept_flagged_images``).
    notes
        When given, filled with ``grid_actions`` (``{"mri": action, "pet": action}``,
        see :func:`~gazimed_lab.data.images.conform_to_grid`), ``flagged`` (the
        flag messages of accepted images) and, with a PET, ``pair`` (field-of-view
        overlap and agreement), which the cache stores with the array.

    Returns
    -------
    image : ndarray, float32, (C, D, H, W)
        PET channels are zeros when PET is missing.
    modality_mask : ndarray, float32, (2,)
        ``[1, has_pet]`` (``has_pet`` is 0 with ``channels=1``: no PET is used).

    Raises
    ------
    ImageError
        From the loaders, naming the file (and both files when MRI and PET do not
        agree in world space); for a flagged image or pair unless ``accept_flagged``.
    """
    found: dict[str, Any] = {"grid_actions": {}, "flagged": []}

    def flagged(flag: str | None) -> None:
        if flag is not None:
            if not accept_flagged:
                raise ImageError(flag)
            found["flagged"].append(flag)

    def conform(img: Any, what: str, where: str) -> np.ndarray:
        data, action, flag = conform_flagged(img, grid, what=what, where=where)
        found["grid_actions"][what] = action
        flagged(flag)
        return data

    pet_path = pet if channels >= 2 and pet else None  # None: no PET used
    use_pet = pet_path is not None
    tag = f", subject {subject}" if subject else ""
    mri_img = load_volume(mri, what="mri", where=f"{mri}{tag}")
    mri_arr = conform(mri_img, "mri", f"{mri}{tag}")
    mri_n = _named(normalize_mri, f"{mri}{tag}", mri_arr, grid)
    planes = [mri_n]
    if channels >= 2:
        if pet_path is not None:
            pet_img = load_volume(pet_path, what="pet", where=f"{pet}{tag}")
            pet_arr = conform(pet_img, "pet", f"{pet}{tag}")
            pair = pair_agreement(mri_img, mri_arr, pet_img, pet_arr, grid)
            found["pair"] = {"fov_overlap": pair.fov_overlap, "agreement": pair.agreement}
            flagged(agreement_problem(pair, grid, f"pet: {pet}; mri: {mri}{tag}"))
            pet_n = _named(normalize_pet, f"{pet}{tag}", pet_arr, grid, pet_reference)
        else:
            pet_n = np.zeros(grid.shape, dtype=np.float32)
        planes.append(pet_n)
        if channels == 3:
            if use_pet:
                planes.append(_named(pet_minus_mri, f"{pet}{tag}", mri_n, pet_n, grid))
            else:
                planes.append(np.zeros(grid.shape, dtype=np.float32))
    image = np.stack(planes).astype(np.float32, copy=False)
    mask = np.array([1.0, 1.0 if use_pet else 0.0], dtype=np.float32)
    if notes is not None:
        notes.update(found)
    return image, mask


class VolumeDataset(Dataset):
    """Subjects of one split: cached volumes, clinical features and targets.

    Parameters
    ----------
    arrays
        Path of each subject's cached ``.npy`` (C, D, H, W) array.
    modality_masks
        (N, 2) float32, ``[1, has_pet]``.
    features, feature_mask
        (N, F) float32 clinical features and their observed mask.
    targets
        (N,) float32, NaN where unknown.
    subject_ids
        N subject ids.
    augment
        Training augmentation (a :class:`~gazimed_lab.data.augment.BatchAugment`),
        applied to whole batches by the loaders and the data module, or None (val /
        test / predict).
    session_ids
        N session ids when the manifest has sessions (rows are sessions), else None.
        Items then also hold ``session_id`` and ``subject_index`` (the position of the
        item's subject among the dataset's distinct subjects), which the metrics use
        to average a subject's sessions.

    Items are indexed by subject position, or by ``(epoch, index)`` (what
    :class:`~gazimed_lab.data.sampling.SubjectSampler` yields in training): such an
    item also holds ``augment_key`` ``(epoch, index)`` when the dataset augments,
    from which the batch augmentation draws that subject's transforms. Indexed
    directly, an item's ``images`` are float32; the loaders read them in the cache
    dtype (:meth:`as_stored`) and convert whole batches
    (:mod:`gazimed_lab.data.batches`).
    """

    def __init__(
        self,
        arrays: list[str],
        modality_masks: np.ndarray,
        features: np.ndarray,
        feature_mask: np.ndarray,
        targets: np.ndarray,
        subject_ids: list[str],
        augment: Any = None,
        session_ids: list[str] | None = None,
    ) -> None:
        self.arrays = list(arrays)
        self.modality_masks = np.asarray(modality_masks, dtype=np.float32).reshape(-1, 2)
        self.features = np.asarray(features, dtype=np.float32)
        self.feature_mask = np.asarray(feature_mask, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.subject_ids = [str(s) for s in subject_ids]
        self.augment = augment
        self.session_ids = None if session_ids is None else [str(s) for s in session_ids]
        first: dict[str, int] = {}
        self.subject_index = [first.setdefault(s, len(first)) for s in self.subject_ids]
        self.stored_dtype = False

    def as_stored(self, augment: bool = True) -> VolumeDataset:
        """Return a view of this dataset whose items keep the cache dtype (the loaders' view).

        ``augment=False`` also drops the augmentation (an unaugmented train loader).
        """
        view = copy.copy(self)
        view.stored_dtype = True
        if not augment:
            view.augment = None
        return view

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[1] if isinstance(key, tuple) else key
        # A whole read into a NumPy array (huge pages for large arrays, see batches.py).
        image = torch.from_numpy(np.load(self.arrays[index]))
        if not self.stored_dtype and image.dtype != torch.float32:
            image, _ = as_float32(image)  # torch converts float16 vectorized; numpy does not
        return self._item(key, image)

    def __getitems__(self, keys: list[int | tuple[int, int]]) -> list[dict[str, Any]]:
        """Items of a batch (what a DataLoader asks for); in the cache dtype, read at once.

        The loaders' view (:meth:`as_stored`) reads the batch's volumes straight into
        one (B, C, D, H, W) buffer (:func:`~gazimed_lab.data.batches.read_batch`), each
        item's ``images`` a view of it, which the collation then takes as the stacked batch.
        """
        if not self.stored_dtype or len(keys) < 2:
            return [self[key] for key in keys]
        images = read_batch([self.arrays[k[1] if isinstance(k, tuple) else k] for k in keys])
        if images is None:
            return [self[key] for key in keys]
        return [self._item(key, images[b]) for b, key in enumerate(keys)]

    def _item(self, key: int | tuple[int, int], image: torch.Tensor) -> dict[str, Any]:
        """Return the item of ``key`` (an index, or ``(epoch, index)``) with its ``image``."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        mask = torch.from_numpy(self.modality_masks[index].copy())
        item: dict[str, Any] = {
            "images": image,
            "modality_mask": mask,
            "clinical_features": torch.from_numpy(self.features[index].copy()),
            "clinical_mask": torch.from_numpy(self.feature_mask[index].copy()),
            "targets": torch.tensor(self.targets[index], dtype=torch.float32),
            "subject_id": self.subject_ids[index],
        }
        if epoch is not None and self.augment is not None:
            item["augment_key"] = (int(epoch), int(index))
        if self.session_ids is not None:
            item["session_id"] = self.session_ids[index]
            item["subject_index"] = torch.tensor(self.subject_index[index], dtype=torch.int64)
        return item
