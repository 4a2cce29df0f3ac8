"""Interpretability maps: saliency / occlusion peak where the score is decided."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gazimed_lab.config import load_config
from gazimed_lab.data.grid import get_grid
from gazimed_lab.interpret import (
    gradient_saliency,
    map_to_image,
    maps_by_group,
    occlusion_map,
    save_map_nifti,
)
from gazimed_lab.models import AlzheimersLightningModule

SHAPE = (16, 20, 16)
CUBE = (slice(6, 10), slice(8, 12), slice(6, 10))  # the only voxels the score reads


class CubeModel(nn.Module):
    """Score = sigmoid(k * mean(channel 0 in CUBE) * clinical_features[:, 0] - 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(2.0))

    def forward(self, batch: dict) -> torch.Tensor:
        cube = batch["images"][:, 0][(slice(None), *CUBE)].mean(dim=(1, 2, 3))
        return torch.sigmoid(self.k * cube * batch["clinical_features"][:, 0] - 1.0)


class PerChannel(nn.Module):
    """A wrong model: (B, C) outputs."""

    def forward(self, batch: dict) -> torch.Tensor:
        return batch["images"].mean(dim=(2, 3, 4))


def make_batch(b: int = 3, seed: int = 0, clin0: list[float] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(b, 2, *SHAPE, generator=g)
    images[(slice(None), 0, *CUBE)] += 1.0
    clin = torch.ones(b, 4)
    if clin0 is not None:
        clin[:, 0] = torch.tensor(clin0)
    return {
        "images": images,
        "modality_mask": torch.ones(b, 2),
        "clinical_features": clin,
        "clinical_mask": torch.ones(b, 4),
        "targets": torch.full((b,), 0.5),
        "subject_id": [f"sub-{seed:02d}{i:02d}" for i in range(b)],
    }


def cube_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[CUBE] = True
    return mask


def far_mask(margin: int) -> np.ndarray:
    """Voxels more than ``margin`` voxels away from the cube (Chebyshev distance)."""
    idx = np.indices(SHAPE)
    dist = np.zeros(SHAPE, dtype=int)
    for axis, sl in enumerate(CUBE):
        below = sl.start - idx[axis]
        above = idx[axis] - (sl.stop - 1)
        dist = np.maximum(dist, np.maximum(below, above))
    return dist > margin


def test_saliency_peaks_in_the_cube_and_is_zero_elsewhere():
    model = CubeModel().train()
    batch = make_batch()
    sal = gradient_saliency(model, batch)
    assert sal.shape == (3, 2, *SHAPE) and sal.dtype == np.float32
    inside = cube_mask()
    assert (sal[:, 0][:, inside] > 0).all()
    assert np.all(sal[:, 0][:, ~inside] == 0) and np.all(sal[:, 1] == 0)
    # analytic: d sigmoid(k m - 1)/dx = s (1 - s) k / n_cube
    s = CubeModel()(batch).detach().numpy()
    expected = s * (1 - s) * 2.0 / inside.sum()
    np.testing.assert_allclose(sal[:, 0][:, inside].mean(axis=1), expected, rtol=1e-5)
    # the model's state is restored, and no parameter gradient was accumulated
    assert model.training and model.k.requires_grad and model.k.grad is None
    assert gradient_saliency(model, batch, channel=0).shape == (3, *SHAPE)


def test_smoothgrad_is_seeded_and_stays_in_the_cube():
    model = CubeModel()
    batch = make_batch(b=2)
    a = gradient_saliency(model, batch, channel=0, smooth_samples=4, noise_std=0.2)
    b = gradient_saliency(model, batch, channel=0, smooth_samples=4, noise_std=0.2)
    np.testing.assert_array_equal(a, b)
    assert np.all(a[:, ~cube_mask()] == 0) and (a[:, cube_mask()] > 0).all()
    plain = gradient_saliency(model, batch, channel=0)
    assert not np.allclose(a, plain)  # the noise did change the gradients


def test_occlusion_is_a_positive_drop_in_the_cube_and_zero_far_away():
    model = CubeModel()
    # subject 1's clinical feature 0 is 0: its score ignores the image entirely
    batch = make_batch(b=2, clin0=[1.0, 0.0])
    occ = occlusion_map(model, batch, mask_size=4, overlap=0.5, n_batch=32)
    assert occ.shape == (2, *SHAPE) and occ.dtype == np.float32
    inside, far = cube_mask(), far_mask(margin=4)
    peak = np.unravel_index(np.argmax(occ[0]), SHAPE)
    assert inside[peak]
    assert occ[0][inside].mean() > 0.01
    np.testing.assert_allclose(occ[0][far], 0.0, atol=1e-6)
    np.testing.assert_allclose(occ[1], 0.0, atol=1e-6)  # its own clinical features were used


class CountingCube(CubeModel):
    """CubeModel that records the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, batch: dict) -> torch.Tensor:
        self.batches.append(int(batch["images"].shape[0]))
        return super().forward(batch)


def test_occlusion_cost_follows_overlap_and_batches_default_to_64():
    batch = make_batch(b=1)
    dense, sparse = CountingCube(), CountingCube()
    occ_dense = occlusion_map(dense, batch, mask_size=4, overlap=0.5)
    occ_sparse = occlusion_map(sparse, batch, mask_size=4, overlap=0.25)
    # 7 x 9 x 7 = 441 occluded copies (+1 unoccluded) vs 5 x 7 x 5 = 175 (+1)
    assert (sum(dense.batches), sum(sparse.batches)) == (442, 176)
    assert max(dense.batches) == 64 and len(dense.batches) == 8  # ceil(441 / 64) + 1
    for occ in (occ_dense, occ_sparse):  # the cheaper map still finds the cube
        assert cube_mask()[np.unravel_index(np.argmax(occ[0]), SHAPE)]
        np.testing.assert_allclose(occ[0][far_mask(margin=4)], 0.0, atol=1e-6)


def test_occlusion_single_channel():
    model = CubeModel()
    batch = make_batch(b=1)
    pet_only = occlusion_map(model, batch, mask_size=4, channel=1)
    np.testing.assert_allclose(pet_only, 0.0, atol=1e-6)
    mri_only = occlusion_map(model, batch, mask_size=4, channel=0)
    np.testing.assert_allclose(mri_only, occlusion_map(model, batch, mask_size=4), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask_size": 100}, r"`mask_size` must be a positive int smaller than the image, "
                             r"got 100 \(image 16x20x16\)"),
        ({"mask_size": 0}, "`mask_size` must be a positive int"),
        ({"overlap": 1.0}, r"`overlap` must be a float in \[0, 1\)"),
        ({"n_batch": 0}, "`n_batch` must be a positive int"),
        ({"channel": 2}, r"`channel` must be None or an int in 0\.\.1"),
    ],
)
def test_occlusion_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        occlusion_map(CubeModel(), make_batch(b=1), **kwargs)


def test_saliency_validation():
    model, batch = CubeModel(), make_batch(b=1)
    with pytest.raises(ValueError, match="`smooth_samples` must be an int >= 0, got -1"):
        gradient_saliency(model, batch, smooth_samples=-1)
    with pytest.raises(ValueError, match="`noise_std` must be a finite float >= 0"):
        gradient_saliency(model, batch, smooth_samples=2, noise_std=float("nan"))
    with pytest.raises(ValueError, match=r"`batch` must be a dict with `images` as a \(B, C"):
        gradient_saliency(model, {"images": torch.zeros(2, 16, 16)})
    with pytest.raises(ValueError, match=r"`model\(batch\)` must return \(B,\)"):
        gradient_saliency(PerChannel(), batch)
    with pytest.raises(TypeError, match=r"`model` must be a torch nn\.Module"):
        gradient_saliency(lambda b: b["images"].mean(dim=(1, 2, 3, 4)), batch)


def test_maps_by_group_averages_per_group():
    model = CubeModel()
    loader = [make_batch(b=3, seed=0), make_batch(b=2, seed=1)]
    ids = [sid for b in loader for sid in b["subject_id"]]
    groups = dict(zip(ids, ["CN", "AD", "CN", "AD", None]))  # last subject: no group
    groups["sub-not-in-loader"] = "MCI"
    out = maps_by_group(model, loader, groups, method="saliency", channel=0)
    assert list(out) == ["AD", "CN"]
    per_subject = np.concatenate([gradient_saliency(model, b, channel=0) for b in loader])
    np.testing.assert_allclose(out["CN"], per_subject[[0, 2]].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["AD"], per_subject[[1, 3]].mean(axis=0), rtol=1e-6)
    assert out["CN"].shape == SHAPE and out["CN"].dtype == np.float32
    # a diagnosis column as a pandas Series (NaN = unknown) works the same
    series = pd.Series(["CN", "AD", "CN", "AD", np.nan], index=ids)
    from_series = maps_by_group(model, loader, series, channel=0)
    assert list(from_series) == ["AD", "CN"]
    np.testing.assert_allclose(from_series["CN"], out["CN"])
    # max over channels by default; at most one subject per group
    first = maps_by_group(model, loader, groups, max_per_group=1)
    np.testing.assert_allclose(first["CN"], per_subject[0], rtol=1e-6)
    np.testing.assert_allclose(first["AD"], per_subject[1], rtol=1e-6)
    occ = maps_by_group(model, loader[:1], groups, method="occlusion", mask_size=4)
    assert set(occ) == {"AD", "CN"} and occ["CN"].shape == SHAPE
    with pytest.raises(ValueError, match="`method` must be one of saliency, occlusion"):
        maps_by_group(model, loader, groups, method="gradcam")
    with pytest.raises(ValueError, match="`groups` must name subjects of the dataloader"):
        maps_by_group(model, loader, {"sub-x": "CN"})


def test_nifti_round_trip(tmp_path):
    grid = get_grid("demo_4mm")
    data = np.random.default_rng(0).random(grid.shape)
    path = save_map_nifti(data, grid, tmp_path / "maps" / "ad_saliency.nii.gz")
    img = nib.load(path)
    assert img.shape == grid.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, grid.affine)
    np.testing.assert_allclose(img.get_fdata(), data, rtol=1e-6)
    assert int(img.header["sform_code"]) == 4
    assert map_to_image(torch.zeros(grid.shape), "demo_4mm").shape == grid.shape
    with pytest.raises(ValueError, match=r"`map3d` must have the grid shape \(40, 48, 40\)"):
        map_to_image(np.zeros((2, 3, 4)), grid)
    with pytest.raises(ValueError, match=r"`path` must end in \.nii or \.nii\.gz"):
        save_map_nifti(data, grid, tmp_path / "map.png")


def test_real_model_end_to_end(tmp_path):
    torch.manual_seed(0)
    cfg = load_config("cpu-demo", overrides=["model.embed_dim=12"])
    model = AlzheimersLightningModule(cfg, img_size=[16, 16, 16], clinical_features_dim=4,
                                      in_channels=2)
    g = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randn(2, 2, 16, 16, 16, generator=g),
        "modality_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        "clinical_features": torch.randn(2, 4, generator=g),
        "clinical_mask": torch.ones(2, 4),
        "targets": torch.tensor([0.2, 0.8]),
        "subject_id": ["sub-a", "sub-b"],
    }
    sal = gradient_saliency(model, batch, smooth_samples=1)
    assert sal.shape == (2, 2, 16, 16, 16) and np.isfinite(sal).all() and sal.max() > 0
    assert np.all(sal[1, 1] == 0)  # sub-b has no PET: its PET channel is never read
    # sub-b (no PET), 8 boxes in one pass; the per-subject loop is tested with CubeModel
    one = {k: v[1:] for k, v in batch.items()}
    occ = occlusion_map(model, one, mask_size=8, overlap=0.0)
    assert occ.shape == (1, 16, 16, 16) and np.isfinite(occ).all()
    assert all(p.requires_grad for p in model.parameters()) and model.training
    grid = get_grid("custom", shape=[16, 16, 16], affine=np.diag([-4.0, 4.0, 4.0, 1.0]))
    path = save_map_nifti(occ[0], grid, tmp_path / "occ.nii")
    assert nib.load(path).shape == (16, 16, 16)
