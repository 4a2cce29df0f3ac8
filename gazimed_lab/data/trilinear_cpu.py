"""Exact trilinear resampling of one volume on the CPU, compiled with numba.

The same values as one 3D ``grid_sample`` (``bilinear``, ``zeros`` padding,
``align_corners=False``) of the affine's sampling grid, to float32 rounding (the
coordinates are computed in float64 here, from the float32 grid there: at most about
1e-5 apart on volumes in [0, 1], ``tests/test_trilinear_cpu.py``). On the CPU torch's 3D
kernel is scalar and runs one thread per item; this one computes only the output voxels
whose eight taps can reach a nonzero input voxel (from the support's per-row extents:
the brain mask's, about a third of the 2 mm grid), skips the tap checks inside the grid,
and splits the volume's first axis over threads. On the 2 mm grid it is about 2x the two
2D passes of :mod:`gazimed_lab.data.resample` on one core (README, Performance).

Every output voxel is computed on its own from the input: the result does not depend on
the number of threads.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

__all__ = ["row_extents", "trilinear_numpy"]

#: Compiled once per machine (``cache``: beside this module, or numba's user cache dir).
_jit = numba.njit(nogil=True, boundscheck=False, cache=True,
                  fastmath={"contract", "arcp", "nsz", "reassoc"})  # NaN and inf propagate
_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}
_SLAB = 6  # output slices per piece of work when several threads share a volume


def row_extents(mask: np.ndarray) -> np.ndarray:
    """(D, H, 2) first and last ``x`` of a 3D boolean mask in each row ``(z, y)``.

    An empty row gets ``(W, -1)``.
    """
    mask = np.asarray(mask, dtype=bool)
    width = mask.shape[2]
    anyx = mask.any(axis=2)
    extents = np.empty((*mask.shape[:2], 2), dtype=np.int64)
    extents[..., 0] = np.where(anyx, np.argmax(mask, axis=2), width)
    extents[..., 1] = np.where(anyx, width - 1 - np.argmax(mask[:, :, ::-1], axis=2), -1)
    return extents


def trilinear_numpy(source: np.ndarray, out: np.ndarray, affine: np.ndarray,
                    extents: np.ndarray, threads: int = 1) -> None:
    """Write ``source`` (C, D, H, W, C-contiguous float32) resampled with ``affine`` into ``out``.

    ``affine``: the (4, 4) map from centred output to centred input voxel coordinates
    (MONAI's convention, as :func:`~gazimed_lab.data.resample.resample_`); ``extents``:
    :func:`row_extents` of a mask outside which ``source`` is zero (wrong if it is not).
    Zeros padding; slabs of the first axis are shared out over ``threads`` threads.
    """
    shape = source.shape[1:]
    if source.dtype != np.float32 or not source.flags.c_contiguous or source.ndim != 4:
        raise ValueError(f"`source` must be a C-contiguous (C, D, H, W) float32 array, got "
                         f"{source.shape} {source.dtype}")
    if out.shape != source.shape or out.dtype != np.float32 or out is source:
        raise ValueError(f"`out` must be another float32 array of shape {source.shape}, got "
                         f"{out.shape} {out.dtype}")
    if extents.shape != (*shape[:2], 2):
        raise ValueError(f"`extents` must be (D, H, 2) = {(*shape[:2], 2)}, got {extents.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    centre = np.array([(n - 1) / 2.0 for n in shape])
    lin = np.ascontiguousarray(affine[:3, :3])
    off = np.ascontiguousarray(affine[:3, 3] + centre)
    depth = shape[0]
    parts = max(1, min(int(threads), depth))
    if parts == 1:
        _rows(source, out, lin, off, extents, 0, depth)
        return
    key = (os.getpid(), parts - 1)  # a forked child gets its own pool (threads do not fork)
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = ThreadPoolExecutor(parts - 1, thread_name_prefix="gazimed-trilinear")
    # Slabs of slices handed out as the threads come for them (this thread works too): a
    # helper that torch's spinning OpenMP workers slow down takes fewer, and nobody waits
    # for a fixed half. ``next`` on one shared list iterator is atomic under the GIL.
    slabs = iter(range(0, depth, _SLAB))

    def work() -> None:
        for start in slabs:
            _rows(source, out, lin, off, extents, start, min(depth, start + _SLAB))

    jobs = [pool.submit(work) for _ in range(parts - 1)]
    work()
    for job in jobs:
        job.result()


@_jit
def _interval(b: float, s: float, lo: float, hi: float, wlo: float,
              whi: float) -> tuple[float, float]:  # pragma: no cover - compiled
    """``[wlo, whi]`` cut to the ``w`` where ``lo <= b + s w <= hi``."""
    if s > 1e-12:
        return max(wlo, (lo - b) / s), min(whi, (hi - b) / s)
    if s < -1e-12:
        return max(wlo, (hi - b) / s), min(whi, (lo - b) / s)
    if lo <= b <= hi:
        return wlo, whi
    return 1.0, 0.0


@_jit
def _row_range(b0: float, b1: float, b2: float, s0: float, s1: float, s2: float,
               ext: np.ndarray, depth: int, height: int,
               width: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """Output ``[w0, w1)`` of a row whose taps can reach a nonzero input voxel."""
    wlo, whi = _interval(b0, s0, -1.0, float(depth), 0.0, width - 1.0)
    wlo, whi = _interval(b1, s1, -1.0, float(height), wlo, whi)
    wlo, whi = _interval(b2, s2, -1.0, float(width), wlo, whi)
    if wlo > whi:
        return 0, 0
    za, zb = b0 + s0 * wlo, b0 + s0 * whi
    ya, yb = b1 + s1 * wlo, b1 + s1 * whi
    z0 = max(0, math.floor(min(za, zb)))
    z1 = min(depth - 1, math.floor(max(za, zb)) + 1)
    y0 = max(0, math.floor(min(ya, yb)))
    y1 = min(height - 1, math.floor(max(ya, yb)) + 1)
    x0, x1 = width, -1
    for z in range(z0, z1 + 1):  # the input rows the taps of this line reach
        for y in range(y0, y1 + 1):
            x0 = min(x0, ext[z, y, 0])
            x1 = max(x1, ext[z, y, 1])
    if x0 > x1:
        return 0, 0
    wlo, whi = _interval(b2, s2, x0 - 1.0, x1 + 1.0, wlo, whi)
    if wlo > whi:
        return 0, 0
    w0 = max(0, math.ceil(wlo) - 1)  # one voxel of slack each side against rounding
    w1 = min(width, math.floor(whi) + 2)
    return w0, max(w0, w1)


@_jit
def _inside(z: float, y: float, x: float, depth: int, height: int,
            width: int) -> bool:  # pragma: no cover - compiled
    return 0.0 <= z < depth - 1 and 0.0 <= y < height - 1 and 0.0 <= x < width - 1


@_jit
def _checked(channel: np.ndarray, z: float, y: float, x: float, depth: int, height: int,
             width: int) -> float:  # pragma: no cover - compiled
    """One trilinear sample with zero padding: taps outside the grid count 0."""
    zf, yf, xf = math.floor(z), math.floor(y), math.floor(x)
    fz, fy, fx = z - zf, y - yf, x - xf
    iz, iy, ix = int(zf), int(yf), int(xf)
    acc = 0.0
    for dz in range(2):
        zz = iz + dz
        if zz < 0 or zz >= depth:
            continue
        wz = fz if dz else 1.0 - fz
        for dy in range(2):
            yy = iy + dy
            if yy < 0 or yy >= height:
                continue
            wy = fy if dy else 1.0 - fy
            for dx in range(2):
                xx = ix + dx
                if 0 <= xx < width:
                    acc += wz * wy * (fx if dx else 1.0 - fx) * channel[zz, yy, xx]
    return acc


@_jit
def _rows(src: np.ndarray, out: np.ndarray, lin: np.ndarray, off: np.ndarray,
          ext: np.ndarray, d_start: int, d_stop: int) -> None:  # pragma: no cover - compiled
    """Resample output slices ``[d_start, d_stop)`` of ``src`` (C, D, H, W) into ``out``."""
    channels, depth, height, width = src.shape
    cd, ch, cw = (depth - 1) / 2.0, (height - 1) / 2.0, (width - 1) / 2.0
    s0, s1, s2 = lin[0, 2], lin[1, 2], lin[2, 2]
    for d in range(d_start, d_stop):
        for h in range(height):
            # the row's input position at w: (b0, b1, b2) + w (s0, s1, s2)
            b0 = lin[0, 0] * (d - cd) + lin[0, 1] * (h - ch) - s0 * cw + off[0]
            b1 = lin[1, 0] * (d - cd) + lin[1, 1] * (h - ch) - s1 * cw + off[1]
            b2 = lin[2, 0] * (d - cd) + lin[2, 1] * (h - ch) - s2 * cw + off[2]
            w0, w1 = _row_range(b0, b1, b2, s0, s1, s2, ext, depth, height, width)
            for c in range(channels):
                out[c, d, h, :w0] = 0.0
                out[c, d, h, w1:] = 0.0
            if w1 <= w0:
                continue
            # [i0, i1): all eight taps inside the grid (no checks)
            lo, hi = _interval(b0, s0, 0.0, depth - 1.0, float(w0), w1 - 1.0)
            lo, hi = _interval(b1, s1, 0.0, height - 1.0, lo, hi)
            lo, hi = _interval(b2, s2, 0.0, width - 1.0, lo, hi)
            i0, i1 = w0, w0
            if lo <= hi:
                i0 = max(w0, math.ceil(lo))
                i1 = max(i0, min(w1, math.floor(hi) + 1))
                while i0 < i1 and not _inside(b0 + s0 * i0, b1 + s1 * i0, b2 + s2 * i0,
                                              depth, height, width):
                    i0 += 1
                while i1 > i0 and not _inside(b0 + s0 * (i1 - 1), b1 + s1 * (i1 - 1),
                                              b2 + s2 * (i1 - 1), depth, height, width):
                    i1 -= 1
            if i1 <= i0:
                i0, i1 = w0, w0
            for w in range(w0, w1):
                if i0 <= w < i1:
                    continue
                z, y, x = b0 + s0 * w, b1 + s1 * w, b2 + s2 * w
                for c in range(channels):
                    out[c, d, h, w] = _checked(src[c], z, y, x, depth, height, width)
            for w in range(i0, i1):
                z, y, x = b0 + s0 * w, b1 + s1 * w, b2 + s2 * w
                iz, iy, ix = int(z), int(y), int(x)
                gz, gy, gx = np.float32(z - iz), np.float32(y - iy), np.float32(x - ix)
                for c in range(channels):
                    sc = src[c]
                    v00 = sc[iz, iy, ix] + gx * (sc[iz, iy, ix + 1] - sc[iz, iy, ix])
                    v01 = sc[iz, iy + 1, ix] + gx * (sc[iz, iy + 1, ix + 1] - sc[iz, iy + 1, ix])
                    v10 = sc[iz + 1, iy, ix] + gx * (sc[iz + 1, iy, ix + 1] - sc[iz + 1, iy, ix])
                    v11 = (sc[iz + 1, iy + 1, ix]
                           + gx * (sc[iz + 1, iy + 1, ix + 1] - sc[iz + 1, iy + 1, ix]))
                    v0 = v00 + gy * (v01 - v00)
                    out[c, d, h, w] = v0 + gz * (v10 + gy * (v11 - v10) - v0)
