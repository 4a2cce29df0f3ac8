"""``MNIDataModule``: splits, cached volumes, clinical features and batches.

``MNIDataModule(cfg)`` reads ``cfg.data.manifest``, makes subject-level splits
(saved to ``run_dir/splits``), fits the clinical statistics on the training split
and serves train / val / test batches (``predict_dataloader`` serves the test
split). What it decides about the model is one object, :attr:`MNIDataModule.spec`
(an :class:`~gazimed_lab.data.spec.InputSpec`); ``MNIDataModule(cfg, spec=spec)``
reuses a saved spec (its grid, channels, PET reference and statistics) instead of
fitting one. Scoring new subjects with a trained model is
:class:`~gazimed_lab.data.predict.PredictDataModule`.

Subject order comes from :class:`~gazimed_lab.data.sampling.SubjectSampler`:
seeded per epoch (a resumed run sees the same batches as an uninterrupted one)
and, with several processes, shared out so that the global batches equal those
of one process with ``world_size * data.batch_size``.

A batch is a dict (as the model receives it)::

    images             (B, C, D, H, W) float32   C = spec.channels (MRI, PET, PET - MRI)
    modality_mask      (B, 2) float32            [MRI present, PET present]
    clinical_features  (B, F) float32            imputed and standardized
    clinical_mask      (B, F) float32            1 = observed, 0 = imputed
    targets            (B,) float32              NaN where unknown
    subject_id         list[str]

With several sessions per subject (a ``session_id`` column) a row of a split is a
session, and a batch also holds ``session_id`` (list[str]) and ``subject_index``
((B,) int64, the subject's position in its split: the metrics average a subject's
sessions, so no subject counts twice). The splits stay subject-level (see
:func:`~gazimed_lab.data.splits.make_splits`).

Under a running Lightning trainer the loaders serve ``images`` in the cache dtype
(float16 by default: half the bytes to copy, pin and send) and
:meth:`MNIDataModule.on_after_batch_transfer` turns them into float32 on the
training device, then augments training batches there
(:class:`~gazimed_lab.data.augment.BatchAugment`, deterministic per subject and
epoch). Loaders used outside a running trainer convert and augment in the loader
(:mod:`gazimed_lab.data.batches`), so a model never receives float16 images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn, TrainerStatus
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from gazimed_lab.data.augment import BatchAugment
from gazimed_lab.data.batches import BatchCollate, as_float32
from gazimed_lab.data.cache import VolumeCache
from gazimed_lab.data.cache_build import cache_subjects
from gazimed_lab.data.clinical import ClinicalStats, align_feature_columns
from gazimed_lab.data.grid import Grid, grid_from_config
from gazimed_lab.data.manifest import RESERVED_COLUMNS, Cohort, read_manifest
from gazimed_lab.data.normalize import brain_mask
from gazimed_lab.data.resample import Support
from gazimed_lab.data.sampling import SubjectSampler
from gazimed_lab.data.sessions import has_sessions
from gazimed_lab.data.spec import InputSpec
from gazimed_lab.data.splits import (
    SPLIT_NAMES,
    check_training_splits,
    make_splits,
    write_splits,
)
from gazimed_lab.data.transforms import VolumeDataset

__all__ = ["MNIDataModule", "build_dataset", "feature_columns_for", "subject_loader"]

log = logging.getLogger(__name__)


def feature_columns_for(spec: InputSpec, manifest: str | Path) -> list[str] | None:
    """Return the clinical columns to read from ``manifest`` for a spec with feature names.

    Columns are matched by name (reordered or extra columns warn; missing ones raise,
    see :func:`~gazimed_lab.data.clinical.align_feature_columns`). ``None`` when the
    spec has no names (the manifest's own numeric columns are then used).
    """
    if spec.feature_names is None:
        return None
    path = Path(manifest)
    if not path.is_file():  # read_manifest reports it
        return list(spec.feature_names)
    header = [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
    available = [c for c in header if c not in RESERVED_COLUMNS]
    return align_feature_columns(available, list(spec.feature_names), str(path))


def build_dataset(table: pd.DataFrame, spec: InputSpec, cache: VolumeCache,
                  manifest: str | Path, name: str,
                  augment: BatchAugment | None = None, accept_flagged: bool = False,
                  records: list[dict[str, str]] | None = None,
                  workers: int = 0) -> VolumeDataset:
    """Cache a split's volumes (as ``spec`` says) and serve them with its features.

    ``accept_flagged``, ``records`` and ``workers`` (processes building missing
    entries): see :func:`~gazimed_lab.data.cache_build.cache_subjects`.
    """
    arrays, masks = cache_subjects(
        table, cache, spec.grid, spec.channels, spec.pet_reference, manifest,
        accept_flagged=accept_flagged, records=records, workers=workers,
    )
    features, feature_mask = spec.clinical.transform(table, source=f"{name} split")
    targets = pd.to_numeric(table["target"], errors="coerce").to_numpy(dtype=np.float32)
    sessions = table["session_id"].astype(str).tolist() if has_sessions(table) else None
    return VolumeDataset(arrays, masks, features, feature_mask, targets,
                         table["subject_id"].astype(str).tolist(), augment, sessions)


def subject_loader(dataset: VolumeDataset, batch_size: int, num_workers: int = 0,
                   pin_memory: bool = False, train: bool = False, seed: int = 0,
                   world: int = 1, rank: int = 0, on_device: bool = False,
                   dtype: torch.dtype | None = None) -> DataLoader:
    """Batches of ``dataset`` in :class:`SubjectSampler` order (this process's share).

    ``train`` shuffles and (when the dataset has augmentation) keys the items;
    ``on_device`` and ``dtype``: see :class:`~gazimed_lab.data.batches.BatchCollate`
    (images in the cache dtype, or stacked into ``dtype`` when not to be augmented;
    converted and augmented by the data module after the transfer).
    """
    augment = dataset.augment if train else None
    served = dataset.as_stored(augment=augment is not None)
    sampler = SubjectSampler(
        served, shuffle=train, seed=seed, num_replicas=world, rank=rank,
        keyed=augment is not None,
    )
    count = len(sampler)
    # A last batch of one sample breaks batch statistics: drop it in training only.
    drop_last = train and count > batch_size and count % batch_size == 1
    return DataLoader(
        served, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        collate_fn=BatchCollate(on_device=on_device, augment=augment, dtype=dtype),
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
    spec
        An :class:`~gazimed_lab.data.spec.InputSpec` (or its dict) saved at training,
        e.g. ``model.spec``: its grid, channels, PET reference, cache dtype, feature
        names and (when fitted) clinical statistics are used instead of the config's
        data choices and a new fit.

    Attributes
    ----------
    cache : VolumeCache
        The volume cache (``cache.builds`` / ``cache.hits`` count entries).
    cohort : Cohort or None
        The manifest read (after the first use).
    grid, channels, pet_reference
        The data choices in force (the given spec's, else the config's).
    """

    def __init__(self, cfg: Any, run_dir: str | Path | None = None,
                 spec: InputSpec | dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        data = cfg.data
        self.run_dir = Path(run_dir if run_dir is not None else cfg.system.run_dir)
        self.seed = int(cfg.system.seed)
        self._given = InputSpec.from_dict(spec, "spec") if spec is not None else None
        given = self._given
        self.grid: Grid = given.grid if given else grid_from_config(cfg)
        self.channels = int(given.channels if given else data.channels)
        self.pet_reference = str(given.pet_reference if given else data.pet_reference)
        self.cache = VolumeCache(data.cache_dir, given.cache_dtype if given else data.cache_dtype)
        self.cohort: Cohort | None = None
        self._splits: dict[str, pd.DataFrame] | None = None
        self._spec: InputSpec | None = None
        self._datasets: dict[str, VolumeDataset] = {}
        self._checked_for_training = False
        self._image_records: dict[str, list[dict[str, str]]] = {}
        self._warned_flagged = False
        #: The grid's brain mask as a support: every normalized volume is 0 outside it
        #: (``gazimed_lab.data.normalize``), so the random affine computes only what can be
        #: nonzero (None: a grid without brain voxels; normalization refuses it later, with
        #: its own message).
        mask = brain_mask(self.grid)
        self.brain_support: Support | None = Support(mask) if mask.any() else None
        #: Training augmentation (``data.augment``), applied to whole batches.
        self.augment: BatchAugment | None = (
            BatchAugment.from_config(data, seed=self.seed, support=self.brain_support)
            if bool(data.augment) else None)

    # ------------------------------------------------------------------ tables
    def _prepare_tables(self) -> None:
        """Read the manifest, make the splits and fit (or take) the input spec."""
        if self._splits is not None:
            return
        data = self.cfg.data
        names = list(data.clinical_columns) if data.clinical_columns else None
        if self._given is not None and self._given.feature_names is not None:
            names = feature_columns_for(self._given, data.manifest)
        # Images are checked (all problems listed at once) when the cache is built.
        self.cohort = read_manifest(
            data.manifest, clinical_columns=names, require_targets=bool(data.require_targets),
            check_images=False, session_order_column=data.session_order_column,
        )
        splits = make_splits(
            self.cohort.table,
            seed=self.seed,
            val_fraction=float(data.val_fraction),
            test_fraction=float(data.test_fraction),
            n_folds=int(data.n_folds),
            fold=int(data.fold),
            manifest=str(self.cohort.path),
            eval_sessions=str(data.eval_sessions),
        )
        # Before a trainer is attached, Lightning's launcher rank (from the environment)
        # tells the processes of a multi-process run apart.
        rank = getattr(rank_zero_only, "rank", 0)
        rank_zero = self.trainer.is_global_zero if self.trainer else rank == 0
        if rank_zero:
            write_splits(splits, self.run_dir)
        if self._given is not None and self._given.fitted:
            spec = self._given
        else:
            stats = ClinicalStats.fit(
                splits["train"], list(self.cohort.clinical_columns),
                source=f"train split of {self.cohort.path}",
            )
            spec = InputSpec.fit(self.grid, self.channels, self.pet_reference, stats,
                                 str(self.cache.dtype))
            if self._given is not None:  # unfitted: sizes must agree
                spec = self._given.adopt(spec, ("given spec", "data"), str(self.cohort.path))
        self._spec = spec
        self._splits = splits
        log.info("splits: %s", {name: len(part) for name, part in splits.items()})

    def check_for_training(self) -> None:
        """Refuse splits that cannot train a meaningful model (once per data module).

        :func:`~gazimed_lab.data.splits.check_training_splits` with the clinical
        features in use and ``trainer.monitor``: a one-class train split, a one-class
        val split when checkpoints are chosen on AUROC, a clinical copy of the target.
        Lightning's fit calls it (``prepare_data`` / ``setup("fit")``) before the
        cache is built or a checkpoint written; other uses (QA, scoring) do not.

        Raises
        ------
        SplitError
            Every problem, naming the split and its class counts, or the column.
        """
        if self._checked_for_training:
            return
        splits = self.splits
        assert self.cohort is not None
        check_training_splits(splits, self.feature_names, manifest=str(self.cohort.path),
                              monitor=str(self.cfg.trainer.monitor))
        from gazimed_lab.data.qa import warn_cohort  # logged and warned once, not refused

        warn_cohort(self.cohort, splits, self.grid, log)
        self._checked_for_training = True

    def _fitting(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.state.fn == TrainerFn.FITTING

    @property
    def splits(self) -> dict[str, pd.DataFrame]:
        """Subject tables per split (``train``/``val``/``test``)."""
        self._prepare_tables()
        assert self._splits is not None
        return self._splits

    @property
    def spec(self) -> InputSpec:
        """The fitted input contract (grid, channels, clinical statistics, ...)."""
        self._prepare_tables()
        assert self._spec is not None
        return self._spec

    @property
    def feature_names(self) -> list[str]:
        """Clinical feature names, in feature-vector order (``spec.feature_names``)."""
        return list(self.spec.feature_names or ())

    @property
    def img_size(self) -> tuple[int, int, int]:
        """Spatial shape (D, H, W) of the image tensors (the grid shape)."""
        return self.grid.shape

    # ------------------------------------------------------------------ volumes
    def _build_dataset(self, name: str) -> VolumeDataset:
        table = self.splits[name]
        assert self.cohort is not None
        augment = self.augment if name == "train" else None
        records: list[dict[str, str]] = []
        dataset = build_dataset(table, self.spec, self.cache, self.cohort.path, name, augment,
                                accept_flagged=bool(self.cfg.data.accept_flagged_images),
                                records=records, workers=int(self.cfg.data.cache_workers))
        self._image_records[name] = records
        self._write_image_records()
        return dataset

    def _write_image_records(self) -> None:
        """Write ``run_dir/qa/resampled.csv`` and ``accepted_flagged.csv`` (rank zero).

        One row per volume (of the splits built so far) that was resampled onto the
        grid, or used although flagged as probably not in MNI space
        (``data.accept_flagged_images``); a file is written only when it has rows.
        """
        rank = getattr(rank_zero_only, "rank", 0)
        if not (self.trainer.is_global_zero if self.trainer else rank == 0):
            return
        sessions = self.cohort is not None and self.cohort.has_sessions
        rows = pd.DataFrame([{"split": name, **r} for name, recs in self._image_records.items()
                             for r in recs],
                            columns=["split", "subject_id", *(["session_id"] if sessions else []),
                                     "modality", "file", "grid_action", "flag"])
        folder = self.run_dir / "qa"
        resampled = rows[rows["grid_action"].str.startswith("resampled")]
        flagged = rows[rows["flag"] != ""]
        for frame, file in ((resampled, "resampled.csv"), (flagged, "accepted_flagged.csv")):
            if len(frame):
                folder.mkdir(parents=True, exist_ok=True)
                frame.to_csv(folder / file, index=False)
        if len(flagged) and not self._warned_flagged:
            log.warning("%d flagged image(s) accepted (data.accept_flagged_images): see %s",
                        len(flagged), folder / "accepted_flagged.csv")
            self._warned_flagged = True

    def _names_for(self, stage: str | None) -> list[str]:
        wanted = {
            "fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"],
        }
        return wanted.get(stage or "", list(SPLIT_NAMES))

    def prepare_data(self) -> None:
        """Build the volume cache for every subject (once, on the main process)."""
        if self._fitting():
            self.check_for_training()  # before the (long) cache build
        for name in self._names_for(None):
            self._dataset(name)

    def setup(self, stage: str | None = None) -> None:
        """Prepare the datasets a Lightning stage needs (reads the cache)."""
        if stage == "fit":
            self.check_for_training()
        for name in self._names_for(stage):
            self._dataset(name)

    def _dataset(self, name: str) -> VolumeDataset:
        if name not in self._datasets:
            self._datasets[name] = self._build_dataset(name)
        return self._datasets[name]

    def _set_up(self, name: str) -> VolumeDataset:
        if name not in self._datasets:
            stage = {"train": "fit", "val": "fit", "test": "test"}[name]
            raise RuntimeError(
                f"`{name}_dataset` must be read after setup, got a data module not set up for "
                f"it; call datamodule.setup({stage!r}) first"
            )
        return self._datasets[name]

    @property
    def train_dataset(self) -> VolumeDataset:
        """The training split's dataset (after ``setup("fit")``)."""
        return self._set_up("train")

    @property
    def val_dataset(self) -> VolumeDataset:
        """The validation split's dataset (after ``setup("fit")``)."""
        return self._set_up("val")

    @property
    def test_dataset(self) -> VolumeDataset:
        """The test split's dataset (after ``setup("test")``)."""
        return self._set_up("test")

    # ------------------------------------------------------------------ loaders
    def _processes(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _served_by_trainer(self) -> bool:
        """Whether a running trainer uses this data module (so its batch hooks run)."""
        trainer = self.trainer
        return (trainer is not None and getattr(trainer, "datamodule", None) is self
                and trainer.state.status == TrainerStatus.RUNNING)

    def _loader(self, dataset: VolumeDataset, train: bool, shared: bool = True) -> DataLoader:
        """Batches of ``dataset``; ``shared``: this process's share when several run.

        A loader of this process's share, asked for by a running trainer that uses this
        data module, leaves conversion and augmentation to :meth:`on_after_batch_transfer`;
        for a trainer on the CPU, batches that are not to be augmented are stacked into
        float32 at once (one pass instead of a stack and a conversion).
        """
        data = self.cfg.data
        world, rank = self._processes() if shared else (1, 0)
        on_device = shared and self._served_by_trainer()
        trainer = self.trainer
        on_cpu = on_device and trainer is not None and trainer.strategy.root_device.type == "cpu"
        return subject_loader(dataset, int(data.batch_size), int(data.num_workers),
                              bool(data.pin_memory), train, self.seed, world, rank,
                              on_device=on_device, dtype=torch.float32 if on_cpu else None)

    def finish_batch(self, batch: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """Make a transferred batch what the model receives: float32 images, augmented in training.

        What :meth:`on_after_batch_transfer` does. ``images`` become float32 on their
        device (a GPU converts there); with ``train`` and an ``augment_key`` in the batch
        (keyed training items) :attr:`augment` transforms each subject from (seed,
        epoch, subject) on the same device. ``augment_key`` is removed.
        """
        keys = batch.pop("augment_key", None)
        images = batch["images"]
        if train and keys is not None and self.augment is not None:  # it converts as well
            images = self.augment(images, batch["modality_mask"], keys)
        else:
            images, _ = as_float32(images)
        batch["images"] = images
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning hook: :meth:`finish_batch`, augmenting while the trainer trains."""
        if not isinstance(batch, dict) or "images" not in batch:
            return batch
        trainer = self.trainer
        return self.finish_batch(batch, train=trainer is not None and trainer.training)

    def split_dataloader(self, name: str, augment: bool = False) -> DataLoader:
        """Loader over one split (``train``/``val``/``test``), in subject order.

        Without ``augment`` even the train split is served unaugmented and
        unshuffled (e.g. to write predictions for every split). Always the whole
        split, also in a multi-process run, and always float32 (converted, and
        augmented with ``augment``, in the loader).
        """
        if name not in self.splits:
            raise ValueError(f"`split` must be one of {sorted(self.splits)}, got {name!r}")
        dataset = self._dataset(name)
        if not augment and dataset.augment is not None:
            dataset = dataset.as_stored(augment=False)
        return self._loader(dataset, train=augment, shared=False)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented (``data.augment``) training batches."""
        return self._loader(self._dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        """Serve validation batches (no augmentation, fixed order)."""
        return self._loader(self._dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches (no augmentation, fixed order)."""
        return self._loader(self._dataset("test"), train=False)

    def predict_dataloader(self) -> DataLoader:
        """Serve the test split (score new subjects with ``PredictDataModule``)."""
        if len(self.splits["test"]) == 0:
            raise ValueError(
                "test split must hold subjects to predict, got 0; set data.test_fraction > 0 or "
                "score a manifest with PredictDataModule / predict_manifest"
            )
        return self._loader(self._dataset("test"), train=False)
