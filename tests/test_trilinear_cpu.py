"""The CPU trilinear kernel against torch's 3D ``grid_sample`` on every voxel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms.utils import create_rotate, create_scale, create_translate

from gazimed_lab.data.resample import (
    Support,
    resample_,
    resample_into,
    resampled_apart,
    sampling_grid,
)
from gazimed_lab.data.trilinear_cpu import row_extents, trilinear_numpy

SHAPE = (19, 23, 17)


def _affine(rotate: list[float], translate: list[float], zoom: list[float]) -> np.ndarray:
    return (np.asarray(create_rotate(3, rotate), dtype=np.float64)
            @ np.asarray(create_translate(3, translate), dtype=np.float64)
            @ np.asarray(create_scale(3, zoom), dtype=np.float64))


def _reference(volume: torch.Tensor, affine: np.ndarray) -> torch.Tensor:
    grid = sampling_grid(affine, tuple(volume.shape[1:]), volume.device)
    return F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


def _blob_mask() -> np.ndarray:
    """An ellipsoid that touches the grid's last-axis faces (as the brain reaches k = 0)."""
    p = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2.0 for n in SHAPE], indexing="ij"))
    return (p[0] / 7.5) ** 2 + (p[1] / 9.0) ** 2 + (p[2] / 8.6) ** 2 <= 1.0


