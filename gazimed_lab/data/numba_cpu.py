"""What the compiled CPU kernels share: numba's options, float16 reads, threads of our own.

- **Float16 reads.** numba has no float16 type on the CPU; :func:`half_to_float` is an
  LLVM ``fpext`` of the 16 bits (``vcvtph2ps`` with F16C: as fast as torch's conversion
  and bit-exact, NaNs aside), so a kernel reads a cached float16 volume (viewed as
  ``uint16``) without converting it first.
- **Threads of our own.** :func:`run_slabs` shares a volume's slabs out over a pool of
  Python threads running ``nogil`` kernels, never over torch's OpenMP workers: after each
  parallel torch op those spin on the other cores for milliseconds (libgomp's default
  ``GOMP_SPINCOUNT``), and a kernel thread that shares a core with them gains nothing
  (README, Performance: the 2 mm kernel took 2.4 ms on two threads alone, 5.0 ms right
  after a torch copy, as on one thread). Our threads sleep when idle.
- :func:`write_pointwise`: a volume converted to float32, with an intensity change and
  noise folded into the same write (the augmentation of a sample that does not move);
  :func:`stack_volumes`: stacking a batch (copies, or float16 converted to float32).

numba caches each kernel beside the module that defines it and checks only that file:
after editing this module, remove ``__pycache__/*.nbi`` / ``*.nbc`` of the kernels that use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

__all__ = ["half_to_float", "jit", "kernel_view", "run_slabs", "stack_volumes", "value",
           "write_pointwise", "write_terms"]

#: Compiled once per machine (``cache``: beside the module, or numba's user cache dir).
jit = numba.njit(nogil=True, boundscheck=False, cache=True,
                 fastmath={"contract", "arcp", "nsz", "reassoc"})  # NaN and inf propagate
_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}
_SLAB = 6  # slices per piece of work when several threads share a volume


@intrinsic
def half_to_float(typingctx: Any, bits: Any) -> Any:  # pragma: no cover - compiled
    """Return the float32 value of a float16's 16 bits (a ``uint16``), inside a kernel."""
    if bits != types.uint16:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def value(x: Any) -> Any:
    """Return an array element as float32 in a kernel: float16 bits converted, float32 as is."""
    raise NotImplementedError("value() is for numba kernels")  # pragma: no cover


@overload(value)
def _value(x: Any) -> Any:  # pragma: no cover - compiled
    # the implementations' signatures must match value's, annotations included
    def from_half(x: Any) -> Any:
        return half_to_float(x)  # type: ignore[call-arg]  # an intrinsic: typed by numba

    def as_is(x: Any) -> Any:
        return x

    return {types.uint16: from_half, types.float32: as_is}.get(x)


