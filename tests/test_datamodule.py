from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from conftest import cohort_config, make_tiny_cohort

from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.predict import PredictDataModule
from gazimed_lab.data.spec import InputSpec, SpecError

CUSTOM_GRID = [
    "data.grid_shape=[20,24,20]",
    "data.grid_affine=[[-8,0,0,78],[0,8,0,-114],[0,0,8,-72],[0,0,0,1]]",
]


def _config(manifest: Path, tmp_path: Path, *extra: str) -> object:
    return cohort_config(manifest, tmp_path, "data.batch_size=4", *extra)


def _all_batches(loader: torch.utils.data.DataLoader) -> dict[str, object]:
    batches = list(loader)
    out: dict[str, object] = {
        key: torch.cat([b[key] for b in batches]) for key in batches[0] if key != "subject_id"
    }
    out["subject_id"] = [sid for b in batches for sid in b["subject_id"]]
    return out


@pytest.mark.parametrize(
    ("channels", "extra", "shape"),
    [
        (1, [], (40, 48, 40)),
        (2, [], (40, 48, 40)),
        (3, [], (40, 48, 40)),
        (2, CUSTOM_GRID, (20, 24, 20)),
    ],
)
def test_batch_shapes_dtypes_and_missing_pet(
    tiny_cohort: Path, tmp_path: Path, channels: int, extra: list[str], shape: tuple
) -> None:
    cfg = _config(tiny_cohort, tmp_path, f"data.channels={channels}", *extra)
    dm = MNIDataModule(cfg)
    dm.setup("fit")
    assert dm.img_size == shape
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {
        "images", "modality_mask", "clinical_features", "clinical_mask", "targets", "subject_id"
    }
    assert batch["images"].shape == (4, channels, *shape)
    assert batch["modality_mask"].shape == (4, 2)
    assert batch["clinical_features"].shape == (4, 6) == batch["clinical_mask"].shape
    assert batch["targets"].shape == (4,)
    for key in ("images", "modality_mask", "clinical_features", "clinical_mask", "targets"):
        assert batch[key].dtype == torch.float32, key
    assert isinstance(batch["subject_id"], list) and isinstance(batch["subject_id"][0], str)
    assert torch.isfinite(batch["images"]).all()

    dm.setup()
    everyone = {
        name: _all_batches(dm.split_dataloader(name)) for name in ("train", "val", "test")
    }
    found = [(name, b["subject_id"].index("sub-003")) for name, b in everyone.items()
             if "sub-003" in b["subject_id"]]
    assert len(found) == 1
    name, i = found[0]
    b = everyone[name]
    assert b["modality_mask"][i].tolist() == [1.0, 0.0]
    if channels > 1:
        assert (b["images"][i, 1:] == 0).all()
        others = [j for j in range(len(b["subject_id"])) if j != i]
        assert (b["modality_mask"][others, 1] == 1).all()
        assert (b["images"][others, 1].abs().sum(dim=(1, 2, 3)) > 0).all()
    else:
        assert (b["modality_mask"][:, 1] == 0).all()  # no PET channel is served
    mri = b["images"][i, 0]
    assert mri.abs().sum() > 0 and abs(float(mri[mri != 0].mean())) < 0.1  # z-scored


