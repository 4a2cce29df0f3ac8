"""The regions pathway's fitted standardization, linear readout and template ventricles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, cohort_config
from test_models import GRID, TINY, net_inputs, tiny_batch

from gazimed_lab.config import ConfigError, load_config
from gazimed_lab.data.atlas import atlas_on_grid
from gazimed_lab.data.grid import get_grid
from gazimed_lab.models import MultimodalAlzheimersNet, param_groups
from gazimed_lab.models.regions import RegionEncoder
from gazimed_lab.models.ridge import RIDGE_ALPHAS, RidgeFit
from gazimed_lab.models.standardize import FittedStandardize


def _masks() -> np.ndarray:
    masks = np.zeros((3, *GRID), bool)
    masks[0, :4] = True
    masks[1, 4:8, :8] = True
    masks[2, 8:, 8:, 6:] = True
    return masks


def test_fitted_standardize_uses_the_statistics_of_every_row_it_saw():
    torch.manual_seed(0)
    x = torch.randn(50, 6) * torch.arange(1.0, 7.0) + 3.0
    norm = FittedStandardize(6).train()
    before = norm(x[:8])  # unfitted: the batch's own statistics, as BatchNorm
    assert torch.allclose(before.mean(dim=0), torch.zeros(6), atol=1e-5)
    norm.begin_fit()
    for part in x.split(7):
        norm.accumulate(part)
    assert norm.end_fit() == 50 and bool(norm.fitted)
    expected = (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0) + norm.eps)
    # training and evaluation alike, whatever else is in the batch
    assert torch.allclose(norm(x), expected, atol=1e-4)
    assert torch.allclose(norm(x[:3]), expected[:3], atol=1e-4)
    norm.eval()
    assert torch.allclose(norm(x[:3]), expected[:3], atol=1e-4)
    assert bool(norm.state_dict()["fitted"])
    with pytest.raises(ValueError, match=r"must see at least 2 training rows, got 1"):
        norm.begin_fit()
        norm.accumulate(x[:1])
        norm.end_fit()


def test_fitted_standardize_reads_older_checkpoints_as_fitted():
    # A checkpoint written before `fitted` existed holds a trained model's statistics.
    old = torch.nn.BatchNorm1d(4)
    old.running_mean.fill_(2.0)
    state = old.state_dict()
    norm = FittedStandardize(4)
    norm.load_state_dict(state)
    assert bool(norm.fitted) and torch.equal(norm.running_mean, torch.full((4,), 2.0))


def test_region_statistics_count_pet_only_where_it_is_present():
    torch.manual_seed(1)
    enc = RegionEncoder(_masks(), mri_channels=1, pet_channels=1, out_dim=1, readout="linear")
    x = torch.randn(6, 2, *GRID) + 1.0
    present = torch.tensor([True, False, True, True, False, True])
    x[~present, 1] = 0.0  # a missing PET is zeros in the batch
    assert not enc.fitted
    assert enc.fit_statistics([(x[:4], present[:4], None), (x[4:], present[4:], None)]) == 6
    assert enc.fitted
    means = enc.pool(x)
    assert enc.mri_norm is not None and enc.pet_norm is not None
    assert torch.allclose(enc.mri_norm.running_mean, means[:, 0].mean(dim=0), atol=1e-5)
    assert torch.allclose(enc.pet_norm.running_mean, means[present, 1].mean(dim=0), atol=1e-5)
    assert torch.allclose(enc.pet_norm.running_var, means[present, 1].var(dim=0), atol=1e-5)


def test_linear_readout_and_its_width():
    enc = RegionEncoder(_masks(), 1, 1, out_dim=1, readout="linear")
    assert isinstance(enc.mlp, torch.nn.Linear) and enc.mlp.out_features == 1
    assert enc.mlp.in_features == 3 + 3 + 1  # MRI and PET regions, PET presence
    with pytest.raises(ValueError, match=r"`region_readout` must be one of mlp, linear, ridge, "
                                         r"got 'lasso'"):
        RegionEncoder(_masks(), 1, 1, out_dim=1, readout="lasso")
    net = MultimodalAlzheimersNet(in_channels=2, **{
        **TINY, "image_pathway": "regions", "region_masks": _masks(),
        "region_readout": "linear", "region_dim": 1}).eval()
    assert net.image_width == 1 and net.needs_statistics
    out = net(*net_inputs(tiny_batch()))
    assert out.shape == (4,) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match=r"`model.region_readout` must be one of mlp, linear, "
                                          r"ridge"):
        load_config("cpu-demo", overrides=["model.region_readout=lasso"])
    with pytest.raises(ConfigError, match=r"`model.region_dim` must be >= 1"):
        load_config("cpu-demo", overrides=["model.region_dim=0"])


def test_ridge_fit_equals_scikit_learns_ridgecv_on_rows_given_in_parts():
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 7)) * np.arange(1.0, 8.0)
    y = x @ rng.normal(size=7) * 0.2 + rng.normal(size=90) + 3.0
    fit = RidgeFit(7)
    for part in np.array_split(np.arange(90), 4):
        fit.accumulate(torch.tensor(x[part]), torch.tensor(y[part]))
    got = fit.solve()
    expected = RidgeCV(alphas=[a * 90 for a in RIDGE_ALPHAS]).fit(x, y)
    assert got.rows == 90 and got.alpha * 90 == pytest.approx(expected.alpha_)
    np.testing.assert_allclose(got.coef.numpy(), expected.coef_, atol=1e-8)
    assert got.intercept == pytest.approx(expected.intercept_, abs=1e-8)
    assert min(got.loo_mse, key=got.loo_mse.__getitem__) == got.alpha
    refit = RidgeFit(7)
    refit.accumulate(torch.tensor(x), torch.tensor(y))
    z = refit.solve(standardize_target=True)  # predicts the target's z-score, same penalty
    assert z.alpha == got.alpha and z.target_std == pytest.approx(y.std(ddof=1))
    np.testing.assert_allclose(z.coef.numpy() * z.target_std, expected.coef_, atol=1e-8)
    assert z.intercept * z.target_std + z.target_mean == pytest.approx(expected.intercept_)
    with pytest.raises(ValueError, match=r"at least 3 training rows, got 2"):
        two = RidgeFit(7)
        two.accumulate(torch.tensor(x[:2]), torch.tensor(y[:2]))
        two.solve()
    with pytest.raises(ValueError, match=r"must be \(n, 7\) with n targets, got \(3, 6\) and 3"):
        RidgeFit(7).accumulate(torch.tensor(x[:3, :6]), torch.tensor(y[:3]))
    with pytest.raises(ValueError, match=r"must be finite, got NaN or inf"):
        RidgeFit(7).accumulate(torch.tensor(x[:3]), torch.tensor([1.0, float("nan"), 2.0]))


def test_ridge_readout_is_fitted_with_the_standardization_and_never_trained():
    torch.manual_seed(2)
    enc = RegionEncoder(_masks(), mri_channels=1, pet_channels=1, out_dim=1, readout="ridge")
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.fitted
    x = torch.randn(40, 2, *GRID)
    present = torch.rand(40) > 0.2
    x[~present, 1] = 0.0
    means = enc.pool(x)
    target = (0.5 + 0.1 * (means[:, 0, 0] - means[:, 0, 1]) / means[:, 0].std()
              + 0.05 * torch.randn(40))
    with pytest.raises(ValueError, match=r"must see the training targets"):
        enc.fit_statistics([(x, present, None)])
    assert enc.fit_statistics([(x[:25], present[:25], target[:25]),
                               (x[25:], present[25:], target[25:])]) == 40
    assert enc.fitted and enc.ridge_alpha is not None
    features = enc._features(means, present)  # standardized with the fitted statistics
    refit = RidgeFit(features.shape[1])
    refit.accumulate(features, target)
    expected = refit.solve(standardize_target=True)
    assert float(enc.ridge_alpha) == pytest.approx(expected.alpha)
    assert torch.allclose(enc(x, present).squeeze(1),
                          (features.double() @ expected.coef + expected.intercept).float(),
                          atol=1e-4)
    with pytest.raises(ValueError, match=r"`region_dim` must be 1 with `region_readout` ridge"):
        RegionEncoder(_masks(), 1, 1, out_dim=4, readout="ridge")
    with pytest.raises(ConfigError, match=r"`model.region_dim` must be 1 with "
                                          r"model.region_readout=ridge"):
        load_config("cpu-demo", overrides=["model.region_readout=ridge", "model.region_dim=2"])
    ridge = ["model.region_readout=ridge", "data.augment=false"]
    with pytest.raises(ConfigError, match=r"`data.augment` must be false with "
                                          r"model.region_readout=ridge .*, got True"):
        load_config("cpu-demo", overrides=["model.region_readout=ridge"])
    with pytest.raises(ConfigError, match=r"`trainer.monitor` must be a loss or error .*, got "
                                          r"'val/auroc'"):
        load_config("cpu-demo", overrides=[*ridge, "model.mode=image_only"])
    load_config("cpu-demo", overrides=[*ridge, "model.mode=image_only", "trainer.monitor=val/loss",
                                       "trainer.monitor_mode=min"])
    load_config("cpu-demo", overrides=ridge)  # multimodal: the clinical branch moves the AUROC


@pytest.mark.parametrize("seed", range(4))
def test_a_linear_layer_on_the_ridge_score_starts_increasing_in_it(seed):
    # A head without hidden layers (`head_hidden: []`) reads the fixed score directly; from
    # a random negative weight it stayed inverted through a whole cpu-demo training run.
    torch.manual_seed(seed)
    ridge = {**TINY, "image_pathway": "regions", "region_masks": _masks(),
             "region_readout": "ridge", "region_dim": 1, "head_hidden": ()}
    net = MultimodalAlzheimersNet(mode="image_only", in_channels=2, **ridge).eval()
    x = torch.randn(30, 2, *GRID)
    mask = torch.ones(30, 2)
    means = net.region_encoder.pool(x)
    contrast = means[:, 0, 0] - means[:, 0, 1]
    target = 0.5 + 0.1 * contrast / contrast.std() + 0.02 * torch.randn(30)
    net.fit_statistics([{"images": x, "modality_mask": mask, "targets": target}])
    with torch.no_grad():
        score = net.region_encoder(x, mask[:, 1] > 0.5).squeeze(1)
        out = net(x, mask)
    assert torch.corrcoef(torch.stack([score, target]))[0, 1] > 0.5
    ranked = out[torch.argsort(score)]
    assert bool((ranked[1:] >= ranked[:-1]).all())  # monotone increasing, from the start
    full = MultimodalAlzheimersNet(mode="multimodal", in_channels=2, **ridge)
    assert float(full.head[-1].weight[0, full.image_width - 1]) == 1.0  # the score's column
    hidden = MultimodalAlzheimersNet(mode="image_only", in_channels=2,
                                     **{**ridge, "head_hidden": (4,)})
    assert float(hidden.head[-1].weight.abs().max()) < 1.0  # an MLP head: left as initialized


def test_image_lr_scale_reaches_the_region_encoder():
    net = MultimodalAlzheimersNet(in_channels=2, **{
        **TINY, "image_pathway": "regions", "region_masks": _masks()})
    names = {id(p): n for n, p in net.named_parameters()}
    groups = {g["name"]: g for g in param_groups(net, 0.01, lr=1e-3, image_lr_scale=5.0)}
    image = {names[id(p)] for k in ("image_decay", "image_no_decay") for p in groups[k]["params"]}
    assert image and all(n.startswith("region_encoder.") for n in image)
    assert groups["image_decay"]["lr"] == pytest.approx(5e-3)


def test_fit_standardizes_regions_with_the_training_split(tiny_cohort: Path, tmp_path: Path):
    from gazimed_lab.runner import train_and_evaluate

    cfg = cohort_config(tiny_cohort, tmp_path, *SMALL, "trainer.max_epochs=1",
                        "model.region_readout=linear", "model.region_dim=1",
                        "data.augment=false")
    result = train_and_evaluate(cfg)
    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert bool(state["model.region_encoder.mri_norm.fitted"])
    # the statistics are those of the training split's regional means (cached volumes)
    from gazimed_lab.data.datamodule import MNIDataModule
    from gazimed_lab.models.regions import RegionPooling

    dm = MNIDataModule(cfg, run_dir=tmp_path / "check")
    dm.setup("fit")
    masks = atlas_on_grid(dm.grid, str(cfg.model.region_atlas)).masks()
    pool = RegionPooling(masks)
    images = torch.stack([dm.train_dataset[i]["images"] for i in range(len(dm.train_dataset))])
    expected = pool(images)[:, 0].mean(dim=0)
    assert torch.allclose(state["model.region_encoder.mri_norm.running_mean"], expected,
                          atol=1e-4)


def test_a_ridge_readout_keeps_its_fit_through_training_and_checkpoints(tiny_cohort: Path,
                                                                        tmp_path: Path):
    from gazimed_lab.models.lightning import AlzheimersLightningModule
    from gazimed_lab.runner import train_and_evaluate

    cfg = cohort_config(tiny_cohort, tmp_path, *SMALL, "trainer.max_epochs=2",
                        "model.mode=image_only", "model.region_readout=ridge",
                        "model.region_dim=1", "data.augment=false", "trainer.monitor=val/loss",
                        "trainer.monitor_mode=min")
    result = train_and_evaluate(cfg)
    module = AlzheimersLightningModule.load_from_checkpoint(result.best_checkpoint)
    enc = module.model.region_encoder
    assert enc is not None and enc.fitted and torch.isfinite(enc.ridge_alpha)
    # the readout is the ridge regression of the training split's targets, untouched by
    # two epochs of training: refit it from the cached training volumes
    from gazimed_lab.data.datamodule import MNIDataModule

    dm = MNIDataModule(cfg, run_dir=tmp_path / "check")
    dm.setup("fit")
    items = [dm.train_dataset[i] for i in range(len(dm.train_dataset))]
    images = torch.stack([item["images"] for item in items])
    present = torch.stack([item["modality_mask"] for item in items])[:, 1] > 0.5
    targets = torch.stack([torch.as_tensor(item["targets"]) for item in items]).float()
    with torch.no_grad():
        features = enc._features(enc.pool(images), present)
    refit = RidgeFit(features.shape[1])
    refit.accumulate(features, targets)
    expected = refit.solve(standardize_target=True)
    assert float(enc.ridge_alpha) == pytest.approx(expected.alpha)
    assert torch.allclose(enc.mlp.weight.double().squeeze(0), expected.coef, atol=1e-4)


def test_template_lateral_ventricles_lie_where_the_anatomy_has_them():
    grid = get_grid("mni152_2mm")
    atlas = atlas_on_grid(grid, "aal+ventricles")
    assert atlas.names[-2:] == ("Lateral_Ventricle_L", "Lateral_Ventricle_R")
    plain = atlas_on_grid(grid, "aal")
    assert atlas.ids[:-2] == plain.ids
    # AAL's own labels are kept; the ventricles only fill unlabelled voxels
    assert np.array_equal(atlas.labels[plain.labels > 0], plain.labels[plain.labels > 0])
    for region_id, side in zip(atlas.ids[-2:], (-1, 1)):
        voxels = np.argwhere(atlas.labels == region_id)
        x, y, z = (grid.affine @ np.append(voxels.mean(axis=0), 1.0))[:3]
        # lateral ventricle bodies: |x| 8-25 mm on their side, y -35..0, z 5..25 (MNI mm)
        assert 8 < side * x < 25 and -35 < y < 0 and 5 < z < 25
        assert 3 < len(voxels) * 8 / 1000 < 30  # mL: a few to tens of millilitres
    demo = atlas_on_grid("demo_4mm", "aal+ventricles")
    assert len(demo.ids) == 118
