"""Batches from cached volumes: collation, host buffers and the float32 conversion.

The loaders read each cached volume as stored (float16 by default) and stack them.
Where the conversion to float32 and the training augmentation happen depends on who
consumes the loader:

- **on the device** (``on_device=True``): the batch stays in the cache dtype, so
  half the bytes are copied, pinned and sent to the GPU; the data module's
  ``on_after_batch_transfer`` converts it to float32 there and augments it (training
  only). Lightning uses these loaders when it runs the data module.
- **in the loader** (``on_device=False``): the collate function converts to
  float32 and, for keyed training items, augments on CPU (in the worker processes
  when ``data.num_workers > 0``). Loaders used outside a running trainer (a
  notebook iterating ``dm.train_dataloader()``, ``trainer.fit(model, loader)``,
  prediction) are of this kind, so whatever a model receives is float32.

**Large CPU buffers come from NumPy** (:func:`host_empty`). A 2 mm batch of
4 x 3 x 91 x 109 x 91 float32 takes 43 MB: above glibc's largest mmap threshold
(32 MiB), so every such buffer is a fresh mapping, and its first touch faults it in
4 KiB pages (about 10,600 faults per batch; costly in a virtual machine). NumPy
asks Linux for transparent huge pages for large arrays (``madvise``); torch's
allocator does so only with ``THP_MEM_ALLOC_ENABLE=1``. Where THP is set to
``madvise`` (this project's AMD EPYC VM), that alone made the 2 mm cached loader
several times slower than a raw read of the cache (README, Performance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from gazimed_lab.data.numba_cpu import stack_volumes, write_pointwise

__all__ = ["BatchCollate", "as_float32", "host_empty", "stack_images"]

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64}


def host_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Return an uninitialized CPU tensor backed by a NumPy array (huge pages where granted).

    Parameters
    ----------
    shape
        Tensor shape.
    dtype
        ``torch.float16``, ``float32`` or ``float64``.
    """
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(map(str, _NUMPY_DTYPES))}, got {dtype}")
    return torch.from_numpy(np.empty(tuple(int(n) for n in shape), dtype=_NUMPY_DTYPES[dtype]))


def as_float32(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``images`` as float32 on its own device; and whether a new tensor was made.

    On CPU the new tensor is a :func:`host_empty` buffer (float16 volumes converted by
    threads of ours, :func:`~gazimed_lab.data.numba_cpu.write_pointwise`); on a GPU the
    conversion runs there.
    """
    if images.dtype == torch.float32:
        return images, False
    if images.device.type == "cpu":
        out = host_empty(images.shape, torch.float32)
        if images.dtype == torch.float16 and images.ndim >= 3 and images.is_contiguous():
            spatial = images.shape[-3:]
            write_pointwise(out.numpy().reshape(-1, *spatial),
                            images.numpy().reshape(-1, *spatial), torch.get_num_threads())
        else:
            out.copy_(images)
        return out, True
    return images.to(torch.float32), True


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack equally shaped tensors into one batch tensor.

    In a DataLoader worker, torch's own collation (into shared memory, which the
    batch then travels through); in the main process, into a :func:`host_empty` buffer,
    volumes copied by threads of ours
    (:func:`~gazimed_lab.data.numba_cpu.stack_volumes`: no OpenMP worker is left spinning
    beside the augmentation's kernels).
    """
    if get_worker_info() is not None:
        return default_collate(images)
    first = images[0]
    out = host_empty((len(images), *first.shape), first.dtype)
    if first.ndim == 4 and first.dtype in (torch.float16, torch.float32) and all(
            i.shape == first.shape and i.dtype == first.dtype and i.device.type == "cpu"
            and i.is_contiguous() for i in images):
        stack_volumes(out.numpy(), [i.numpy() for i in images], torch.get_num_threads())
    else:
        torch.stack(images, out=out)
    return out


class BatchCollate:
    """Collate items of :class:`~gazimed_lab.data.transforms.VolumeDataset` into a batch.

    Parameters
    ----------
    on_device
        Keep images in the cache dtype and pass the items' ``augment_key`` on (the data
        module's ``on_after_batch_transfer`` converts and augments); otherwise convert to
        float32 here and augment keyed items with ``augment``.
    augment
        A :class:`~gazimed_lab.data.augment.BatchAugment` (training loaders), or None.

    Notes
    -----
    A batch is the README's batch dict; with ``on_device`` its ``images`` may be
    float16 and a keyed training batch also holds ``augment_key`` (list of
    ``(epoch, index)``), which the data module's hook removes.
    """

    def __init__(self, on_device: bool = False, augment: Any = None) -> None:
        self.on_device = bool(on_device)
        self.augment = augment

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate ``items`` (dicts with the same keys)."""
        items = [dict(item) for item in items]
        keys = [item.pop("augment_key") for item in items] if "augment_key" in items[0] else None
        images = stack_images([item.pop("images") for item in items])
        batch: dict[str, Any] = default_collate(items)
        if self.on_device:
            batch["images"] = images
            if keys is not None:
                batch["augment_key"] = [(int(e), int(i)) for e, i in keys]
            return batch
        if keys is not None and self.augment is not None:  # the stacked batch is ours
            images = self.augment(images, batch["modality_mask"], keys, inplace=True)
        else:
            images, _ = as_float32(images)
        batch["images"] = images
        return batch
