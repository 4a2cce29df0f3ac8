"""``MNIDataModule``: splits, cached volumes, clinical features and batches.

Fit mode (``MNIDataModule(cfg)``) reads ``cfg.data.manifest``, makes
subject-level splits (saved to ``run_dir/splits``), fits the clinical
statistics on the training split and serves train / val / test batches
(``predict_dataloader`` serves the test split). Prediction mode
(``MNIDataModule(cfg, predict_manifest=csv, preprocessing=state)``) applies a
saved :meth:`MNIDataModule.preprocessing_state` to another manifest, whose
targets may be missing.

Subject order comes from :class:`~gazimed_lab.data.sampling.SubjectSampler`:
seeded per epoch (a resumed run sees the same batches as an uninterrupted one)
and, with several processes, shared out so that the global batches equal those
of one process with ``world_size * data.batch_size``.

A batch is a dict::

    images             (B, C, D, H, W) float32   C = data.channels (MRI, PET, PET - MRI)
    modality_mask      (B, 2) float32            [MRI present, PET present]
    clinical_features  (B, F) float32            imputed and standardized
    clinical_mask      (B, F) float32            1 = observed, 0 = imputed
    targets            (B,) float32              NaN where unknown
    subject_id         list[str]
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from gazimed_lab.data.cache import VolumeCache, cache_subjects
from gazimed_lab.data.clinical import ClinicalStats, align_feature_columns
from gazimed_lab.data.grid import Grid, grid_from_config
from gazimed_lab.data.manifest import RESERVED_COLUMNS, Cohort, read_manifest
from gazimed_lab.data.sampling import SubjectSampler
from gazimed_lab.data.splits import SPLIT_NAMES, make_splits, write_splits
from gazimed_lab.data.transforms import MRI_NORMALIZATION, TrainAugment, VolumeDataset

__all__ = ["PREPROCESSING_VERSION", "MNIDataModule"]

log = logging.getLogger(__name__)

#: Version of the :meth:`MNIDataModule.preprocessing_state` layout.
PREPROCESSING_VERSION = 1


_STATE_KEYS = ("grid", "channels", "pet_reference", "feature_names", "medians", "means", "stds")


def _grid_from_state(state: dict[str, Any]) -> Grid:
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(
            "`preprocessing` must be a state from MNIDataModule.preprocessing_state(), got "
            f"one without {missing}"
        )
    grid = state["grid"]
    return Grid(
        str(grid["name"]),
        tuple(int(s) for s in grid["shape"]),  # type: ignore[arg-type]
        tuple(tuple(float(v) for v in row) for row in grid["affine"]),
    )


class MNIDataModule(pl.LightningDataModule):
    """Lightning data module over a manifest of MNI-space MRI / PET and clinical features.

    Parameters
    ----------
    cfg
        Config tree (:func:`gazimed_lab.config.load_config`); uses ``cfg.data``
        and ``cfg.system.seed``.
    run_dir
        Where ``splits/{train,val,test}.csv`` are written; defaults to
        ``cfg.system.run_dir``.
    predict_manifest
        A manifest to predict on (targets optional). Needs ``preprocessing``.
    preprocessing
        A :meth:`preprocessing_state` saved at training (e.g. from a
        checkpoint). Its grid, channels, PET reference and clinical statistics
        are used instead of fitting new ones.

    Attributes
    ----------
    cache : VolumeCache
        The volume cache (``cache.builds`` / ``cache.hits`` count entries).
    cohort : Cohort or None
        The manifest read (after the first use).
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: str | Path | None = None,
        predict_manifest: str | Path | None = None,
        preprocessing: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if predict_manifest is not None and preprocessing is None:
            raise ValueError(
                "`preprocessing` must be given with `predict_manifest`, got None; pass the "
                "state saved at training (dm.preprocessing_state() or the checkpoint's)"
            )
        self.cfg = cfg
        data = cfg.data
        self.run_dir = Path(run_dir if run_dir is not None else cfg.system.run_dir)
        self.predict_manifest = Path(predict_manifest) if predict_manifest is not None else None
        self.seed = int(cfg.system.seed)
        self._given = dict(preprocessing) if preprocessing is not None else None
        if self._given is not None:
            self.grid = _grid_from_state(self._given)
            self.channels = int(self._given["channels"])
            self.pet_reference = str(self._given["pet_reference"])
            self._given_dtype = str(self._given.get("cache_dtype", data.cache_dtype))
            self._warn_config_differs(data)
            dtype = self._given_dtype
        else:
            self.grid = grid_from_config(cfg)
            self.channels = int(data.channels)
            self.pet_reference = str(data.pet_reference)
            dtype = str(data.cache_dtype)
        self.cache = VolumeCache(data.cache_dir, dtype)
        self.cohort: Cohort | None = None
        self._splits: dict[str, pd.DataFrame] | None = None
        self._stats: ClinicalStats | None = None
        self._datasets: dict[str, VolumeDataset] = {}

    # ------------------------------------------------------------------ tables
    def _warn_config_differs(self, data: Any) -> None:
        current = grid_from_config(self.cfg)
        same = (
            current.shape == self.grid.shape
            and np.allclose(current.affine, self.grid.affine)
            and int(data.channels) == self.channels
            and str(data.pet_reference) == self.pet_reference
            and str(data.cache_dtype) == self._given_dtype
        )
        if not same:
            warnings.warn(
                "using the saved preprocessing instead of the config's data settings: grid "
                f"{self.grid.name} {self.grid.shape}, channels {self.channels}, pet_reference "
                f"{self.pet_reference}, cache_dtype {self._given_dtype}",
                stacklevel=3,
            )

    def _state_columns(self, path: Path) -> list[str]:
        """Check the saved feature names against a manifest's header (warn / raise)."""
        assert self._given is not None
        if not path.is_file():  # read_manifest reports it
            return list(self._given["feature_names"])
        header = [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
        available = [c for c in header if c not in RESERVED_COLUMNS]
        return align_feature_columns(available, list(self._given["feature_names"]), str(path))

    def _prepare_tables(self) -> None:
        """Read the manifest, make the splits and fit (or load) the clinical statistics."""
        if self._splits is not None:
            return
        if self.predict_manifest is not None:
            self._prepare_predict()
            return
        data = self.cfg.data
        names = list(data.clinical_columns) if data.clinical_columns else None
        if self._given is not None:
            names = self._state_columns(Path(data.manifest))
        # Images are checked (all problems listed at once) when the cache is built.
        self.cohort = read_manifest(
            data.manifest, clinical_columns=names, require_targets=bool(data.require_targets),
            check_images=False,
        )
        splits = make_splits(
            self.cohort.table,
            seed=self.seed,
            val_fraction=float(data.val_fraction),
            test_fraction=float(data.test_fraction),
            n_folds=int(data.n_folds),
            fold=int(data.fold),
            manifest=str(self.cohort.path),
        )
        # Before a trainer is attached, Lightning's launcher rank (from the environment)
        # tells the processes of a multi-process run apart.
        rank_zero = self.trainer.is_global_zero if self.trainer else rank_zero_only.rank == 0
        if rank_zero:
            write_splits(splits, self.run_dir)
        if self._given is not None:
            self._stats = ClinicalStats.from_dict(self._given)
        else:
            self._stats = ClinicalStats.fit(
                splits["train"], list(self.cohort.clinical_columns),
                source=f"train split of {self.cohort.path}",
            )
        self._splits = splits
        log.info("splits: %s", {name: len(part) for name, part in splits.items()})

    def _prepare_predict(self) -> None:
        assert self._given is not None and self.predict_manifest is not None
        names = self._state_columns(self.predict_manifest)
        self.cohort = read_manifest(
            self.predict_manifest, clinical_columns=names, require_targets=False,
            check_images=False,
        )
        self._stats = ClinicalStats.from_dict(self._given)
        self._splits = {"predict": self.cohort.table.assign(split="predict")}

    @property
    def splits(self) -> dict[str, pd.DataFrame]:
        """Subject tables per split (``train``/``val``/``test``, or ``predict``)."""
        self._prepare_tables()
        assert self._splits is not None
        return self._splits

    @property
    def feature_names(self) -> list[str]:
        """Clinical feature names, in feature-vector order."""
        self._prepare_tables()
        assert self._stats is not None
        return list(self._stats.feature_names)

    @property
    def img_size(self) -> tuple[int, int, int]:
        """Spatial shape (D, H, W) of the image tensors (the grid shape)."""
        return tuple(int(s) for s in self.grid.shape)  # type: ignore[return-value]

    @property
    def clinical_stats(self) -> ClinicalStats:
        """The clinical statistics (fitted on train, or loaded)."""
        self._prepare_tables()
        assert self._stats is not None
        return self._stats

    def preprocessing_state(self) -> dict[str, Any]:
        """JSON-able preprocessing: grid, channels, PET reference, clinical statistics.

        Pass it back as ``MNIDataModule(cfg, predict_manifest=..., preprocessing=state)``.
        """
        stats = self.clinical_stats
        return {
            "version": PREPROCESSING_VERSION,
            "grid": {
                "name": self.grid.name,
                "shape": [int(s) for s in self.grid.shape],
                "affine": [[float(v) for v in row] for row in self.grid.affine_tuple],
            },
            "channels": self.channels,
            "pet_reference": self.pet_reference,
            "mri_normalization": MRI_NORMALIZATION,
            "cache_dtype": str(self.cache.dtype),
            **stats.to_dict(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the preprocessing state (Lightning saves it in checkpoints)."""
        if self._stats is None:
            return {}
        return {"preprocessing_state": self.preprocessing_state()}

    # ------------------------------------------------------------------ volumes
    def _build_dataset(self, name: str) -> VolumeDataset:
        table = self.splits[name]
        assert self.cohort is not None
        arrays, masks = cache_subjects(
            table, self.cache, self.grid, self.channels, self.pet_reference, self.cohort.path
        )
        features, feature_mask = self.clinical_stats.transform(table, source=f"{name} split")
        augment = None
        if name == "train" and bool(self.cfg.data.augment):
            augment = TrainAugment.from_config(
                self.cfg.data, seed=self.seed, spatial_size=self.img_size
            )
        targets = pd.to_numeric(table["target"], errors="coerce").to_numpy(dtype=np.float32)
        return VolumeDataset(
            arrays, masks, features,
            feature_mask, targets, table["subject_id"].astype(str).tolist(), augment,
        )

    def _names_for(self, stage: str | None) -> list[str]:
        if self.predict_manifest is not None:
            return ["predict"]
        wanted = {
            "fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"],
        }
        return wanted.get(stage or "", list(SPLIT_NAMES))

    def prepare_data(self) -> None:
        """Build the volume cache for every subject (once, on the main process)."""
        for name in self._names_for(None):
            self._dataset(name)

    def setup(self, stage: str | None = None) -> None:
        """Prepare the datasets a Lightning stage needs (reads the cache)."""
        for name in self._names_for(stage):
            self._dataset(name)

    def _dataset(self, name: str) -> VolumeDataset:
        if name not in self._datasets:
            self._datasets[name] = self._build_dataset(name)
        return self._datasets[name]

    # ------------------------------------------------------------------ loaders
    def _processes(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, dataset: VolumeDataset, train: bool, shared: bool = True) -> DataLoader:
        """Batches of ``dataset``; ``shared``: this process's share when several run."""
        data = self.cfg.data
        workers = int(data.num_workers)
        batch_size = int(data.batch_size)
        world, rank = self._processes() if shared else (1, 0)
        sampler = SubjectSampler(
            dataset, shuffle=train, seed=self.seed, num_replicas=world, rank=rank,
            keyed=train and dataset.augment is not None,
        )
        count = len(sampler)
        # A last batch of one sample breaks batch statistics: drop it in training only.
        drop_last = train and count > batch_size and count % batch_size == 1
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=bool(data.pin_memory),
            persistent_workers=workers > 0,
        )

    def split_dataloader(self, name: str, augment: bool = False) -> DataLoader:
        """Loader over one split (``train``/``val``/``test``/``predict``), in subject order.

        Without ``augment`` even the train split is served unaugmented and
        unshuffled (e.g. to write predictions for every split). Always the whole
        split, also in a multi-process run.
        """
        if name not in self.splits:
            raise ValueError(f"`split` must be one of {sorted(self.splits)}, got {name!r}")
        dataset = self._dataset(name)
        if not augment and dataset.augment is not None:
            dataset = VolumeDataset(
                dataset.arrays, dataset.modality_masks, dataset.features,
                dataset.feature_mask, dataset.targets, dataset.subject_ids, None,
            )
        return self._loader(dataset, train=augment, shared=False)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented (``data.augment``) training batches."""
        self._require_fit_mode("train_dataloader")
        return self._loader(self._dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        """Serve validation batches (no augmentation, fixed order)."""
        self._require_fit_mode("val_dataloader")
        return self._loader(self._dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches (no augmentation, fixed order)."""
        self._require_fit_mode("test_dataloader")
        return self._loader(self._dataset("test"), train=False)

    def predict_dataloader(self) -> DataLoader:
        """Serve the prediction manifest, or the test split in fit mode."""
        name = "predict" if self.predict_manifest is not None else "test"
        if name == "test" and len(self.splits["test"]) == 0:
            raise ValueError(
                "test split must hold subjects to predict, got 0; set data.test_fraction > 0 or "
                "pass predict_manifest"
            )
        return self._loader(self._dataset(name), train=False)

    def _require_fit_mode(self, what: str) -> None:
        if self.predict_manifest is not None:
            raise RuntimeError(
                f"`{what}` must be used in fit mode, got a data module in prediction mode "
                f"({self.predict_manifest}); use predict_dataloader"
            )
