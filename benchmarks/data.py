"""Data-path suite: naive per-item preprocessing vs the cached path vs a raw read of the cache.

Datasets serve the same training-split subjects through DataLoaders with the same
batch size, workers and ``pin_memory`` (those of the datamodule's own loader):

- ``naive``: :func:`gazimed_lab.data.transforms.preprocess_subject` in every
  ``__getitem__`` (read the NIfTI files, conform them to the grid, normalize);
- ``cached``: the datamodule's loader as a running trainer uses it, without
  augmentation: the cache dtype (float16) as stored, stacked (``on_device=True``);
- ``cached_model``: the loader a trainer on the CPU gets (``dtype=float32``: a batch
  that is not augmented is stacked into float32 at once) plus ``finish_batch`` (what a
  CPU model receives), and ``cached_aug``: the keyed training loader plus
  ``finish_batch(train=True)``
  (conversion and the preset's augmentation on CPU, in this one process);
  ``cached_aug_two_pass``: the same with ``data.aug_resampler=two_pass`` (the two 2D
  passes instead of the default exact trilinear); ``paired`` times these three
  epoch for epoch in turn and gives the median of the per-round ratios;
- ``cached_f32_loader``: ``split_dataloader("train")`` used outside a trainer
  (float32 made in the loader);
- ``legacy_cached`` and ``legacy_monai_aug``: the cached loader and the training loader
  before issue 15 (float32 items, each
  augmented on its own by MONAI; :mod:`benchmarks.legacy`), measured in the same run;
- ``raw``: ``np.load`` of each cached ``.npy`` (float16, as stored) and a stack into
  one NumPy-backed batch (:func:`gazimed_lab.data.batches.stack_images`), nothing
  else: the ceiling for any loader reading that cache; ``raw_default_collate``: the
  same with torch's default collation (the raw read of the README before issue 15).

Files are read from the page cache (one untimed pass first): this measures the CPU
cost of the data path, not the disk. ``augment_costs`` times each augmentation on
its own (every subject of a batch transformed). ``cache_build`` builds a cache from
1 mm inputs (made here by resampling generated 2 mm volumes) in one process and in
one process per core, alternately, into fresh folders. A last part times one epoch
for nested subsets (first ``n`` subjects) of one generated cohort: the data alone,
and a ``cpu-demo`` training epoch through Lightning.
"""

from __future__ import annotations

import copy
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

from benchmarks.common import SIZES, load_now, median, timed

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


def _drain(loader: DataLoader, finish: Any = None) -> int:
    """Iterate a loader once (each batch through ``finish`` when given); return the samples.

    A keyed training sampler moves on to the next epoch first, as Lightning's
    ``set_epoch`` does before every epoch: each pass draws new augmentation (and pays
    for whatever is drawn once per epoch), not epoch 0's again.
    """
    from gazimed_lab.data.sampling import SubjectSampler

    sampler = loader.sampler
    if isinstance(sampler, SubjectSampler) and sampler.keyed:
        sampler.set_epoch(int(sampler.epoch) + 1)
    count = 0
    for batch in loader:
        if finish is not None:
            batch = finish(batch)
        count += int(batch["images"].shape[0])
    return count


