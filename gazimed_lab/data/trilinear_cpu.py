"""Exact trilinear resampling of one volume on the CPU, compiled with numba.

The same values as one 3D ``grid_sample`` (``bilinear``, ``zeros`` padding,
``align_corners=False``) of the affine's sampling grid, to float32 rounding (the
coordinates are computed in float64 here, from the float32 grid there: at most about
1e-5 apart on volumes in [0, 1], ``tests/test_trilinear_cpu.py``). On the CPU torch's 3D
kernel is scalar and runs one thread per item; this one computes only the output voxels
whose eight taps can reach a nonzero input voxel (from the support's per-row extents:
the brain mask's, about 28 % of the 2 mm grid), skips the tap checks inside the grid,
reads a float16 source as it is, folds an intensity change and noise into its write, and
splits the volume's first axis over threads of our own. On the 2 mm grid the affine of
the augmentation takes 2.2-2.5x less than the two 2D passes of
:mod:`gazimed_lab.data.resample` (README, Performance).

Every output voxel is computed on its own from the input: the result does not depend on
the number of threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gazimed_lab.data.numba_cpu import jit as _jit
from gazimed_lab.data.numba_cpu import kernel_view, run_slabs, value, write_terms

__all__ = ["row_extents", "trilinear_numpy"]



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
                    extents: np.ndarray, threads: int = 1, *,
                    scale: Sequence[float] | None = None, shift: Sequence[float] | None = None,
                    noise: np.ndarray | None = None, noise_std: float = 0.0,
                    keep: int | None = None) -> None:
    """Write ``source`` (C, D, H, W, C-contiguous) resampled with ``affine`` into ``out``.

    ``source`` is float32, or float16 (read as it is: each tap converted in the kernel);
    ``out`` another float32 array. ``affine``: the (4, 4) map from centred output to
    centred input voxel coordinates (MONAI's convention, as
    :func:`~gazimed_lab.data.resample.resample_`); ``extents``: :func:`row_extents` of a
    mask outside which ``source`` is zero (wrong if it is not). Zeros padding; slabs of
    the first axis are shared out over ``threads`` threads of our own
    (:func:`~gazimed_lab.data.numba_cpu.run_slabs`).

    The write can fold in an intensity change and noise: channel ``c < keep`` of ``out``
    becomes ``scale[c] * resampled + shift[c] + noise_std * noise[c]`` (``scale`` 1,
    ``shift`` 0 and no noise by default; ``noise`` shaped like ``source``), and the
    channels from ``keep`` on (default: all channels kept) are zero. Every voxel of ``out``
    is written.
    """
    shape = source.shape[1:]
    if source.dtype not in (np.float16, np.float32) or not source.flags.c_contiguous \
            or source.ndim != 4:
        raise ValueError(f"`source` must be a C-contiguous (C, D, H, W) float16 or float32 "
                         f"array, got {source.shape} {source.dtype}")
    if (out.shape != source.shape or out.dtype != np.float32 or not out.flags.c_contiguous
            or np.shares_memory(out, source)):
        raise ValueError(f"`out` must be another C-contiguous float32 array of shape "
                         f"{source.shape}, got {out.shape} {out.dtype}")
    if extents.shape != (*shape[:2], 2):
        raise ValueError(f"`extents` must be (D, H, 2) = {(*shape[:2], 2)}, got {extents.shape}")
    factors, offsets, values, keep = write_terms(scale, shift, noise, noise_std, keep,
                                                 source.shape)
    affine = np.asarray(affine, dtype=np.float64)
    centre = np.array([(n - 1) / 2.0 for n in shape])
    lin = np.ascontiguousarray(affine[:3, :3])
    off = np.ascontiguousarray(affine[:3, 3] + centre)
    src = kernel_view(source, "source")

    def work(start: int, stop: int) -> None:
        _rows(src, out, lin, off, extents, factors, offsets, values, float(noise_std), keep,
              start, stop)

    run_slabs(work, shape[0], threads)


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
                    acc += wz * wy * (fx if dx else 1.0 - fx) * value(channel[zz, yy, xx])
    return acc


@_jit
def _reaches(ext: np.ndarray, z: float, y: float, x: float, depth: int,
             height: int) -> bool:  # pragma: no cover - compiled
    """Whether one of the eight taps at ``(z, y, x)`` lies within a row's extent."""
    iz, iy, ix = math.floor(z), math.floor(y), math.floor(x)
    for zz in range(max(iz, 0), min(iz + 2, depth)):
        for yy in range(max(iy, 0), min(iy + 2, height)):
            if ext[zz, yy, 0] <= ix + 1 and ix <= ext[zz, yy, 1]:
                return True
    return False


