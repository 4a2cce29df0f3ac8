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

Even with huge pages, Linux zeroes each fresh page it hands out: for a 43 MB float32
batch about 0.9 ms per sample, more than the conversion itself (0.5 ms). So a buffer
of 32 MiB or more is **kept and handed out again once nothing refers to it**: a tensor
made by ``torch.from_numpy`` holds a reference to its array for as long as any tensor,
view, storage or exported ``.numpy()`` / DLPack of that memory lives, so an array whose
only holder is the keeper is free. A batch a caller keeps is never reused; what could
hide a holder (a reference cycle awaiting the collector) only makes a fresh buffer.
At most :data:`KEPT_PER_SHAPE` buffers per shape and dtype and :data:`KEPT_BYTES` in
all are kept, per process (:func:`release_host_buffers` lets them go). A free array's
reference count is measured once on the running interpreter; on a free-threaded build, or
where a tensor's reference cannot be seen, nothing is kept.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from gazimed_lab.data.numba_cpu import stack_volumes, write_pointwise

__all__ = ["KEPT_BYTES", "KEPT_PER_SHAPE", "BatchCollate", "as_float32", "host_empty",
           "read_batch", "release_host_buffers", "stack_images"]

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64}
REUSED_FROM = 32 << 20  #: bytes from which a buffer is kept (glibc maps larger ones afresh)
KEPT_PER_SHAPE = 3  #: a batch in the step, the next one prefetched, the one being made
KEPT_BYTES = 1 << 30  #: all kept buffers together
_KEPT: dict[tuple[tuple[int, ...], Any], list[np.ndarray]] = {}
_KEPT_LOCK = threading.Lock()
#: batches :func:`read_batch` made, not yet taken as a stack (:func:`_one_batch`)
_READ_AT_ONCE: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}


def _references(arrays: list[np.ndarray]) -> list[int]:
    """Return ``sys.getrefcount`` of each of ``arrays`` (for the check and its calibration)."""
    return [sys.getrefcount(array) for array in arrays]


def _free_count() -> int | None:
    """Return the count :func:`_references` sees on an array only its list holds, or None.

    CPython's reference counts are not stable between versions (its glossary), so the
    count is measured on the running interpreter. None (keep nothing) on a free-threaded
    build, or unless a tensor made from the array shows one more.
    """
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    probe = [np.empty(1, dtype=np.float32)]
    free = _references(probe)[0]
    held = torch.from_numpy(probe[0])
    seen = _references(probe)[0]
    del held
    return free if seen > free and _references(probe)[0] == free else None


_FREE = _free_count()  # an array's references while only the keeper holds it