def write_terms(scale: Sequence[float] | None, shift: Sequence[float] | None,
                noise: np.ndarray | None, noise_std: float, keep: int | None,
                shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Check a write's intensity change and noise for (C, D, H, W) ``shape``, as kernels take them.

    Returns ``(scale, shift, noise, keep)``: per-channel float32 factors (default 1) and
    offsets (default 0), the noise flattened (empty when there is none or ``noise_std`` is
    0), and the number of channels kept (default all).
    """
    channels = shape[0]
    terms = []
    for name, values, default in (("scale", scale, 1.0), ("shift", shift, 0.0)):
        array = np.full(channels, default, dtype=np.float32) if values is None else \
            np.asarray(values, dtype=np.float32).reshape(-1)
        if array.shape != (channels,):
            raise ValueError(f"`{name}` must hold one value per channel ({channels}), got "
                             f"{len(array)}")
        terms.append(array)
    kept = channels if keep is None else int(keep)
    if not 0 <= kept <= channels:
        raise ValueError(f"`keep` must be in [0, {channels}] (channels kept), got {kept}")
    if noise is None or not noise_std:
        flat = np.empty(0, dtype=np.float32)
    elif noise.shape != shape or noise.dtype != np.float32 or not noise.flags.c_contiguous:
        raise ValueError(f"`noise` must be a C-contiguous float32 array of shape {shape}, "
                         f"got {noise.shape} {noise.dtype}")
    else:
        flat = noise.reshape(-1)
    return terms[0], terms[1], flat, kept


def kernel_view(array: np.ndarray, name: str) -> np.ndarray:
    """Return a C-contiguous float16 or float32 volume as kernels read it (float16 as uint16)."""
    if array.dtype not in (np.float16, np.float32) or not array.flags.c_contiguous:
        raise ValueError(f"`{name}` must be a C-contiguous float16 or float32 array, got "
                         f"{array.shape} {array.dtype}")
    return array.view(np.uint16) if array.dtype == np.float16 else array


def run_slabs(work: Callable[[int, int], None], depth: int, threads: int,
              slab: int = _SLAB) -> None:
    """Call ``work(start, stop)`` over slabs of ``range(depth)``, on ``threads`` threads.

    Slabs (of ``slab``: each call costs some microseconds of dispatch, so a cheap ``work``
    takes larger ones) are handed out as the threads come for them (this thread works too):
    a helper slowed down by other work on its core takes fewer, and nobody waits for a
    fixed share. ``work`` must release the GIL (a ``nogil`` kernel) and write disjoint
    parts for disjoint slabs.
    """
    parts = max(1, min(int(threads), depth))
    if parts == 1:
        work(0, depth)
        return
    key = (os.getpid(), parts - 1)  # a forked child gets its own pool (threads do not fork)
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = ThreadPoolExecutor(parts - 1, thread_name_prefix="gazimed-kernel")
    slabs = iter(range(0, depth, slab))  # ``next`` on it is atomic under the GIL

    def take() -> None:
        for start in slabs:
            work(start, min(depth, start + slab))

    jobs = [pool.submit(take) for _ in range(parts - 1)]
    take()
    for job in jobs:
        job.result()


def write_pointwise(out: np.ndarray, source: np.ndarray, threads: int = 1, *,
                    scale: Sequence[float] | None = None, shift: Sequence[float] | None = None,
                    noise: np.ndarray | None = None, noise_std: float = 0.0,
                    keep: int | None = None) -> None:
    """Write ``scale[c] * source[c] + shift[c] + noise_std * noise[c]`` into ``out``, channel ``c``.

    ``source`` (C, D, H, W) float16 or float32 and ``out`` float32, both C-contiguous
    (``out`` may be ``source`` itself when that is float32); ``noise`` shaped like them.
    By default a plain conversion (``scale`` 1, ``shift`` 0, no noise); the channels
    from ``keep`` on are zero. Slabs of the first spatial axis go to ``threads`` threads.
    """
    if source.ndim != 4 or out.shape != source.shape or out.dtype != np.float32:
        raise ValueError(f"`out` must be a float32 array of the source's (C, D, H, W) shape "
                         f"{source.shape}, got {out.shape} {out.dtype}")
    src, dst = kernel_view(source, "source"), kernel_view(out, "out")
    factors, offsets, values, keep = write_terms(scale, shift, noise, noise_std, keep,
                                                 source.shape)
    plain = scale is None and shift is None and not values.size  # a conversion: exact, -0 too
    rows = source[0, 0].size

    def work(start: int, stop: int) -> None:
        _points(src.reshape(-1), dst.reshape(-1), factors, offsets, values,
                np.float32(noise_std), keep, plain, source[0].size, start * rows,
                stop * rows)

    run_slabs(work, source.shape[1], threads)


def stack_volumes(out: np.ndarray, volumes: Sequence[np.ndarray], threads: int = 1) -> None:
    """Copy C-contiguous (C, D, H, W) float16 or float32 volumes into ``out[0]``, ``out[1]``...

    ``out`` (B, C, D, H, W) of their dtype, or float32 for float16 volumes (converted as
    they are copied: one pass instead of a stack and a conversion). Torch's stack on
    several threads, without waking its OpenMP workers; one share-out for the whole batch.
    """
    first = volumes[0] if len(volumes) else None
    if first is None or out.shape != (len(volumes), *first.shape) or out.ndim != 5 or any(
            v.shape != first.shape or v.dtype != first.dtype for v in volumes) or \
            out.dtype not in (first.dtype, np.float32):
        got = "no volumes" if first is None else f"{len(volumes)} volumes of {first.shape} " \
            f"{sorted({str(v.dtype) for v in volumes})}"
        raise ValueError(f"`out` must be a (B, C, D, H, W) array of the volumes' shape, in their "
                         f"dtype or float32, got {out.shape} {out.dtype} for {got}")
    sources = [kernel_view(v, "volume").reshape(v.shape[0], -1) for v in volumes]
    target = kernel_view(out, "out").reshape(*out.shape[:2], -1)
    depth, channels = out.shape[2], out.shape[1]
    rows = first[0, 0].size
    convert = out.dtype != first.dtype
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    none = np.empty(0, np.float32)

    def work(start: int, stop: int) -> None:  # slices [start, stop) of all volumes in a row
        for j in range(start // depth, (stop - 1) // depth + 1):
            lo, hi = max(start - j * depth, 0), min(stop - j * depth, depth)
            if convert:
                _points(sources[j].reshape(-1), target[j].reshape(-1), ones, zeros, none,
                        np.float32(0.0), channels, True, sources[j].shape[1], lo * rows,
                        hi * rows)
            else:
                _copy(sources[j], target[j], lo * rows, hi * rows)

    run_slabs(work, len(volumes) * depth, threads, slab=4 * _SLAB)  # a copy is cheap


@jit
def _copy(src: np.ndarray, out: np.ndarray, start: int,
          stop: int) -> None:  # pragma: no cover - compiled
    for c in range(src.shape[0]):
        o, s = out[c, start:stop], src[c, start:stop]
        for i in range(o.size):  # from 0: vectorized (a slice assignment is not)
            o[i] = s[i]


@jit
def _points(src: np.ndarray, out: np.ndarray, scale: np.ndarray, shift: np.ndarray,
            noise: np.ndarray, std: np.float32, keep: int, plain: bool, n: int, start: int,
            stop: int) -> None:  # pragma: no cover - compiled
    """Voxels ``[start, stop)`` of each channel (``n`` voxels each) of flat ``src`` into ``out``.

    The loops run over 1-D views from 0 (no index can be negative: they vectorize).
    """
    for c in range(scale.size):
        o = out[c * n + start:c * n + stop]
        if c >= keep:
            o[:] = 0.0
            continue
        s = src[c * n + start:c * n + stop]
        sc, sh = scale[c], shift[c]
        if plain:
            for i in range(o.size):
                o[i] = value(s[i])
        elif noise.size:
            z = noise[c * n + start:c * n + stop]
            for i in range(o.size):
                o[i] = value(s[i]) * sc + sh + std * z[i]
        else:
            for i in range(o.size):
                o[i] = value(s[i]) * sc + sh