def _like(loader: DataLoader, dataset: Dataset, collate: Any = None) -> DataLoader:
    """A loader over ``dataset`` with ``loader``'s batch size, workers and pinning."""
    return DataLoader(dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory, collate_fn=collate,
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


#: A timed sample of a loader lasts at least this long (short epochs are drained repeatedly).
MIN_TIMED_S = 0.5


def _timed_epochs(loader: DataLoader, finish: Any, repeats: int) -> dict[str, Any]:
    """:func:`timed` of whole epochs, each timed sample ``passes`` epochs of >= MIN_TIMED_S."""
    start = time.perf_counter()
    _drain(loader, finish)  # untimed pass (page cache, workers, first allocations)
    passes = max(1, int(np.ceil(MIN_TIMED_S / max(time.perf_counter() - start, 1e-6))))

    def epochs() -> int:
        return sum(_drain(loader, finish) for _ in range(passes))

    res = timed(epochs, repeats, warmup=0)
    res["passes"] = passes
    return res


def _rate(samples: int, res: dict[str, Any]) -> dict[str, Any]:
    passes = int(res.get("passes", 1))
    epoch = res["median_s"] / passes
    return {"samples": samples, "epoch_s": round(epoch, 4), "passes": passes,
            "times_s": res["times_s"], "samples_per_s": round(samples / epoch, 2)}


def _throughput(label: str, preset: str, grid: str, cohort_n: int, n: int, workers: int,
                repeats: int, cohort_root: Path, tmp: Path) -> dict[str, Any]:
    from gazimed_lab.data.datamodule import MNIDataModule
    from gazimed_lab.data.synthetic import demo_cohort

    source = demo_cohort(cohort_root, n_subjects=cohort_n, seed=COHORT_SEED, grid=grid)
    manifest = _subset_manifest(source, n, tmp / f"{label}_n{n}.csv")
    cache = tmp / f"cache_{label}"
    fresh = not cache.exists()
    cfg = _config(preset, grid, manifest, cache, tmp / "run", workers)
    from gazimed_lab.data.datamodule import subject_loader

    dm = MNIDataModule(cfg)
    start = time.perf_counter()
    dm.prepare_data()
    build_s = time.perf_counter() - start
    train = dm.train_dataset
    data = cfg.data
    kwargs = {"num_workers": workers, "pin_memory": bool(data.pin_memory), "on_device": True}
    cached = subject_loader(train.as_stored(augment=False), int(data.batch_size), **kwargs)
    table = dm.splits["train"]
    naive = _like(cached, NaiveDataset(table, dm.grid, dm.channels, dm.pet_reference, train))
    from gazimed_lab.data.batches import BatchCollate

    raw = _like(cached, RawDataset(train.arrays), BatchCollate(on_device=True))
    raw_default = _like(cached, RawDataset(train.arrays))
    out: dict[str, Any] = {
        "preset": preset, "grid": grid, "cohort": f"first {n} of {cohort_n} subjects",
        "shape": [dm.channels, *dm.img_size],
        "train_subjects": len(train), "batch_size": cached.batch_size, "num_workers": workers,
        "pin_memory": bool(cached.pin_memory), "cache_dtype": str(dm.cache.dtype),
    }
    if fresh:
        out["cache_build_s"] = round(build_s, 3)
        out["cache_builds"] = dm.cache.builds
    as_model = dm.finish_batch  # float32 on CPU, not augmented
    loaders: dict[str, tuple[DataLoader, Any]] = {
        "naive": (naive, None), "cached": (cached, None),
        "cached_model": (subject_loader(train.as_stored(augment=False), int(data.batch_size),
                                        dtype=torch.float32, **kwargs), as_model),
        "cached_f32_loader": (dm.split_dataloader("train"), None), "raw": (raw, None),
        "raw_default_collate": (raw_default, None)}
    augment = bool(cfg.data.augment)
    from benchmarks.legacy import MonaiItemDataset

    loaders["legacy_cached"] = (_like(cached, MonaiItemDataset(train, data, dm.seed,
                                                               augment=False)), None)
    if augment:
        from gazimed_lab.data.sampling import SubjectSampler

        keyed = subject_loader(train, int(data.batch_size), train=True, seed=dm.seed, **kwargs)
        loaders["cached_aug"] = (keyed, lambda b: dm.finish_batch(b, train=True))
        # the same path with the two-pass resampler (data.aug_resampler=two_pass)
        passes = with_resampler(dm, "two_pass")
        loaders["cached_aug_two_pass"] = (keyed, lambda b: passes.finish_batch(b, train=True))
        legacy = MonaiItemDataset(train, data, dm.seed)
        loaders["legacy_monai_aug"] = (DataLoader(
            legacy, batch_size=int(data.batch_size), num_workers=workers,
            pin_memory=bool(data.pin_memory), persistent_workers=workers > 0,
            sampler=SubjectSampler(legacy, shuffle=True, seed=dm.seed, keyed=True)), None)
        out["augmentation"] = {k: v if isinstance(v, str) else float(v)
                               for k, v in cfg.data.items() if k.startswith("aug_")}
    for name, (loader, finish) in loaders.items():
        out[name] = _rate(len(train), _timed_epochs(loader, finish, repeats))
    rates = {k: out[k]["samples_per_s"] for k in loaders}
    out["cached_over_naive"] = round(rates["cached"] / rates["naive"], 2)
    out["cached_over_raw"] = round(rates["cached"] / rates["raw"], 3)
    out["cached_model_over_raw"] = round(rates["cached_model"] / rates["raw"], 3)
    # the ratio as the README measured it before issue 15 (old loader, torch's collation)
    out["legacy_cached_over_raw_default"] = round(
        rates["legacy_cached"] / rates["raw_default_collate"], 3)
    if augment:
        out["cached_aug_over_naive"] = round(rates["cached_aug"] / rates["naive"], 2)
        out["aug_over_cached_model"] = round(rates["cached_aug"] / rates["cached_model"], 3)
        out["aug_two_pass_over_cached_model"] = round(
            rates["cached_aug_two_pass"] / rates["cached_model"], 3)
        out["paired"] = _paired({k: loaders[k] for k in PAIRED}, len(train), 3 * repeats)
        out["aug_over_legacy"] = round(rates["cached_aug"] / rates["legacy_monai_aug"], 3)
        if workers == 0:
            out["augment_costs"] = _augment_costs(dm, cached, repeats)
    if workers == 0:
        out["allocation"] = _allocation((int(data.batch_size), *out["shape"]), repeats)
    nifti = list(table["mri"]) + [p for p in table["pet"] if isinstance(p, str) and p]
    out["bytes_per_subject"] = {
        "nifti_gz": _bytes(nifti) // len(table),
        "cache_npy": _bytes(train.arrays) // len(train),
        "float32_equivalent": int(np.prod(out["shape"])) * 4,
    }
    return out


def with_resampler(dm: Any, resampler: str) -> Any:
    """A shallow copy of a data module whose augmentation uses ``resampler`` (else the same)."""
    from gazimed_lab.data.augment import BatchAugment

    data = copy.deepcopy(dm.cfg.data)
    data.aug_resampler = resampler
    other = copy.copy(dm)
    other.augment = BatchAugment.from_config(data, seed=dm.seed, support=dm.brain_support)
    return other


#: The loaders timed epoch for epoch in turn (:func:`_paired`); the first is the reference.
PAIRED = ("cached_model", "cached_aug", "cached_aug_two_pass")


def _paired(loaders: dict[str, tuple[DataLoader, Any]], samples: int,
            rounds: int) -> dict[str, Any]:
    """Time one epoch of each loader in turn, ``rounds`` times; ratios within each round.

    Drift of the machine between two separate timings (20-30 % here) hits both sides of a
    round alike, so the median of the per-round ratios is the steadier figure.
    """
    names = list(loaders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(max(1, rounds)):
        for name in names:
            loader, finish = loaders[name]
            start = time.perf_counter()
            _drain(loader, finish)
            rates[name].append(samples / (time.perf_counter() - start))
    base = rates[names[0]]
    out: dict[str, Any] = {"rounds": max(1, rounds), "reference": names[0],
                           "samples_per_s": {k: round(median(v), 1) for k, v in rates.items()}}
    for name in names[1:]:
        ratios = [a / b for a, b in zip(rates[name], base)]
        out[f"{name}_ratio"] = {"median": round(median(ratios), 3),
                                "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    return out


def _augment_costs(dm: Any, loader: DataLoader, repeats: int) -> dict[str, Any]:
    """Milliseconds per sample of each augmentation alone (every subject transformed)."""
    from gazimed_lab.data.augment import BatchAugment

    batch = dm.finish_batch(next(iter(loader)))
    images, mask = batch["images"], batch["modality_mask"]
    keys = [(0, i) for i in range(images.shape[0])]
    d = dm.cfg.data
    base = {"prob": 1.0, "rotate_deg": 0.0, "scale": 0.0, "translate_vox": 0.0,
            "intensity": 0.0, "noise_std": 0.0, "seed": dm.seed, "support": dm.brain_support}
    affine = {"rotate_deg": float(d.aug_rotate_deg), "scale": float(d.aug_scale),
              "translate_vox": float(d.aug_translate_vox)}
    kinds = {"intensity": {"intensity": float(d.aug_intensity)},
             "noise": {"noise_std": float(d.aug_noise_std)}}
    if any(affine.values()):
        kinds["affine"] = affine  # the default resampler, within the brain mask
        kinds["affine_whole_grid"] = {**affine, "support": None}
        kinds["affine_two_pass"] = {**affine, "resampler": "two_pass"}
    out: dict[str, Any] = {"batch": int(images.shape[0]), "shape": list(images.shape[1:])}
    for name, extra in kinds.items():
        aug = BatchAugment(**{**base, **extra})
        times = []
        for _ in range(max(1, repeats) + 1):
            work = images.clone()
            start = time.perf_counter()
            aug(work, mask, keys, inplace=True)
            times.append(time.perf_counter() - start)
        out[f"{name}_ms_per_sample"] = round(1000 * median(times[1:]) / images.shape[0], 2)
    return out


def _allocation(shape: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Milliseconds to fill a fresh float32 batch from float16: torch's allocator vs NumPy's.

    The 2 mm batch (43 MB) is above glibc's largest mmap threshold (32 MiB): every one
    is a fresh mapping whose pages fault in on first touch, 4 KiB at a time unless the
    allocation asked for transparent huge pages (NumPy does; torch only with
    ``THP_MEM_ALLOC_ENABLE=1``). ``thp`` is the kernel's THP mode.
    """
    from gazimed_lab.data.batches import host_empty

    half = torch.zeros(shape, dtype=torch.float16)

    def fill(make: Any) -> float:
        times = []
        for _ in range(max(3, repeats) + 1):
            start = time.perf_counter()
            make(shape, torch.float32).copy_(half)
            times.append(time.perf_counter() - start)
        return round(1000 * median(times[1:]), 2)

    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = None
    return {"shape": list(shape), "mb": round(half.numel() * 4 / 1e6, 1), "thp": thp,
            "torch_empty_ms": fill(lambda s, d: torch.empty(s, dtype=d)),
            "numpy_backed_ms": fill(host_empty)}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    import resource

    own, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                      resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _upsampled(source: Path, n: int, grid_name: str, out: Path) -> Path:
    """The first ``n`` subjects of ``source`` with their volumes resampled onto ``grid_name``.

    Written once into ``out`` (kept, like the generated cohorts); returns its manifest.
    """
    import nibabel as nib
    from nilearn.image import resample_img

    from gazimed_lab.data.grid import get_grid

    manifest = out / "manifest.csv"
    if (out / ".complete").is_file():
        return manifest
    grid = get_grid(grid_name)
    table = pd.read_csv(source, keep_default_na=False).head(n).copy()
    for col in ("mri", "pet"):
        paths = []
        for rel in table[col]:
            if not rel:
                paths.append("")
                continue
            img = nib.load(str(source.parent / rel))
            fine = resample_img(img, target_affine=grid.affine, target_shape=grid.shape,
                                interpolation="linear", force_resample=True,
                                copy_header=True)
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.asarray(fine.dataobj, dtype=np.float32), grid.affine),
                     str(target))
            paths.append(rel)
        table[col] = paths
    table.to_csv(manifest, index=False)
    (out / ".complete").write_text(grid_name)
    return manifest


def _cache_build(spec: dict[str, Any], repeats: int, cohort_root: Path,
                 tmp: Path) -> dict[str, Any]:
    """Seconds to build a cache from fine inputs: one process vs one per core, alternately."""
    from gazimed_lab.data.cache import VolumeCache, file_fingerprint
    from gazimed_lab.data.cache_build import cache_subjects, resolve_workers
    from gazimed_lab.data.grid import get_grid
    from gazimed_lab.data.synthetic import demo_cohort

    source = demo_cohort(cohort_root, n_subjects=int(spec["cohort"]), seed=COHORT_SEED,
                         grid=spec["source_grid"])
    n, fine = int(spec["n"]), str(spec["input_grid"])
    manifest = _upsampled(source, n, fine, cohort_root / f"inputs_{fine}_n{n}_s{COHORT_SEED}")
    table = _subset_manifest(manifest, n, tmp / "build.csv")
    rows = pd.read_csv(table, keep_default_na=False)
    for path in [*rows["mri"], *[p for p in rows["pet"] if p]]:
        file_fingerprint(path)  # hashed once beforehand: both modes time the builds only
    grid, workers = get_grid(spec["grid"]), resolve_workers(-1)
    modes = {"single": 0, "parallel": workers}
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    loads: list[Any] = []
    for r in range(max(1, repeats)):
        order = list(modes) if r % 2 == 0 else list(modes)[::-1]
        for mode in order:
            cache = VolumeCache(tmp / f"build_{mode}_{r}")
            loads.append(load_now())
            used = _cpu_seconds()
            start = time.perf_counter()
            cache_subjects(rows, cache, grid, int(spec["channels"]), "whole_brain",
                           workers=modes[mode])
            times[mode].append(round(time.perf_counter() - start, 3))
            cpu[mode].append(round(_cpu_seconds() - used, 3))  # this process + its workers
            if cache.builds != n:
                raise RuntimeError(f"cache build must build {n} entries, got {cache.builds}")
            shutil.rmtree(cache.root.parent, ignore_errors=True)
    single, parallel = median(times["single"]), median(times["parallel"])
    return {"inputs": f"first {n} subjects of {source.parent.name}, resampled to {fine}",
            "grid": spec["grid"], "channels": int(spec["channels"]), "subjects": n,
            "workers": workers, "single_s": times["single"], "parallel_s": times["parallel"],
            "single_median_s": round(single, 3), "parallel_median_s": round(parallel, 3),
            "s_per_subject_single": round(single / n, 3),
            "parallel_speedup": round(single / parallel, 3),
            # CPU seconds used and the share of the cores obtained (CPU s / wall s): the
            # other users of a shared machine decide how much of the second core we get
            "single_cpu_s": cpu["single"], "parallel_cpu_s": cpu["parallel"],
            "single_cores_used": round(median(cpu["single"]) / single, 2),
            "parallel_cores_used": round(median(cpu["parallel"]) / parallel, 2),
            "loadavg_before_each": loads}


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
        ``throughput`` (one entry per grid and worker count), ``cache_build`` and
        ``epochs``.
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
        log.info("cache build from %s inputs", spec["cache_build"]["input_grid"])
        build = _cache_build(spec["cache_build"], repeats, work_dir, tmp)
        epochs = _epoch_scaling(spec, repeats, work_dir, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "method": "median over repeats after one untimed pass; page cache warm; the naive "
                  "and raw loaders copy the datamodule loader's batch size, workers and "
                  "pin_memory; ratios are computed within this run",
        "throughput": throughput,
        "cache_build": build,
        "epochs": epochs,
    }