AFFINES = [
    _affine([0.05, -0.08, 0.07], [1.3, -0.7, 2.0], [1.04, 0.96, 1.02]),  # the preset's range
    _affine([0.6, 0.3, -0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),         # large rotations
    _affine([0.0, math.pi / 2, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),  # a quarter turn
    _affine([0.1, 0.0, 0.2], [6.5, -9.0, 4.0], [0.7, 1.3, 1.1]),         # parts leave the grid
    _affine([0.0, 0.0, 0.0], [40.0, 0.0, 0.0], [1.0, 1.0, 1.0]),         # everything leaves
    np.eye(4),
]


@pytest.mark.parametrize("index", range(len(AFFINES)))
def test_the_kernel_is_grid_samples_trilinear_on_every_voxel(index: int) -> None:
    """Random values (not a smooth image: every tap and weight counts), zero outside a
    mask; with the mask's rows as the support and with none."""
    g = torch.Generator().manual_seed(index)
    mask = _blob_mask()
    volume = torch.rand(3, *SHAPE, generator=g) * torch.as_tensor(mask)
    reference = _reference(volume, AFFINES[index])
    for support in (Support(mask), None):
        result = resampled_apart(volume, AFFINES[index], "trilinear", support=support)
        assert result is not None
        box, values = result
        assert box == tuple((0, n) for n in SHAPE)
        assert float((values - reference).abs().max()) < 1e-5  # float32 rounding of the grid
    if index == 4:
        assert float(reference.abs().max()) == 0.0 and float(values.abs().max()) == 0.0


def test_voxels_left_out_by_the_support_are_those_it_cannot_reach() -> None:
    """The support cuts the work, not the values: every voxel is written, the voxels it
    skips are zero in the full result, and most of this result is zero (a real cut)."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[6:12, 8:15, 5:11] = True
    volume = torch.rand(2, *SHAPE) * torch.as_tensor(mask)
    affine = AFFINES[0]
    source, cut, full = volume.numpy(), np.full_like(volume.numpy(), np.nan), np.empty_like(
        volume.numpy())
    trilinear_numpy(source, cut, affine, row_extents(mask))
    trilinear_numpy(source, full, affine, row_extents(np.ones(SHAPE, dtype=bool)))
    assert not np.isnan(cut).any()  # every voxel written
    np.testing.assert_array_equal(cut, full)
    assert (full == 0).mean() > 0.7


def test_a_nan_spreads_to_the_voxels_whose_taps_reach_it_as_in_grid_sample() -> None:
    """No fast-math assumption drops a NaN: the same voxels turn NaN as in ``grid_sample``."""
    mask = _blob_mask()
    volume = torch.rand(2, *SHAPE) * torch.as_tensor(mask)
    volume[1, 9, 11, 8] = float("nan")
    result = resampled_apart(volume, AFFINES[0], "trilinear", support=Support(mask))
    assert result is not None
    expected = torch.isnan(_reference(volume, AFFINES[0]))
    assert 1 <= int(expected.sum()) <= 8 and torch.equal(torch.isnan(result[1]), expected)


def test_the_result_does_not_depend_on_the_threads() -> None:
    volume = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(4)).numpy()
    extents = row_extents(np.ones(SHAPE, dtype=bool))
    one, three = np.empty_like(volume), np.empty_like(volume)
    trilinear_numpy(volume, one, AFFINES[1], extents, threads=1)
    trilinear_numpy(volume, three, AFFINES[1], extents, threads=3)
    np.testing.assert_array_equal(one, three)


def test_resample_on_the_cpu_uses_the_kernel_in_place() -> None:
    images = torch.rand(2, 1, *SHAPE)
    expected = torch.stack([_reference(images[b], AFFINES[b]) for b in range(2)])
    resample_(images, [(0, AFFINES[0]), (1, AFFINES[1])], "trilinear")
    assert float((images - expected).abs().max()) < 1e-5  # float32 rounding of the grid


def test_the_write_folds_in_scale_shift_noise_and_zero_channels() -> None:
    """``scale * resampled + shift + noise_std * noise`` in every voxel, inside the
    support and outside it (where it is ``shift`` plus the noise); the channels from
    ``keep`` on are zero, whatever they held."""
    g = torch.Generator().manual_seed(7)
    mask = _blob_mask()
    volume = (torch.rand(3, *SHAPE, generator=g) * torch.as_tensor(mask)).numpy()
    noise = torch.randn(3, *SHAPE, generator=g).numpy()
    extents = row_extents(mask)
    plain, folded = np.empty_like(volume), np.full_like(volume, np.nan)
    trilinear_numpy(volume, plain, AFFINES[0], extents)
    scale, shift = [1.1, 0.8, 1.0], [0.05, -0.1, 0.0]
    trilinear_numpy(volume, folded, AFFINES[0], extents, scale=scale, shift=shift,
                    noise=noise, noise_std=0.03, keep=2)
    expected = (plain * np.asarray(scale, np.float32)[:, None, None, None]
                + np.asarray(shift, np.float32)[:, None, None, None] + 0.03 * noise)
    np.testing.assert_allclose(folded[:2], expected[:2], atol=1e-6)
    assert (folded[2] == 0).all() and (plain[2] != 0).any()
    assert (plain[0] == 0).mean() > 0.3  # much of it outside the support: the fill counts
    shifted = np.empty_like(volume)
    trilinear_numpy(volume, shifted, AFFINES[0], extents, shift=shift)  # no noise
    np.testing.assert_allclose(shifted, plain + np.asarray(shift, np.float32)[:, None, None, None],
                               atol=1e-6)


def test_a_float16_source_is_read_as_its_float32_values() -> None:
    """The cached float16 volume is read as it is: the same result, bit for bit, as its
    float32 copy, also with the write's scale, shift and noise."""
    g = torch.Generator().manual_seed(8)
    mask = _blob_mask()
    half = (torch.rand(3, *SHAPE, generator=g) * torch.as_tensor(mask)).half().numpy()
    noise = torch.randn(3, *SHAPE, generator=g).numpy()
    extents = row_extents(mask)
    for affine in AFFINES[:4]:
        from_half, from_float = np.empty(half.shape, np.float32), np.empty(half.shape, np.float32)
        for source, out in ((half, from_half), (half.astype(np.float32), from_float)):
            trilinear_numpy(source, out, affine, extents, threads=2, scale=[1.1, 0.9, 1.0],
                            shift=[0.1, 0.0, -0.1], noise=noise, noise_std=0.02)
        np.testing.assert_array_equal(from_half, from_float)


def test_bad_inputs_name_what_was_expected() -> None:
    volume = np.zeros((1, *SHAPE), dtype=np.float32)
    extents = row_extents(np.ones(SHAPE, dtype=bool))
    with pytest.raises(ValueError, match=r"`source` must be a C-contiguous \(C, D, H, W\) "
                                         r"float16 or float32"):
        trilinear_numpy(volume.astype(np.float64), volume, np.eye(4), extents)
    with pytest.raises(ValueError, match=r"`out` must be another C-contiguous float32 array"):
        trilinear_numpy(volume, volume, np.eye(4), extents)
    with pytest.raises(ValueError, match=r"`extents` must be \(D, H, 2\)"):
        trilinear_numpy(volume, volume.copy(), np.eye(4), extents[:3])
    with pytest.raises(ValueError, match=r"`scale` must hold one value per channel \(1\), got 2"):
        trilinear_numpy(volume, volume.copy(), np.eye(4), extents, scale=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"`keep` must be in \[0, 1\] \(channels kept\), got 2"):
        trilinear_numpy(volume, volume.copy(), np.eye(4), extents, keep=2)
    with pytest.raises(ValueError, match=r"`noise` must be a C-contiguous float32 array of shape"):
        trilinear_numpy(volume, volume.copy(), np.eye(4), extents, noise=volume[:, :3],
                        noise_std=0.1)
    with pytest.raises(ValueError, match=r"`source` and `out` must be CPU tensors"):
        resample_into(torch.from_numpy(volume), torch.empty(volume.shape, device="meta"),
                      np.eye(4))
    with pytest.raises(ValueError, match=r"`support` must be a mask of the images' grid"):
        Support.of(Support(np.ones((4, 4, 4), dtype=bool)), SHAPE)
    with pytest.raises(ValueError, match=r"`mask` must be a 3D boolean array with a True voxel"):
        Support(np.zeros(SHAPE, dtype=bool))
    with pytest.raises(ValueError, match=r"`volume` must be on the CPU with zeros padding"):
        resampled_apart(torch.zeros(1, *SHAPE), np.eye(4), "trilinear", padding_mode="border")


def test_a_box_support_is_the_mask_of_the_box() -> None:
    box = ((2, 9), (3, 20), (0, 17))
    support = Support.of(box, SHAPE)
    assert support.box == box and int(support.mask.sum()) == 7 * 17 * 17
    assert support.extents[5, 10].tolist() == [0, 16] and support.extents[0, 0].tolist() == [17, -1]
    assert not support.mask.flags.writeable
