"""Affine resampling for augmentation: the two-pass resampler samples the affine's positions
with trilinear's accuracy; exact shifts and quarter turns; the trilinear fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms.utils import create_rotate, create_scale, create_translate

from gazimed_lab.config import ConfigError, load_config
from gazimed_lab.data.resample import mask_box, resample_

SHAPE = (31, 37, 29)


def _affine(rotate: list[float], translate: list[float], zoom: list[float]) -> np.ndarray:
    return (np.asarray(create_rotate(3, rotate), dtype=np.float64)
            @ np.asarray(create_translate(3, translate), dtype=np.float64)
            @ np.asarray(create_scale(3, zoom), dtype=np.float64))


def _centred() -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2.0 for n in SHAPE], indexing="ij"))


def _smooth(p: np.ndarray) -> np.ndarray:
    """A smooth image (a modulated blob) at centred coordinates ``p`` (3, ...)."""
    z, y, x = p
    return (np.exp(-(z**2 / 90 + y**2 / 130 + x**2 / 80)) * np.cos(z / 2.5 + y / 3.0)
            * np.sin(x / 3.5 + 0.3))


def _moved(images: torch.Tensor, affines: list[np.ndarray], method: str) -> torch.Tensor:
    out = images.clone()
    resample_(out, list(enumerate(affines)), method)
    return out


def test_two_pass_samples_the_affine_positions_as_accurately_as_trilinear() -> None:
    rng = np.random.default_rng(0)
    p = _centred()
    image = torch.as_tensor(np.stack([_smooth(p), -2 * _smooth(p)]), dtype=torch.float32)
    limit = math.radians(8)
    affines = [_affine(list(rng.uniform(-limit, limit, 3)), list(rng.uniform(-2, 2, 3)),
                       list(1 + rng.uniform(-0.08, 0.08, 3))) for _ in range(4)]
    images = image.expand(4, -1, -1, -1, -1).contiguous()
    two, tri = _moved(images, affines, "two_pass"), _moved(images, affines, "trilinear")
    for b, a in enumerate(affines):
        source = np.einsum("ij,j...->i...", a[:3, :3], p) + a[:3, 3].reshape(3, 1, 1, 1)
        inside = np.all([np.abs(source[i]) < (n - 1) / 2 - 1 for i, n in enumerate(SHAPE)], 0)
        truth = _smooth(source)[inside]
        err_two = two[b, 0].numpy()[inside] - truth
        err_tri = tri[b, 0].numpy()[inside] - truth
        rms_two, rms_tri = np.sqrt(np.mean(err_two**2)), np.sqrt(np.mean(err_tri**2))
        assert rms_two < 1.25 * rms_tri, (b, rms_two, rms_tri)
        assert np.abs(err_two).max() < 1.5 * np.abs(err_tri).max()
        # the second channel is moved with the same weights
        assert torch.allclose(two[b, 1], -2 * two[b, 0], atol=1e-5)
    assert float((two - tri).abs().max()) < 0.02 * float(image.abs().max())
    assert not torch.equal(two, tri)  # a different interpolation, not the same call


def test_two_pass_shifts_by_whole_voxels_exactly() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 2, *SHAPE, generator=g)
    shifts = [(2.0, 0.0, 0.0), (0.0, -3.0, 0.0), (0.0, 0.0, 1.0)]
    out = _moved(images, [_affine([0.0, 0.0, 0.0], list(s), [1.0, 1.0, 1.0]) for s in shifts],
                 "two_pass")
    # output voxel p samples the input at p + shift
    assert torch.allclose(out[0, :, :-2], images[0, :, 2:], atol=1e-5)
    assert float(out[0, :, -2:].abs().max()) < 1e-5  # moved in from outside: zeros
    assert torch.allclose(out[1, :, :, 3:], images[1, :, :, :-3], atol=1e-5)
    assert float(out[1, :, :, :3].abs().max()) < 1e-5
    assert torch.allclose(out[2, ..., :-1], images[2, ..., 1:], atol=1e-5)
    identity = _moved(images, [np.eye(4)] * 3, "two_pass")
    assert torch.allclose(identity, images, atol=1e-5)


def test_quarter_turns_in_plane_and_across_slices() -> None:
    """About the first axis: the two passes; about the second: |affine[0, 0]| = 0, the
    trilinear fallback. Both are a 90 degree turn of a cube."""
    g = torch.Generator().manual_seed(2)
    cube = torch.randn(2, 1, 21, 21, 21, generator=g)
    about_first = _affine([math.pi / 2, 0.0, 0.0], [0.0] * 3, [1.0] * 3)
    about_second = _affine([0.0, math.pi / 2, 0.0], [0.0] * 3, [1.0] * 3)
    assert abs(about_second[0, 0]) < 1e-12
    out = _moved(cube, [about_first, about_second], "two_pass")
    fallback = _moved(cube[1:], [about_second], "trilinear")
    assert torch.equal(out[1], fallback[0])
    turns = [(k, dims) for k in (1, -1) for dims in ((2, 3), (1, 3), (1, 2))]
    first = [float((out[0] - torch.rot90(cube[0], k, dims)).abs().max()) for k, dims in turns]
    second = [float((out[1] - torch.rot90(cube[1], k, dims)).abs().max()) for k, dims in turns]
    assert min(first) < 1e-4 and turns[int(np.argmin(first))][1] == (2, 3)
    assert min(second) < 1e-4 and turns[int(np.argmin(second))][1] == (1, 3)


def test_an_unknown_resampler_is_refused_with_the_choices() -> None:
    images = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"`method` must be one of \('two_pass', 'trilinear'\)"):
        resample_(images, [(0, np.eye(4))], "cubic")
    with pytest.raises(ConfigError, match=r"`data.aug_resampler` must be one of .*'cubic'"):
        load_config(overrides=["data.aug_resampler=cubic"])


def test_a_support_box_changes_nothing_but_the_work() -> None:
    """Volumes zero outside a box (as normalized volumes outside the brain mask): the
    two passes inside the box only give the values of the whole grid."""
    g = torch.Generator().manual_seed(3)
    images = torch.zeros(3, 2, *SHAPE)
    images[:, :, 6:24, 5:30, 4:21] = torch.randn(3, 2, 18, 25, 17, generator=g)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[6:24, 5:30, 4:21] = True
    box = mask_box(mask)
    assert box == ((6, 24), (5, 30), (4, 21))
    affines = [_affine([0.14, -0.1, 0.12], [2.0, -1.5, 1.0], [1.08, 0.93, 1.0]),
               _affine([-0.05, 0.1, -0.14], [-2.0, 2.0, -2.0], [0.95, 1.05, 1.08]),
               _affine([0.0, 0.0, 0.0], [30.0, 0.0, 0.0], [1.0, 1.0, 1.0])]  # moved out
    whole = _moved(images, affines, "two_pass")
    boxed = images.clone()
    resample_(boxed, list(enumerate(affines)), "two_pass", support=box)
    assert float((boxed - whole).abs().max()) < 1e-5
    assert float(whole[:2].abs().amax(dim=(0, 1)).gt(0).float().mean()) > 0.2
    assert (boxed[2] == 0).all() and float(whole[2].abs().max()) < 1e-6
    with pytest.raises(ValueError, match=r"`mask` must be a 3D boolean array with a True"):
        mask_box(np.zeros(SHAPE, dtype=bool))


def test_border_padding_fills_every_voxel_in_two_passes_as_trilinear() -> None:
    """With ``border`` padding nothing is outside the field of view: two passes write the
    whole grid (the box the ``zeros`` padding allows would leave a third of it zero)."""
    smooth = torch.as_tensor(_smooth(_centred()), dtype=torch.float32)
    images = (1.5 + torch.stack([smooth, -smooth])).expand(2, -1, -1, -1, -1).contiguous()
    affines = [_affine([0.0, 0.0, 0.0], [0.0, 6.0, 5.0], [1.0, 1.0, 1.0]),
               _affine([0.1, -0.05, 0.08], [-3.0, 2.0, 4.0], [1.05, 0.96, 1.0])]
    out = {}
    for method in ("two_pass", "trilinear"):
        out[method] = images.clone()
        resample_(out[method], list(enumerate(affines)), method, "border")
    assert float(out["two_pass"].min()) > 0.4  # no voxel left at zero (images >= 0.5)
    assert float((out["two_pass"] - out["trilinear"]).abs().max()) < 0.02
    # a whole-voxel shift: rows moved in from beyond the last one repeat the last one
    height, width = SHAPE[1], SHAPE[2]
    edge = images[0, :, :, height - 1:, 5:]
    assert torch.allclose(out["two_pass"][0, :, :, height - 6:, :width - 5],
                          edge.expand(-1, -1, 6, -1), atol=1e-5)
