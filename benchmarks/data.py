"""Data-path suite: naive per-item preprocessing vs the cached path vs a raw read of the cache.

Three datasets serve the same training-split subjects through DataLoaders with the
same batch size, workers and ``pin_memory`` (those of the datamodule's own loader):

- ``naive``: :func:`gazimed_lab.data.transforms.preprocess_subject` in every
  ``__getitem__`` (read the NIfTI files, conform them to the grid, normalize);
- ``cached``: the datamodule's loader over the float16 memory-mapped cache, without
  augmentation (``split_dataloader("train")``), and ``cached_aug``: its real
  ``train_dataloader`` with the preset's augmentation;
- ``raw``: ``np.load`` of each cached ``.npy`` (float16, as stored) and collation,
  nothing else: the ceiling for any loader reading that cache.

Files are read from the page cache (one untimed pass first): this measures the CPU
cost of the data path, not the disk. A second part times one epoch for nested
subsets (first ``n`` subjects) of one generated cohort: the data alone, and a
``cpu-demo`` training epoch through Lightning.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import SIZES, timed

__all__ = ["NaiveDataset", "RawDataset", "run_data_suite"]

log = logging.getLogger(__name__)
COHORT_SEED = 1234  # the demo cohort's seed: `make demo` / `gazimed-lab ablate` reuse it


class NaiveDataset(Dataset):
    """Preprocess (read + conform + normalize) a subject's NIfTI files in every ``__getitem__``.

    Parameters
    ----------
    table
        Cohort rows with absolute ``mri`` / ``pet`` paths (``pet`` "" when missing).
    grid, channels, pet_reference
        As for :func:`~gazimed_lab.data.transforms.preprocess_subject`.
    like
        The datamodule's dataset over the same rows: clinical features, masks and
        targets are taken from it, so both serve identical items.
    """

    def __init__(self, table: pd.DataFrame, grid: Any, channels: int, pet_reference: str,
                 like: Any) -> None:
        self.mri = [str(p) for p in table["mri"]]
        self.pet = [p if isinstance(p, str) and p else None for p in table["pet"]]
        self.grid, self.channels, self.pet_reference = grid, channels, pet_reference
        self.like = like

    def __len__(self) -> int:
        return len(self.mri)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from gazimed_lab.data.transforms import preprocess_subject

        image, mask = preprocess_subject(self.mri[index], self.pet[index], self.grid,
                                         self.channels, self.pet_reference)
        like = self.like
        return {
            "images": torch.from_numpy(image),
            "modality_mask": torch.from_numpy(mask),
            "clinical_features": torch.from_numpy(like.features[index].copy()),
            "clinical_mask": torch.from_numpy(like.feature_mask[index].copy()),
            "targets": torch.tensor(like.targets[index], dtype=torch.float32),
            "subject_id": like.subject_ids[index],
        }


class RawDataset(Dataset):
    """Read cached ``.npy`` arrays as stored (float16), nothing else.

    Parameters
    ----------
    paths
        The cache files (``VolumeDataset.arrays``).
    """

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"images": torch.from_numpy(np.load(self.paths[index]))}


def _drain(loader: DataLoader) -> int:
    """Iterate a loader once; return the number of samples seen."""
    count = 0
    for batch in loader:
        count += int(batch["images"].shape[0])
    return count


def _like(loader: DataLoader, dataset: Dataset) -> DataLoader:
    """A loader over ``dataset`` with ``loader``'s batch size, workers and pinning."""
    return DataLoader(dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory,
                      persistent_workers=loader.num_workers > 0)


def _config(preset: str, grid: str, manifest: Path, cache: Path, run: Path,
            workers: int) -> Any:
    from gazimed_lab.config import load_config

    return load_config(preset, overrides=[
        f"data.manifest={manifest}", f"data.grid={grid}", f"data.cache_dir={cache}",
        f"system.run_dir={run}", f"data.num_workers={workers}",
        # epoch timing only (no validation): tiny subsets need not give a two-class val split
        "trainer.monitor=val/loss", "trainer.monitor_mode=min",
    ])


