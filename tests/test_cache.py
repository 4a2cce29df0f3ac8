from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cohort_config

from gazimed_lab.data.cache import VolumeCache, file_fingerprint, volume_key
from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.manifest import ManifestError


def _config(manifest: Path, tmp_path: Path, *extra: str) -> object:
    return cohort_config(manifest, tmp_path, *extra)


def _built(cfg: object) -> MNIDataModule:
    dm = MNIDataModule(cfg)
    dm.setup()  # every split
    return dm


def test_volume_key_changes_with_every_input(tmp_path: Path) -> None:
    mri, pet = tmp_path / "mri.nii.gz", tmp_path / "pet.nii.gz"
    mri.write_bytes(b"mri bytes")
    pet.write_bytes(b"pet bytes")
    settings = {"pet_reference": "whole_brain"}
    base = volume_key(mri, pet, "grid-a", 2, settings)
    assert volume_key(mri, pet, "grid-a", 2, dict(settings)) == base
    assert volume_key(mri, None, "grid-a", 2, settings) != base
    assert volume_key(mri, pet, "grid-b", 2, settings) != base
    assert volume_key(mri, pet, "grid-a", 3, settings) != base
    assert volume_key(mri, pet, "grid-a", 2, {"pet_reference": "pons"}) != base
    st = mri.stat()
    os.utime(mri, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = volume_key(mri, pet, "grid-a", 2, settings)
    assert touched != base
    mri.write_bytes(b"MRI bytes")  # same size, new content
    os.utime(mri, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_fingerprint(mri)["blake2b"] != file_fingerprint(pet)["blake2b"]
    assert volume_key(mri, pet, "grid-a", 2, settings) not in (base, touched)


def test_cache_round_trip_and_corrupt_entries(tmp_path: Path) -> None:
    cache = VolumeCache(tmp_path, "float16")
    arr = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
    calls = []

    def build() -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return arr, np.array([1.0, 0.0])

    out, mask = cache.get_or_build("k", arr.shape, build)
    assert isinstance(out, np.memmap) and out.dtype == np.float16
    np.testing.assert_allclose(out, arr, atol=2e-3)
    np.testing.assert_array_equal(mask, [1.0, 0.0])
    cache.get_or_build("k", arr.shape, build)
    assert (len(calls), cache.builds, cache.hits) == (1, 1, 1)
    assert not [p for p in cache.root.iterdir() if p.name.endswith(".tmp")]
    # truncated array file: rebuilt
    path = cache.array_path("k")
    path.write_bytes(path.read_bytes()[:100])
    cache.get_or_build("k", arr.shape, build)
    assert len(calls) == 2
    # unreadable sidecar: rebuilt
    cache.meta_path("k").write_text("{not json")
    cache.get_or_build("k", arr.shape, build)
    assert len(calls) == 3
    # another expected shape (e.g. other channels): rebuilt and checked
    with pytest.raises(ValueError, match=r"must have shape \(3, 4, 5, 6\), got \(2, 4, 5, 6\)"):
        cache.get_or_build("k", (3, 4, 5, 6), build)


def test_entry_written_before_qa_records_is_rebuilt_once(tmp_path: Path) -> None:
    import json

    cache = VolumeCache(tmp_path, "float32")
    arr = np.ones((1, 2, 2, 2), dtype=np.float32)
    calls = []

    def build() -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return arr, np.array([1.0, 0.0])

    cache.get_or_build("k", arr.shape, build, info={"qa": {"flagged": ["`mri ...`"]}})
    assert cache.read_info("k")["qa"] == {"flagged": ["`mri ...`"]}
    meta = json.loads(cache.meta_path("k").read_text())
    del meta["qa"]  # as written before grid actions and flags were recorded
    cache.meta_path("k").write_text(json.dumps(meta))
    cache.get_or_build("k", arr.shape, build)
    cache.get_or_build("k", arr.shape, build)
    assert len(calls) == 2 and cache.read_info("k")["qa"] == {}


def test_float32_cache(tmp_path: Path) -> None:
    cache = VolumeCache(tmp_path, "float32")
    arr = np.ones((1, 2, 2, 2), dtype=np.float32)
    out, _ = cache.get_or_build("k", arr.shape, lambda: (arr, np.array([1.0, 1.0])))
    assert out.dtype == np.float32
    with pytest.raises(ValueError,
                       match=r"`data.cache_dtype` must be one of \('float16', 'float32'\)"):
        VolumeCache(tmp_path, "int8")


def test_second_setup_reads_from_cache_and_changes_invalidate(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    cfg = _config(tiny_cohort, tmp_path)
    n, n_pet = 16, 15
    first = _built(cfg)
    assert (first.cache.builds, first.cache.hits) == (n, 0)
    second = _built(cfg)
    assert (second.cache.builds, second.cache.hits) == (0, n)

    # touching one input file rebuilds that subject only
    pet = tiny_cohort.parent / "pet" / "sub-005_pet.nii.gz"
    st = pet.stat()
    os.utime(pet, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _built(cfg).cache.builds == 1

    # a truncated cache file is rebuilt
    dm = _built(cfg)
    victim = Path(dm._dataset("train").arrays[0])
    victim.write_bytes(victim.read_bytes()[:200])
    assert _built(cfg).cache.builds == 1

    # another PET reference rebuilds every subject with PET (not the one without)
    assert _built(_config(tiny_cohort, tmp_path, "data.pet_reference=pons")).cache.builds == n_pet
    # another grid or channel count rebuilds everything
    custom = [
        "data.grid_shape=[20,24,20]",
        "data.grid_affine=[[-8,0,0,78],[0,8,0,-114],[0,0,8,-72],[0,0,0,1]]",
    ]
    assert _built(_config(tiny_cohort, tmp_path, *custom)).cache.builds == n
    assert _built(_config(tiny_cohort, tmp_path, "data.channels=3")).cache.builds == n


def test_changed_image_content_is_used(tiny_cohort: Path, tmp_path: Path) -> None:
    import nibabel as nib

    cfg = _config(tiny_cohort, tmp_path, "data.cache_dtype=float32", "data.augment=false")
    dm = _built(cfg)
    sid = dm.splits["val"]["subject_id"].iloc[0]
    before = next(iter(dm.val_dataloader()))["images"][0, 0].numpy()
    path = tiny_cohort.parent / "mri" / f"{sid}_T1w.nii.gz"
    img = nib.load(path)
    data = img.get_fdata()
    data[:20] *= 0.5  # a new image
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine), path)
    dm2 = _built(cfg)
    assert dm2.cache.builds == 1
    after = next(iter(dm2.val_dataloader()))["images"][0, 0].numpy()
    assert not np.allclose(before, after)


def test_image_problems_are_listed_per_subject(tiny_cohort: Path, tmp_path: Path) -> None:
    table = pd.read_csv(tiny_cohort)
    bad = tiny_cohort.parent / table.loc[2, "mri"]
    bad.write_bytes(bad.read_bytes()[:3000])  # truncated gzip
    dm = MNIDataModule(_config(tiny_cohort, tmp_path))
    match = r"subject `sub-002`: `mri` must be a complete.*sub-002_T1w"
    with pytest.raises(ManifestError, match=match):
        dm.setup()