def host_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Return an uninitialized CPU tensor backed by a NumPy array (huge pages where granted).

    Buffers of :data:`REUSED_FROM` bytes or more are kept and handed out again once no
    tensor refers to them (module docstring): their contents are whatever was there.

    Parameters
    ----------
    shape
        Tensor shape.
    dtype
        ``torch.float16``, ``float32`` or ``float64``.
    """
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(map(str, _NUMPY_DTYPES))}, got {dtype}")
    size = tuple(int(n) for n in shape)
    kind = np.dtype(_NUMPY_DTYPES[dtype])
    if _FREE is None or int(np.prod(size)) * kind.itemsize < REUSED_FROM:
        return torch.from_numpy(np.empty(size, dtype=kind))
    with _KEPT_LOCK:  # a free array gains a reference only here
        kept = _KEPT.setdefault((size, kind), [])
        for array, count in zip(kept, _references(kept)):
            if count == _FREE:  # no tensor refers to it any more
                return torch.from_numpy(array)
        array = np.empty(size, dtype=kind)
        held = sum(a.nbytes for arrays in _KEPT.values() for a in arrays)
        if len(kept) < KEPT_PER_SHAPE and held + array.nbytes <= KEPT_BYTES:
            kept.append(array)
    return torch.from_numpy(array)


def release_host_buffers() -> int:
    """Stop keeping the large host buffers (:func:`host_empty`); return how many were kept.

    Buffers still in use stay valid: they are freed when their last tensor goes.
    """
    with _KEPT_LOCK:
        count = sum(len(arrays) for arrays in _KEPT.values())
        _KEPT.clear()
    return count


def read_batch(paths: Sequence[str | os.PathLike[str]]) -> torch.Tensor | None:
    """Read equally shaped ``.npy`` volumes into one (B, ...) :func:`host_empty` batch, at once.

    Each file's data goes straight into its place in the batch (no array per file, no
    stack afterwards). Returns None when the files differ in shape or dtype or hold a
    dtype other than float16 / float32 (read them one by one then).

    Raises
    ------
    ValueError
        A file that is not a ``.npy`` array, or holds less data than its header says.
    """
    batch: torch.Tensor | None = None
    like: tuple[Any, ...] | None = None
    for b, path in enumerate(paths):
        with open(path, "rb") as fh:
            try:
                header = _HEADERS.get(np.lib.format.read_magic(fh))
                if header is None:  # a later format (non-latin-1 field names): np.load
                    return None
                shape, fortran, kind = header(fh)
            except ValueError as exc:
                raise ValueError(f"cache entry must be a .npy array, got {exc} ({path}); "
                                 f"rebuild the cache (delete the file)") from exc
            if like is None:
                like = (shape, fortran, kind)
                dtype = {np.dtype(np.float16): torch.float16,
                         np.dtype(np.float32): torch.float32}.get(np.dtype(kind))
                if fortran or dtype is None:
                    return None
                batch = host_empty((len(paths), *shape), dtype)
            elif (shape, fortran, kind) != like:
                return None
            assert batch is not None
            target = batch[b].numpy()
            read = fh.readinto(target.data.cast("B"))
            if read != target.nbytes:
                raise ValueError(f"cache entry must hold {target.nbytes} bytes of data for "
                                 f"{shape} {kind}, got {read} ({path}); a truncated file: "
                                 f"rebuild the cache (delete the file)")
    if batch is not None:
        _READ_AT_ONCE[id(batch)] = batch
    return batch


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


def stack_images(images: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stack equally shaped tensors into one batch tensor (in ``dtype`` in the main process).

    In a DataLoader worker, torch's own collation (into shared memory, which the
    batch then travels through), in the items' dtype; in the main process, into a
    :func:`host_empty` buffer of ``dtype`` (default: the items'), volumes copied by threads
    of ours (:func:`~gazimed_lab.data.numba_cpu.stack_volumes`: no OpenMP worker is left
    spinning beside the augmentation's kernels). float16 items stacked into float32 are
    converted in the same pass.
    """
    if get_worker_info() is not None:
        return default_collate(images)
    first = images[0]
    whole = _one_batch(images)
    if whole is not None and dtype in (None, first.dtype):
        return whole  # read at once (:func:`read_batch`): already stacked
    out = host_empty((len(images), *first.shape), first.dtype if dtype is None else dtype)
    if first.ndim == 4 and first.dtype in (torch.float16, torch.float32) and \
            out.dtype in (first.dtype, torch.float32) and all(
            i.shape == first.shape and i.dtype == first.dtype and i.device.type == "cpu"
            and i.is_contiguous() for i in images):
        stack_volumes(out.numpy(), [i.numpy() for i in images], torch.get_num_threads())
    else:
        torch.stack([i.to(out.dtype) for i in images], out=out)
    return out


def _one_batch(images: list[torch.Tensor]) -> torch.Tensor | None:
    """Return the batch :func:`read_batch` made whose items ``images`` are, in order and whole.

    Only a batch :func:`read_batch` made, and only once: any other tensor whose views
    happen to be stacked (a dataset's own preloaded volumes) is copied, never aliased.
    """
    base = images[0]._base
    if base is None or _READ_AT_ONCE.get(id(base)) is not base or len(images) != len(base):
        return None
    size = base[0].numel()
    for b, image in enumerate(images):
        if image._base is not base or image.storage_offset() != b * size or \
                image.shape != base.shape[1:] or not image.is_contiguous():
            return None
    del _READ_AT_ONCE[id(base)]  # taken as the stack once; a second stack copies
    return base


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
    dtype
        With ``on_device``: the dtype the main process stacks a batch that is not to be
        augmented into (float32 for a trainer on the CPU: the conversion joins the
        stack); None keeps the cache dtype. Without ``on_device`` always float32.

    Notes
    -----
    A batch is the README's batch dict; with ``on_device`` its ``images`` may be
    float16 and a keyed training batch also holds ``augment_key`` (list of
    ``(epoch, index)``), which the data module's hook removes.
    """

    def __init__(self, on_device: bool = False, augment: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        if dtype not in (None, *_NUMPY_DTYPES):
            raise ValueError(f"`dtype` must be None or one of {sorted(map(str, _NUMPY_DTYPES))}, "
                             f"got {dtype}")
        self.on_device = bool(on_device)
        self.augment = augment
        self.dtype = dtype if on_device else torch.float32

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate ``items`` (dicts with the same keys)."""
        items = [dict(item) for item in items]
        keys = [item.pop("augment_key") for item in items] if "augment_key" in items[0] else None
        augment = keys is not None and (self.on_device or self.augment is not None)
        # a batch to augment stays as stored (the augmentation reads it and converts)
        images = stack_images([item.pop("images") for item in items],
                              None if augment else self.dtype)
        batch: dict[str, Any] = default_collate(items)
        if self.on_device:
            batch["images"] = images
            if keys is not None:
                batch["augment_key"] = [(int(e), int(i)) for e, i in keys]
            return batch
        if augment:  # the stacked batch is ours
            images = self.augment(images, batch["modality_mask"], keys, inplace=True)
        else:
            images, _ = as_float32(images)  # a worker's batch arrives as stored
        batch["images"] = images
        return batch