def test_augmentation_in_training_only_and_reproducible(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    cfg = _config(tiny_cohort, tmp_path, "data.aug_prob=1.0", "data.channels=3", *CUSTOM_GRID)
    dm = MNIDataModule(cfg)
    dm.setup("fit")
    # the same seed gives the same first epoch; the next epoch differs
    first = next(iter(dm.train_dataloader()))
    again = MNIDataModule(cfg)
    again.setup("fit")
    repeat = next(iter(again.train_dataloader()))
    assert repeat["subject_id"] == first["subject_id"]
    assert torch.equal(repeat["images"], first["images"])
    # epoch 1 differs from epoch 0, and is the same whether reached or started from
    # (what a resumed run relies on)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    second = next(iter(loader))
    assert not torch.equal(first["images"], second["images"])
    fresh = again.train_dataloader()
    fresh.sampler.set_epoch(1)
    assert torch.equal(next(iter(fresh))["images"], second["images"])
    # val batches are deterministic across epochs; train batches are augmented
    val_a = _all_batches(dm.val_dataloader())
    val_b = _all_batches(dm.val_dataloader())
    assert torch.equal(val_a["images"], val_b["images"])
    plain = _all_batches(dm.split_dataloader("train"))
    aug = _all_batches(dm.split_dataloader("train", augment=True))
    order = [aug["subject_id"].index(s) for s in plain["subject_id"]]
    assert not torch.allclose(plain["images"], aug["images"][order])
    assert torch.equal(plain["clinical_features"], aug["clinical_features"][order])
    # a subject without PET keeps zero PET channels after augmentation
    assert "sub-003" in aug["subject_id"]
    assert (aug["images"][aug["subject_id"].index("sub-003"), 1:] == 0).all()


def test_no_augmentation_when_disabled(tiny_cohort: Path, tmp_path: Path) -> None:
    dm = MNIDataModule(_config(tiny_cohort, tmp_path, "data.augment=false"))
    dm.setup("fit")
    plain = _all_batches(dm.split_dataloader("train"))
    served = _all_batches(dm.train_dataloader())
    order = [served["subject_id"].index(s) for s in plain["subject_id"]]
    assert torch.equal(plain["images"], served["images"][order])


def test_splits_state_and_fit_mode_predict(tiny_cohort: Path, tmp_path: Path) -> None:
    dm = MNIDataModule(_config(tiny_cohort, tmp_path), run_dir=tmp_path / "elsewhere")
    splits = dm.splits
    assert {len(splits[n]) for n in ("val", "test")} == {2}
    for name in ("train", "val", "test"):
        saved = pd.read_csv(tmp_path / "elsewhere" / "splits" / f"{name}.csv")
        assert list(saved["subject_id"]) == list(splits[name]["subject_id"])
    state = json.loads(json.dumps(dm.spec.to_dict()))
    assert state["version"] == 2
    assert state["grid"]["name"] == "demo_4mm" and state["grid"]["shape"] == [40, 48, 40]
    assert np.allclose(state["grid"]["affine"], dm.grid.affine)
    assert state["channels"] == 2 and state["pet_reference"] == "whole_brain"
    assert state["cache_dtype"] == "float16"
    assert len(state["medians"]) == len(state["means"]) == len(state["stds"]) == 6
    dm.setup("predict")
    predicted = _all_batches(dm.predict_dataloader())
    assert predicted["subject_id"] == list(splits["test"]["subject_id"])
    assert InputSpec.from_dict(state) == dm.spec


def test_fixed_split_column_and_kfold_from_config(tmp_path: Path) -> None:
    manifest = make_tiny_cohort(tmp_path / "cohort", n=12)
    table = pd.read_csv(manifest)
    table["split"] = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    table.to_csv(manifest, index=False)
    dm = MNIDataModule(_config(manifest, tmp_path))
    assert list(dm.splits["test"]["subject_id"]) == ["sub-010", "sub-011"]
    assert list(dm.splits["val"]["subject_id"]) == ["sub-008", "sub-009"]
    vals = []
    for fold in range(3):
        cfg = _config(manifest, tmp_path, "data.n_folds=3", f"data.fold={fold}")
        splits = MNIDataModule(cfg).splits
        assert list(splits["test"]["subject_id"]) == ["sub-010", "sub-011"]
        vals += list(splits["val"]["subject_id"])
    assert sorted(vals) == [f"sub-{i:03d}" for i in range(10)]


def test_prediction_mode(tiny_cohort: Path, tmp_path: Path) -> None:
    fit = MNIDataModule(_config(tiny_cohort, tmp_path, "data.channels=3"))
    fit.setup()
    state = json.loads(json.dumps(fit.spec.to_dict()))
    reference = _all_batches(fit.split_dataloader("val"))

    table = pd.read_csv(tiny_cohort)
    new = table.drop(columns=["target", "diagnosis"])
    new = new[[c for c in new.columns if c != "feat_1"] + ["feat_1"]]  # reordered
    new["scanner_note"] = 1.0  # extra column
    new["mri"] = [str(tiny_cohort.parent / p) for p in new["mri"]]
    new["pet"] = [str(tiny_cohort.parent / p) if isinstance(p, str) else "" for p in new["pet"]]
    path = tmp_path / "new" / "to_predict.csv"
    path.parent.mkdir()
    new.to_csv(path, index=False)

    # prediction needs the spec and a manifest, nothing else
    with pytest.warns(UserWarning) as record:
        dm = PredictDataModule(state, path, cache_dir=tmp_path / "cache", batch_size=4)
        dm.setup("predict")
    messages = " ".join(str(r.message) for r in record)
    assert "reordered by name" in messages and "scanner_note" in messages
    assert dm.spec == fit.spec
    out = _all_batches(dm.predict_dataloader())
    assert out["subject_id"] == list(table["subject_id"])
    assert out["images"].shape == (16, 3, 40, 48, 40)
    assert torch.isnan(out["targets"]).all()
    rows = [out["subject_id"].index(s) for s in reference["subject_id"]]
    assert torch.equal(out["clinical_features"][rows], reference["clinical_features"])
    assert torch.equal(out["images"][rows], reference["images"])

    new.drop(columns=["feat_2", "age"]).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = PredictDataModule(state, path, cache_dir=tmp_path / "cache")
        with pytest.raises(ValueError, match=r"got 2 missing: \['age', 'feat_2'\]"):
            dm.setup("predict")
    unfitted = InputSpec.unfitted(fit.spec.grid, 3, n_features=6)
    with pytest.raises(SpecError, match="input spec must be fitted"):
        PredictDataModule(unfitted, path)


def test_datasets_after_setup(tiny_cohort: Path, tmp_path: Path) -> None:
    dm = MNIDataModule(_config(tiny_cohort, tmp_path))
    with pytest.raises(RuntimeError, match=r"call datamodule\.setup\('fit'\) first"):
        len(dm.train_dataset)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (12, 2)
    assert len(dm.train_dataset) == len(dm.splits["train"])
    with pytest.raises(RuntimeError, match=r"setup\('test'\)"):
        _ = dm.test_dataset


def test_worker_processes(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_cohort, tmp_path, "data.num_workers=1", "data.aug_prob=1.0")
    dm = MNIDataModule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    first = next(iter(loader))
    assert first["images"].shape == (4, 2, 40, 48, 40)
    again = MNIDataModule(cfg)
    again.setup("fit")
    assert torch.equal(next(iter(again.train_dataloader()))["images"], first["images"])


class _TinyModel(pl.LightningModule):
    def __init__(self, channels: int, n_features: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(channels + n_features, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        pooled = batch["images"].mean(dim=(2, 3, 4))
        return torch.sigmoid(self.head(torch.cat([pooled, batch["clinical_features"]], 1)))[:, 0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self(batch), batch["targets"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = torch.nn.functional.mse_loss(self(batch), batch["targets"])
        self.log("val/loss", loss, batch_size=len(batch["subject_id"]))

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"subject_id": batch["subject_id"], "score": self(batch)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_round_trip(tiny_cohort: Path, tmp_path: Path) -> None:
    dm = MNIDataModule(_config(tiny_cohort, tmp_path, *CUSTOM_GRID))
    model = _TinyModel(2, len(dm.feature_names))
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path / "trainer", enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert "MNIDataModule" not in ckpt  # the spec lives in the model's hyperparameters only
    out = trainer.predict(model, datamodule=dm)
    assert [s for b in out for s in b["subject_id"]] == list(dm.splits["test"]["subject_id"])
