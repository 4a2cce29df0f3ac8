"""The compiled CPU passes: float16 reads, the pointwise write, the stack, and their threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gazimed_lab.data.batches import as_float32, stack_images
from gazimed_lab.data.numba_cpu import stack_volumes, write_pointwise

SHAPE = (3, 13, 11, 9)


def test_float16_reads_are_exact_for_every_bit_pattern() -> None:
    """All 65,536 float16 values (zeros, subnormals, normals, infinities) convert exactly
    as NumPy converts them; NaNs stay NaN."""
    half = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    source = half.reshape(4, 16, 32, 32)
    out = np.empty(source.shape, dtype=np.float32)
    write_pointwise(out, source)
    expected = source.astype(np.float32)
    nan = np.isnan(expected)
    assert nan.sum() == 2046 and np.isnan(out[nan]).all()
    np.testing.assert_array_equal(out.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_pointwise_write_is_scale_shift_and_noise_with_zero_channels(dtype: type) -> None:
    g = np.random.default_rng(0)
    source = g.random(SHAPE).astype(dtype)
    noise = g.standard_normal(SHAPE).astype(np.float32)
    scale, shift = [1.1, 0.9, 1.3], [0.05, -0.02, 0.4]
    one, three = np.full(SHAPE, np.nan, np.float32), np.full(SHAPE, np.nan, np.float32)
    for out, threads in ((one, 1), (three, 3)):
        write_pointwise(out, source, threads, scale=scale, shift=shift, noise=noise,
                        noise_std=0.1, keep=2)
    expected = (source.astype(np.float32) * np.float32(scale)[:, None, None, None]
                + np.float32(shift)[:, None, None, None] + np.float32(0.1) * noise)
    np.testing.assert_allclose(one[:2], expected[:2], rtol=0, atol=1e-6)
    assert (one[2] == 0).all()
    np.testing.assert_array_equal(one, three)  # the threads do not change a value
    plain = np.empty(SHAPE, np.float32)
    write_pointwise(plain, source)
    np.testing.assert_array_equal(plain, source.astype(np.float32))
    if dtype is np.float32:  # in place
        inplace = source.copy()
        write_pointwise(inplace, inplace, 2, shift=shift)
        np.testing.assert_allclose(inplace, source + np.float32(shift)[:, None, None, None],
                                   atol=1e-6)


def test_the_pointwise_write_names_what_was_expected() -> None:
    source = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match=r"`out` must be a float32 array of the source's "
                                         r"\(C, D, H, W\) shape \(3, 13, 11, 9\)"):
        write_pointwise(np.zeros(SHAPE, np.float16), source)
    with pytest.raises(ValueError, match=r"`source` must be a C-contiguous float16 or float32 "
                                         r"array, got \(3, 13, 11, 9\) float64"):
        write_pointwise(source.copy(), source.astype(np.float64))
    with pytest.raises(ValueError, match=r"`shift` must hold one value per channel \(3\), got 2"):
        write_pointwise(source.copy(), source, shift=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"`keep` must be in \[0, 3\] \(channels kept\), got 4"):
        write_pointwise(source.copy(), source, keep=4)
    with pytest.raises(ValueError, match=r"`noise` must be a C-contiguous float32 array"):
        write_pointwise(source.copy(), source, noise=source[:, :2].copy(), noise_std=0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_stack_and_conversion_are_torchs_on_any_number_of_threads(
        dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    items = [torch.rand(SHAPE, generator=g).to(dtype) for _ in range(5)]
    expected = torch.stack(items)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            stacked = stack_images(items)
            assert stacked.dtype == dtype and torch.equal(stacked, expected)
            converted, fresh = as_float32(stacked)
            assert fresh == (dtype != torch.float32)
            assert converted.dtype == torch.float32 and torch.equal(converted, expected.float())
            joined = stack_images(items, torch.float32)  # the conversion in the stack's pass
            assert joined.dtype == torch.float32 and torch.equal(joined, expected.float())
    finally:
        torch.set_num_threads(before)


def test_the_stack_names_what_was_expected() -> None:
    volume = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match=r"`out` must be a \(B, C, D, H, W\) array of the "
                                         r"volumes' shape, in their dtype or float32, got "
                                         r"\(2, 3, 13, 11, 9\) float16 for 2 volumes of "
                                         r"\(3, 13, 11, 9\) \['float32'\]"):
        stack_volumes(np.zeros((2, *SHAPE), np.float16), [volume, volume])
    with pytest.raises(ValueError, match=r"got \(1, 3, 13, 11, 9\) float16 for no volumes"):
        stack_volumes(np.zeros((1, *SHAPE), np.float16), [])


def test_the_collate_names_a_dtype_it_cannot_stack_into() -> None:
    from gazimed_lab.data.batches import BatchCollate

    with pytest.raises(ValueError, match=r"`dtype` must be None or one of \['torch.float16', "
                                         r"'torch.float32', 'torch.float64'\], got torch.int8"):
        BatchCollate(on_device=True, dtype=torch.int8)