@_jit
def _rows(src: np.ndarray, out: np.ndarray, lin: np.ndarray, off: np.ndarray,
          ext: np.ndarray, scale: np.ndarray, shift: np.ndarray, noise: np.ndarray,
          std: float, keep: int, d_start: int,
          d_stop: int) -> None:  # pragma: no cover - compiled
    """Write output slices ``[d_start, d_stop)`` of ``src`` (C, D, H, W) into ``out``.

    Per row: the voxels whose taps can reach the support (``[w0, w1)``, cut to the first
    and last that do), of which those with all taps inside the grid (``[i0, i1)``) are
    planned once (flat index and weights) and interpolated channel by channel without
    checks; the rest of ``[w0, w1)`` is sampled with checks; outside it the resampled value
    is 0. Flat indices are unsigned (numba checks signed ones for wraparound).
    """
    channels, depth, height, width = src.shape
    flat, oflat = src.reshape(-1), out.reshape(-1)
    plane = height * width
    volume = depth * plane
    noisy = noise.size > 0
    sd = np.float32(std)
    cd, ch, cw = (depth - 1) / 2.0, (height - 1) / 2.0, (width - 1) / 2.0
    s0, s1, s2 = lin[0, 2], lin[1, 2], lin[2, 2]
    taps = np.empty(width, dtype=np.uint64)
    uw, up, one = np.uint64(width), np.uint64(plane), np.uint64(1)
    gx = np.empty(width, dtype=np.float32)
    gy, gz = np.empty_like(gx), np.empty_like(gx)
    for d in range(d_start, d_stop):
        for h in range(height):
            # the row's input position at w: (b0, b1, b2) + w (s0, s1, s2)
            b0 = lin[0, 0] * (d - cd) + lin[0, 1] * (h - ch) - s0 * cw + off[0]
            b1 = lin[1, 0] * (d - cd) + lin[1, 1] * (h - ch) - s1 * cw + off[1]
            b2 = lin[2, 0] * (d - cd) + lin[2, 1] * (h - ch) - s2 * cw + off[2]
            w0, w1 = _row_range(b0, b1, b2, s0, s1, s2, ext, depth, height, width)
            while w0 < w1 and not _reaches(ext, b0 + s0 * w0, b1 + s1 * w0, b2 + s2 * w0,
                                           depth, height):
                w0 += 1
            while w1 > w0 and not _reaches(ext, b0 + s0 * (w1 - 1), b1 + s1 * (w1 - 1),
                                           b2 + s2 * (w1 - 1), depth, height):
                w1 -= 1
            i0, i1 = _unchecked(b0, b1, b2, s0, s1, s2, w0, w1, depth, height, width)
            for k in range(i1 - i0):  # the plan of [i0, i1)
                w = i0 + k
                z, y, x = b0 + s0 * w, b1 + s1 * w, b2 + s2 * w
                iz, iy, ix = int(z), int(y), int(x)
                taps[k] = np.uint64((iz * height + iy) * width + ix)
                gz[k], gy[k], gx[k] = z - iz, y - iy, x - ix
            row = d * plane + h * width
            for c in range(channels):
                at = c * volume + row  # this row of channel c in ``out`` (and ``noise``)
                o = oflat[at:at + width]  # 1-D views indexed from 0: the loops vectorize
                if c >= keep:
                    o[:] = 0.0
                    continue
                sc, sh = scale[c], shift[c]
                o[:w0] = sh
                o[w1:] = sh
                for w in range(w0, i0):  # taps off the grid: checked
                    o[w] = _checked(src[c], b0 + s0 * w, b1 + s1 * w, b2 + s2 * w,
                                    depth, height, width) * sc + sh
                for w in range(i1, w1):
                    o[w] = _checked(src[c], b0 + s0 * w, b1 + s1 * w, b2 + s2 * w,
                                    depth, height, width) * sc + sh
                inner, p0 = o[i0:i1], np.uint64(c * volume)
                for k in range(inner.size):
                    p = taps[k] + p0
                    a, b, g = gx[k], gy[k], gz[k]
                    v00 = _lerp(flat, p, one, a)
                    v01 = _lerp(flat, p + uw, one, a)
                    q = p + up
                    v10 = _lerp(flat, q, one, a)
                    v11 = _lerp(flat, q + uw, one, a)
                    v0 = v00 + b * (v01 - v00)
                    inner[k] = (v0 + g * (v10 + b * (v11 - v10) - v0)) * sc + sh
                if noisy:  # one more pass over the row (in cache)
                    z = noise[at:at + width]
                    for w in range(width):
                        o[w] += sd * z[w]


@_jit
def _lerp(flat: np.ndarray, p: np.uint64, one: np.uint64,
          a: np.float32) -> np.float32:  # pragma: no cover - compiled
    """``flat[p]`` to ``flat[p + 1]`` at ``a`` (as float32)."""
    lo = value(flat[p])
    return lo + a * (value(flat[p + one]) - lo)


@_jit
def _unchecked(b0: float, b1: float, b2: float, s0: float, s1: float, s2: float, w0: int,
               w1: int, depth: int, height: int,
               width: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """``[i0, i1)`` within ``[w0, w1)``: the voxels whose eight taps are all inside the grid."""
    lo, hi = _interval(b0, s0, 0.0, depth - 1.0, float(w0), w1 - 1.0)
    lo, hi = _interval(b1, s1, 0.0, height - 1.0, lo, hi)
    lo, hi = _interval(b2, s2, 0.0, width - 1.0, lo, hi)
    if w1 <= w0 or lo > hi:
        return w0, w0
    i0 = max(w0, math.ceil(lo))
    i1 = max(i0, min(w1, math.floor(hi) + 1))
    while i0 < i1 and not _inside(b0 + s0 * i0, b1 + s1 * i0, b2 + s2 * i0, depth, height,
                                  width):
        i0 += 1
    while i1 > i0 and not _inside(b0 + s0 * (i1 - 1), b1 + s1 * (i1 - 1), b2 + s2 * (i1 - 1),
                                  depth, height, width):
        i1 -= 1
    if i1 <= i0:
        return w0, w0
    return i0, i1
