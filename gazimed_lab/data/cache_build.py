"""Fill the volume cache for a table of subjects, in one process or several.

:func:`cache_subjects` keys every subject's volumes (:func:`~gazimed_lab.data.cache.volume_key`),
reads the entries already cached and builds the missing ones
(:func:`~gazimed_lab.data.transforms.preprocess_subject`: load, conform to the
grid, normalize), in ``workers`` processes when asked (``data.cache_workers``).
A 1 mm T1 and PET conformed to the 2 mm grid take about a second or more per
subject, so a cohort's first build is worth spreading over the cores; each build
holds its entry's lock, so processes of other runs or nodes filling the same
cache never build an entry twice (:mod:`gazimed_lab.data.cache`).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gazimed_lab.data.cache import CacheFullError, EntryBusy, VolumeCache, volume_key
from gazimed_lab.data.grid import Grid
from gazimed_lab.data.images import ImageError
from gazimed_lab.data.manifest import ManifestError
from gazimed_lab.data.transforms import (
    MRI_NORMALIZATION,
    preprocess_subject,
    warm_preprocessing,
)

__all__ = ["cache_subjects", "entry_key", "resolve_workers"]

log = logging.getLogger(__name__)


def resolve_workers(workers: int) -> int:
    """Return the processes for ``data.cache_workers``: 0 stays 0, -1 one per available core."""
    if workers >= 0:
        return int(workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def entry_key(mri: str, pet: str | None, grid: Grid, channels: int, pet_reference: str,
              dtype: str) -> str:
    """Return the cache key of one subject's volumes (``cache.volume_key`` with its settings).

    ``pet`` None when missing or unused (``channels == 1``).
    """
    settings = {"pet_reference": pet_reference if pet else None,
                "mri_normalization": MRI_NORMALIZATION, "dtype": dtype}
    return volume_key(mri, pet, grid.key(), channels, settings)


@dataclass
class _Job:
    """One subject to read from, or build into, the cache."""

    mri: str
    pet: str | None
    subject: str
    info: dict[str, Any]
    key: str | None = None
    error: str | None = None


@dataclass
class _Done:
    """What preparing one subject gave: its mask and QA notes, or the problem."""

    mask: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    built: bool = False
    error: str | None = None
    busy: bool = False  # another process was building it: come back to it later


def _prepare(job: _Job, cache: VolumeCache, grid: Grid, channels: int, pet_reference: str,
             accept_flagged: bool, wait: bool = True) -> _Done:
    """Read or build one entry (in this process or a worker); ``wait``: see get_or_build."""
    if job.error is not None or job.key is None:
        return _Done(error=job.error)
    notes: dict[str, Any] = {}
    before = cache.builds
    try:
        _, mask = cache.get_or_build(
            job.key, (int(channels), *grid.shape),
            functools.partial(preprocess_subject, job.mri, job.pet, grid, channels,
                              pet_reference, job.subject, accept_flagged, notes),
            info={**job.info, "qa": notes}, wait=wait,
        )
    except EntryBusy:
        return _Done(busy=True)
    except CacheFullError:
        raise  # the same for every subject: once, not per subject
    except (ImageError, OSError) as exc:
        return _Done(error=str(exc))
    return _Done(mask=np.asarray(mask, dtype=np.float32), notes=notes,
                 built=cache.builds > before)


def _pool_context() -> Any:
    # fork: workers start at once and inherit the imports; they only run NumPy, nibabel
    # and nilearn (no torch, no CUDA). Elsewhere (no fork) the platform default.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def cache_subjects(
    table: pd.DataFrame,
    cache: VolumeCache,
    grid: Grid,
    channels: int,
    pet_reference: str,
    manifest: str | Path = "manifest",
    accept_flagged: bool = False,
    records: list[dict[str, str]] | None = None,
    workers: int = 0,
) -> tuple[list[str], np.ndarray]:
    """Make sure every subject of ``table`` is cached; return array paths and modality masks.

    Parameters
    ----------
    table
        Cohort rows (``subject_id``, ``mri``, ``pet``; ``pet`` "" when missing).
    cache
        Where arrays are stored.
    grid, channels, pet_reference
        Preprocessing settings (see :func:`~gazimed_lab.data.transforms.preprocess_subject`).
    manifest
        Manifest path, for messages.
    accept_flagged
        Use images flagged as probably not in MNI space (``data.accept_flagged_images``);
        otherwise they are refused, also when an earlier run cached them.
    records
        When given, one dict per volume used is appended: ``subject_id`` (and
        ``session_id`` when the table has sessions), ``modality``, ``file``,
        ``grid_action`` and ``flag`` ("" when not flagged; several joined by "; ").
    workers
        Processes building the missing entries (``data.cache_workers``; 0: this
        process, -1: one per available core). ``cache.builds`` counts their builds too.

    Returns
    -------
    paths : list of str
        The ``.npy`` file of each subject, in table order.
    modality_masks : ndarray, float32, (N, 2)

    Raises
    ------
    ManifestError
        Listing every subject whose images could not be loaded or normalized.
    """
    shape = (int(channels), *grid.shape)
    sessions = "session_id" in table.columns
    jobs: list[_Job] = []
    for row in table.itertuples(index=False):
        mri, sid = str(row.mri), str(row.subject_id)
        session = {"session_id": str(row.session_id)} if sessions else {}
        pet = str(row.pet) if channels >= 2 and isinstance(row.pet, str) and row.pet else None
        job = _Job(mri, pet, sid, {"subject_id": sid, **session, "mri": mri, "pet": pet or ""})
        try:
            job.key = entry_key(mri, pet, grid, channels, pet_reference, str(cache.dtype))
        except OSError as exc:
            job.error = str(exc)
        jobs.append(job)
    prepare = functools.partial(_prepare, cache=cache, grid=grid, channels=channels,
                                pet_reference=pet_reference, accept_flagged=accept_flagged)
    done: list[_Done | None] = [None] * len(jobs)
    missing = []
    for i, job in enumerate(jobs):
        found = cache.load(job.key, shape) if job.key is not None else None
        if found is None:
            missing.append(i)
        else:
            cache.hits += 1
            done[i] = _Done(mask=np.asarray(found[1], dtype=np.float32))
    n_workers = min(resolve_workers(int(workers)), len(missing))
    if n_workers >= 2:
        # The grid's masks, computed once here, are inherited by the forked workers.
        warm_preprocessing(grid, channels, pet_reference)
    # Entries another process is building are skipped in a first pass and waited for in a
    # second: processes (or nodes) filling one cache share the work.
    for wait in (False, True):
        todo = [i for i in missing if (d := done[i]) is None or d.busy]
        if not todo:
            break
        serial = todo if n_workers < 2 else []
        for count, i in enumerate(serial, 1):
            done[i] = prepare(jobs[i], wait=wait)
            if count % 50 == 0:
                log.info("%d / %d volumes built", cache.builds, len(missing))
        rest = todo[len(serial):]
        if rest:
            log.info("building %d cache entries in %d processes", len(rest), n_workers)
            with ProcessPoolExecutor(n_workers, mp_context=_pool_context()) as pool:
                results = list(pool.map(functools.partial(prepare, wait=wait),
                                        [jobs[i] for i in rest], chunksize=1))
            for i, result in zip(rest, results):
                done[i] = result
                cache.builds += int(result.built)
                cache.hits += int(result.error is None and not result.built and not result.busy)
    return _collect(jobs, done, cache, accept_flagged, records, sessions, manifest)


def _collect(jobs: list[_Job], done: list[_Done | None], cache: VolumeCache,
             accept_flagged: bool, records: list[dict[str, str]] | None, sessions: bool,
             manifest: str | Path) -> tuple[list[str], np.ndarray]:
    """Paths and masks in table order; flags and records; every problem at once."""
    paths: list[str] = []
    masks: list[np.ndarray] = []
    problems: list[str] = []
    for job, result in zip(jobs, done):
        session = {"session_id": job.info["session_id"]} if sessions else {}
        who = f"subject `{job.subject}`" + (
            f", session `{job.info['session_id']}`" if sessions else "")
        if result is None or result.error is not None or result.mask is None or job.key is None:
            problems.append(f"{who}: {result.error if result else 'not prepared'}")
            continue
        qa = result.notes if result.notes else cache.read_info(job.key).get("qa", {})
        flagged = [str(f) for f in qa.get("flagged", [])]
        if flagged and not accept_flagged:  # cached by a run that accepted them
            problems.append(f"{who}: {'; '.join(flagged)}")
            continue
        if records is not None:
            actions = qa.get("grid_actions", {})
            for modality, file in (("mri", job.mri), ("pet", job.pet)):
                if file and modality in actions:
                    flag = "; ".join(f for f in flagged if f.startswith(f"`{modality} "))
                    records.append({"subject_id": job.subject, **session, "modality": modality,
                                    "file": file, "grid_action": str(actions[modality]),
                                    "flag": flag})
        paths.append(str(cache.array_path(job.key)))
        masks.append(result.mask)
    if problems:
        raise ManifestError(problems, manifest)
    return paths, np.asarray(masks, dtype=np.float32).reshape(-1, 2)