def _subset_manifest(manifest: Path, n: int, out: Path) -> Path:
    """The first ``n`` rows of ``manifest`` with absolute image paths, written to ``out``."""
    table = pd.read_csv(manifest, keep_default_na=False).head(n).copy()
    root = manifest.parent
    for col in ("mri", "pet"):
        table[col] = [str((root / p).resolve()) if p else "" for p in table[col]]
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


def _bytes(paths: list[str]) -> int:
    return int(sum(Path(p).stat().st_size for p in paths if p))


def _rate(samples: int, res: dict[str, Any]) -> dict[str, Any]:
    return {"samples": samples, "epoch_s": round(res["median_s"], 4), "times_s": res["times_s"],
            "samples_per_s": round(samples / res["median_s"], 2)}


def _throughput(label: str, preset: str, grid: str, cohort_n: int, n: int, workers: int,
                repeats: int, cohort_root: Path, tmp: Path) -> dict[str, Any]:
    from gazimed_lab.data.datamodule import MNIDataModule
    from gazimed_lab.data.synthetic import demo_cohort

    source = demo_cohort(cohort_root, n_subjects=cohort_n, seed=COHORT_SEED, grid=grid)
    manifest = _subset_manifest(source, n, tmp / f"{label}_n{n}.csv")
    cache = tmp / f"cache_{label}"
    fresh = not cache.exists()
    cfg = _config(preset, grid, manifest, cache, tmp / "run", workers)
    dm = MNIDataModule(cfg)
    start = time.perf_counter()
    dm.prepare_data()
    build_s = time.perf_counter() - start
    cached = dm.split_dataloader("train", augment=False)
    train = cached.dataset
    table = dm.splits["train"]
    naive = _like(cached, NaiveDataset(table, dm.grid, dm.channels, dm.pet_reference, train))
    raw = _like(cached, RawDataset(train.arrays))
    out: dict[str, Any] = {
        "preset": preset, "grid": grid, "cohort": f"first {n} of {cohort_n} subjects",
        "shape": [dm.channels, *dm.img_size],
        "train_subjects": len(train), "batch_size": cached.batch_size, "num_workers": workers,
        "pin_memory": bool(cached.pin_memory), "cache_dtype": str(dm.cache.dtype),
    }
    if fresh:
        out["cache_build_s"] = round(build_s, 3)
        out["cache_builds"] = dm.cache.builds
    loaders = {"naive": naive, "cached": cached, "raw": raw}
    augment = bool(cfg.data.augment)
    if augment:
        loaders["cached_aug"] = dm.train_dataloader()
        out["augmentation"] = {k: float(v) for k, v in cfg.data.items() if k.startswith("aug_")}
    for name, loader in loaders.items():
        out[name] = _rate(len(train), timed(lambda loader=loader: _drain(loader), repeats))
    rates = {k: out[k]["samples_per_s"] for k in loaders}
    out["cached_over_naive"] = round(rates["cached"] / rates["naive"], 2)
    out["cached_over_raw"] = round(rates["cached"] / rates["raw"], 3)
    if augment:
        out["cached_aug_over_naive"] = round(rates["cached_aug"] / rates["naive"], 2)
    nifti = list(table["mri"]) + [p for p in table["pet"] if isinstance(p, str) and p]
    out["bytes_per_subject"] = {
        "nifti_gz": _bytes(nifti) // len(table),
        "cache_npy": _bytes(train.arrays) // len(train),
        "float32_equivalent": int(np.prod(out["shape"])) * 4,
    }
    return out


