"""Atlases on a grid and the regions image pathway."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_models import GRID, TINY, net_inputs, tiny_batch

from gazimed_lab.config import ConfigError, load_config
from gazimed_lab.data.atlas import atlas_on_grid, read_atlas_names
from gazimed_lab.data.grid import get_grid
from gazimed_lab.models import MultimodalAlzheimersNet
from gazimed_lab.models.network import build_network
from gazimed_lab.models.regions import RegionEncoder, RegionPooling


def test_aal_on_the_demo_grid_keeps_named_regions_where_they_belong():
    grid = get_grid("demo_4mm")
    atlas = atlas_on_grid(grid, "aal")
    assert atlas.labels.shape == grid.shape and len(atlas.ids) == 116
    hippocampus = atlas.labels == atlas.ids[atlas.names.index("Hippocampus_L")]
    centre = grid.affine @ np.append(np.argwhere(hippocampus).mean(axis=0), 1.0)
    # left hippocampus: x < 0 (left), y about -20 mm, z about -10 mm in MNI space
    assert centre[0] < -15 and -35 < centre[1] < -5 and -25 < centre[2] < 5
    assert atlas.masks().sum() == np.count_nonzero(atlas.labels)


def test_user_atlas_and_its_names(tmp_path: Path):
    grid = get_grid("demo_4mm")
    labels = np.zeros(grid.shape, np.int16)
    labels[10:20, 10:20, 10:20] = 3
    labels[20:30, 20:30, 20:30] = 7
    path = tmp_path / "mine.nii.gz"
    nib.save(nib.Nifti1Image(labels, grid.affine), path)
    (tmp_path / "mine.txt").write_text("3 left_box\n7 right_box\n")
    atlas = atlas_on_grid(grid, path, tmp_path / "mine.txt")
    assert atlas.ids == (3, 7) and atlas.names == ("left_box", "right_box")
    (tmp_path / "bad.txt").write_text("3 left_box\n")
    with pytest.raises(ValueError, match=r"`atlas names` must be a name for every label, got "
                                         r"none for \[7\]"):
        atlas_on_grid(grid, path, tmp_path / "bad.txt")
    (tmp_path / "broken.txt").write_text("left_box 3\n")
    with pytest.raises(ValueError, match=r"line 1"):
        read_atlas_names(tmp_path / "broken.txt")


def _masks() -> np.ndarray:
    masks = np.zeros((3, *GRID), bool)
    masks[0, :4] = True
    masks[1, 4:8, :8] = True
    masks[2, 8:, 8:, 6:] = True
    return masks


def test_region_pooling_is_the_mean_in_each_region():
    pool = RegionPooling(_masks())
    x = torch.randn(2, 2, *GRID)
    out = pool(x)
    assert out.shape == (2, 2, 3)
    for r, mask in enumerate(_masks()):
        expected = x[:, :, torch.from_numpy(mask)].mean(dim=2)
        assert torch.allclose(out[:, :, r], expected, atol=1e-5)
    assert "weights" not in pool.state_dict()  # rebuilt from the grid, never saved
    with pytest.raises(ValueError, match=r"`masks` must each hold a voxel, got 1 empty"):
        RegionPooling(np.concatenate([_masks(), np.zeros((1, *GRID), bool)]))


def test_a_missing_pet_is_never_read_by_the_regions_pathway():
    torch.manual_seed(0)
    enc = RegionEncoder(_masks(), mri_channels=1, pet_channels=1, out_dim=8).eval()
    x = torch.randn(4, 2, *GRID)
    present = torch.tensor([True, False, True, True])
    other = x.clone()
    other[1, 1] = 100.0  # garbage in the absent PET
    with torch.no_grad():
        assert torch.equal(enc(x, present), enc(other, present))
        # with the PET counted as present, the garbage would change the output
        assert not torch.equal(enc(x, present), enc(other, torch.ones(4, dtype=torch.bool)))
    enc.train()
    out = enc(x, present)  # training: batch statistics over present subjects' PET
    assert out.shape == (4, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("pathway", ["regions", "swin+regions"])
def test_network_with_the_regions_pathway(pathway: str):
    kwargs = {**TINY, "image_pathway": pathway, "region_masks": _masks()}
    net = MultimodalAlzheimersNet(in_channels=2, **kwargs).eval()
    out = net(*net_inputs(tiny_batch()))
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert (net.mri_encoder is None) == (pathway == "regions")
    assert net.image_width == (16 if pathway == "regions" else 32)
    with pytest.raises(ValueError, match=r"`region_masks` must be \(R, D, H, W\) atlas masks"):
        MultimodalAlzheimersNet(in_channels=2, **{**kwargs, "region_masks": None})


def test_pet_only_network_reads_only_the_pet_channel():
    net = MultimodalAlzheimersNet(in_channels=2, **{**TINY, "use_mri": False,
                                                   "mode": "image_only"}).eval()
    batch = tiny_batch(pet_missing=())
    changed = {**batch, "images": batch["images"].clone()}
    changed["images"][:, 0] = 5.0  # the MRI channel
    with torch.no_grad():
        assert torch.equal(net(*net_inputs(batch)), net(*net_inputs(changed)))
    with pytest.raises(ConfigError, match=r"`data.channels` must be >= 2 with model.use_mri"):
        load_config("cpu-demo", overrides=["model.use_mri=false", "data.channels=1"])


def test_build_network_conforms_the_configured_atlas_to_the_spec_grid():
    from gazimed_lab.data.spec import InputSpec

    cfg = load_config("cpu-demo", overrides=["model.image_pathway=regions"])
    spec = InputSpec.unfitted(get_grid("demo_4mm"), 2, n_features=118)
    net = build_network(cfg.model, spec)
    # cpu-demo reads AAL's 116 regions plus the template's two lateral ventricles
    assert cfg.model.region_atlas == "aal+ventricles"
    assert net.region_encoder is not None and net.region_encoder.pool.n_regions == 118
    assert net.mri_encoder is None
