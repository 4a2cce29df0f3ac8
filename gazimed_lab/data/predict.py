"""Scoring new subjects: a manifest plus a trained model's :class:`InputSpec`, nothing else.

``PredictDataModule(spec, manifest)`` validates the manifest (targets optional),
matches its clinical columns to the spec's feature names, conforms and normalizes
the volumes exactly as at training (the spec's grid, channels, PET reference and
cache dtype) and applies the training split's imputation and scaling.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from gazimed_lab.data.cache import VolumeCache
from gazimed_lab.data.datamodule import build_dataset, feature_columns_for, subject_loader
from gazimed_lab.data.manifest import Cohort, read_manifest
from gazimed_lab.data.spec import InputSpec, SpecError
from gazimed_lab.data.transforms import VolumeDataset

__all__ = ["PredictDataModule"]


class PredictDataModule(pl.LightningDataModule):
    """Batches of a manifest's subjects, prepared as a trained model's spec says.

    Parameters
    ----------
    spec
        The model's fitted input spec (``model.spec``, saved in its checkpoint).
    manifest
        The subjects to score; ``target`` may be missing or empty.
    cache_dir
        Preprocessed-volume cache.
    batch_size, num_workers, pin_memory
        Loader settings.
    session_order_column
        The training config's ``data.session_order_column`` (manifests with sessions).
    accept_flagged
        Score images flagged as probably not in MNI space (or a pair whose MRI and
        PET disagree in world space) instead of refusing the manifest; each one is
        warned about. Off by default, whatever the training config accepted.
    """

    def __init__(self, spec: InputSpec | dict[str, Any], manifest: str | Path,
                 cache_dir: str | Path = ".cache/gazimed-lab", batch_size: int = 8,
                 num_workers: int = 0, pin_memory: bool = False,
                 session_order_column: str | None = None, accept_flagged: bool = False) -> None:
        super().__init__()
        self.spec = InputSpec.from_dict(spec, "spec")
        if not self.spec.fitted:
            raise SpecError(
                "input spec must be fitted (clinical statistics of a training split) to score "
                "new subjects, got an unfitted spec; was the model trained with MNIDataModule?"
            )
        self.manifest = Path(manifest)
        self.cache = VolumeCache(cache_dir, self.spec.cache_dtype)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.session_order_column = session_order_column
        self.accept_flagged = bool(accept_flagged)
        self.cohort: Cohort | None = None
        #: Flagged images scored because of ``accept_flagged`` (one record per image).
        self.accepted_flagged: list[dict[str, str]] = []
        self._dataset: VolumeDataset | None = None

    @property
    def subjects(self) -> pd.DataFrame:
        """The validated manifest table, in manifest order.

        One row per subject, or per subject and session with a ``session_id`` column.
        """
        if self.cohort is None:
            self.cohort = read_manifest(
                self.manifest, clinical_columns=feature_columns_for(self.spec, self.manifest),
                require_targets=False, check_images=False,
                session_order_column=self.session_order_column,
            )
        return self.cohort.table

    @property
    def dataset(self) -> VolumeDataset:
        """The manifest's subjects as a dataset (builds the cache on first use)."""
        if self._dataset is None:
            records: list[dict[str, str]] = []
            self._dataset = build_dataset(self.subjects, self.spec, self.cache, self.manifest,
                                          "predict", accept_flagged=self.accept_flagged,
                                          records=records)
            self.accepted_flagged = [r for r in records if r.get("flag")]
            if self.accepted_flagged:
                listed = "; ".join(
                    f"subject `{r['subject_id']}`"
                    + (f", session `{r['session_id']}`" if "session_id" in r else "")
                    + f", {r['modality']} {r['file']}: {r['flag']}" for r in self.accepted_flagged)
                warnings.warn(f"scoring {len(self.accepted_flagged)} flagged image(s) because "
                              f"accept_flagged is true ({self.manifest}): {listed}",
                              UserWarning, stacklevel=2)
        return self._dataset

    def setup(self, stage: str | None = None) -> None:
        """Build the dataset (reads or fills the cache)."""
        _ = self.dataset

    def predict_dataloader(self) -> DataLoader:
        """Every row of the manifest (subject, or subject and session), in manifest order."""
        return subject_loader(self.dataset, self.batch_size, self.num_workers, self.pin_memory)