class _EpochTimer:
    """Lightning callback recording each training epoch's wall time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def _train_epochs(cfg: Any, dm: Any, epochs: int) -> list[float]:
    """Wall time of each of ``epochs`` cpu-demo training epochs (no validation)."""
    import pytorch_lightning as pl

    from gazimed_lab.models.lightning import AlzheimersLightningModule

    timer = type("EpochTimer", (_EpochTimer, pl.Callback), {})()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
        default_root_dir=str(cfg.system.run_dir),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(AlzheimersLightningModule(cfg, spec=dm.spec), datamodule=dm)
    return list(timer.times)


def _epoch_scaling(spec: dict[str, Any], repeats: int, cohort_root: Path,
                   tmp: Path) -> dict[str, Any]:
    from gazimed_lab.data.datamodule import MNIDataModule
    from gazimed_lab.data.synthetic import demo_cohort

    total = int(spec["epoch_cohort"])
    source = demo_cohort(cohort_root, n_subjects=total, seed=COHORT_SEED, grid="demo_4mm")
    rows = []
    for n in spec["epoch_sizes"]:
        manifest = _subset_manifest(source, int(n), tmp / f"epoch_n{n}.csv")
        cfg = _config("cpu-demo", "demo_4mm", manifest, tmp / "cache_epochs", tmp / f"run{n}", 0)
        dm = MNIDataModule(cfg)
        dm.prepare_data()
        n_train = len(dm.splits["train"])
        loader = dm.train_dataloader()
        data = timed(lambda loader=loader: _drain(loader), repeats)
        row: dict[str, Any] = {
            "subjects": int(n), "train_subjects": n_train, "batch_size": loader.batch_size,
            "data_epoch_s": round(data["median_s"], 4), "data_times_s": data["times_s"],
            "data_ms_per_subject": round(1000 * data["median_s"] / n_train, 3),
        }
        if spec["train_epochs"]:
            times = _train_epochs(cfg, dm, repeats + 1)
            timed_epochs = times[1:] or times
            epoch = float(np.median(timed_epochs))
            row.update(train_epoch_s=round(epoch, 3),
                       train_times_s=[round(t, 3) for t in times],
                       train_ms_per_subject=round(1000 * epoch / n_train, 2))
        rows.append(row)
        log.info("epoch n=%d: %s", n, row)
    out: dict[str, Any] = {
        "cohort": f"first n subjects of demo_cohort(n_subjects={total}, seed={COHORT_SEED}, "
                  "grid='demo_4mm'); epoch = one pass over the train split",
        "preset": "cpu-demo", "augmentation": "preset (intensity scale/shift + noise, no affine)",
        "rows": rows,
    }
    for key in ("data", "train"):
        if f"{key}_ms_per_subject" in rows[0]:
            per = [r[f"{key}_ms_per_subject"] for r in rows]
            # Per-subject time of the largest cohort over that of the smallest: 1.0 = linear.
            out[f"{key}_linearity"] = round(per[-1] / per[0], 3)
    return out


def run_data_suite(size: str, repeats: int, work_dir: Path) -> dict[str, Any]:
    """Run the data-path suite.

    Parameters
    ----------
    size
        A key of :data:`benchmarks.common.SIZES`.
    repeats
        Timed passes per measurement (after one untimed pass).
    work_dir
        Generated cohorts are kept here (reused by later runs); volume caches go to a
        temporary folder inside it that is removed at the end.

    Returns
    -------
    dict
        ``throughput`` (one entry per grid and worker count) and ``epochs``.
    """
    spec = SIZES[size]
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-", dir=work_dir))
    try:
        throughput = []
        for label, preset, grid, cohort_n, n in spec["throughput"]:
            for workers in spec["workers"]:
                log.info("throughput %s, %d workers", label, workers)
                throughput.append(_throughput(label, preset, grid, cohort_n, n, workers,
                                              repeats, work_dir, tmp))
        epochs = _epoch_scaling(spec, repeats, work_dir, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "method": "median over repeats after one untimed pass; page cache warm; the naive "
                  "and raw loaders copy the datamodule loader's batch size, workers and "
                  "pin_memory; ratios are computed within this run",
        "throughput": throughput,
        "epochs": epochs,
    }
