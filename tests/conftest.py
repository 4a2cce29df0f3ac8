"""Shared fixtures: tiny synthetic NIfTI cohorts written into ``tmp_path``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on two cores: one torch/OpenMP thread per
    # process (and its kernels and subprocesses) instead of two each, which stalls.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from gazimed_lab.config import load_config
from gazimed_lab.data.grid import get_grid, template_on_grid

REPO = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO / "data_samples"
GUARD = REPO / "tests" / "guard"  # test-only process guard (network block, write audit)


def guard_module() -> Any:
    """The guard in ``tests/guard/sitecustomize.py``, imported into this process."""
    import importlib.util
    import sys

    if "gazimed_test_guard" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gazimed_test_guard",
                                                      GUARD / "sitecustomize.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gazimed_test_guard"] = module
        spec.loader.exec_module(module)  # under another name: installs nothing
    return sys.modules["gazimed_test_guard"]


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` as a float32 NIfTI file and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return path


def make_tiny_cohort(
    root: Path,
    n: int = 16,
    grid: str = "demo_4mm",
    n_clinical: int = 5,
    seed: int = 0,
    missing_pet: tuple[int, ...] = (3,),
) -> Path:
    """A small cohort on real MNI anatomy: template + noise, target-dependent GM loss.

    Returns the manifest path. Diagnoses are balanced CN/MCI/AD, two sites.
    """
    rng = np.random.default_rng(seed)
    g = get_grid(grid)
    t1 = template_on_grid("t1", g)
    gm = template_on_grid("gm", g)
    rows = []
    for i in range(n):
        sid = f"sub-{i:03d}"
        target = float((i % 3) / 2 * 0.8 + 0.1)  # 0.1, 0.5, 0.9
        dx = ["CN", "MCI", "AD"][i % 3]
        mri = t1 * (1.0 - 0.3 * target * gm) + rng.normal(0, 0.01, g.shape)
        pet = gm * (1.0 - 0.4 * target) * 2.0 + 0.2 * t1 + rng.normal(0, 0.01, g.shape)
        mri_path = write_nifti(root / "mri" / f"{sid}_T1w.nii.gz", mri, g.affine)
        pet_rel = ""
        if i not in missing_pet:
            write_nifti(root / "pet" / f"{sid}_pet.nii.gz", pet, g.affine)
            pet_rel = f"pet/{sid}_pet.nii.gz"
        row = {
            "subject_id": sid,
            "mri": str(mri_path.relative_to(root)),
            "pet": pet_rel,
            "target": round(target, 3),
            "diagnosis": dx,
            "site": f"site{i % 2}",
            "age": 60 + i,
            "sex": "F" if i % 2 else "M",
        }
        for j in range(n_clinical):
            row[f"feat_{j}"] = float(rng.normal(target * (j + 1), 1.0))
        rows.append(row)
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="session")
def pristine_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a 16-subject cohort made once per session (never modify it)."""
    return make_tiny_cohort(tmp_path_factory.mktemp("pristine") / "cohort")


@pytest.fixture
def tiny_cohort(pristine_cohort: Path, tmp_path: Path) -> Path:
    """Manifest path of a fresh copy of the 16-subject cohort (4 mm grid, one without PET)."""
    shutil.copytree(pristine_cohort.parent, tmp_path / "cohort")
    return tmp_path / "cohort" / "manifest.csv"


#: A small cpu-demo network for tests that train (add trainer.max_epochs as needed).
SMALL = [
    "model.embed_dim=12",
    "model.fusion_dim=32",
    "model.clinical_hidden=[32]",
    "model.clinical_out_dim=16",
    "model.head_hidden=[16]",
    "trainer.enable_progress_bar=false",
]


def edit_manifest(manifest: Path, change: Any) -> Path:
    """Rewrite a manifest (read as text) through ``change(frame)``, which edits in place or
    returns the new frame."""
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    out = change(frame)
    (frame if out is None else out).to_csv(manifest, index=False)
    return manifest


def cohort_config(manifest: Path, tmp_path: Path, *extra: str) -> Any:
    """The cpu-demo config on ``manifest`` with cache and run folder inside ``tmp_path``."""
    return load_config("cpu-demo", overrides=[
        f"data.manifest={manifest}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"system.run_dir={tmp_path / 'run'}",
        *extra,
    ])



#: Test modules that share one session fixture (the quick pipeline run, trained once and
#: copied by the browser tests): under ``--dist loadfile`` they run in the same worker.
SHARED_WORKER = {"tests/test_browser.py": "pipeline", "tests/test_notebooks.py": "pipeline"}


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (as ``make test`` runs), with :data:`SHARED_WORKER` as one file.

    (``--dist loadgroup`` cannot do this with pytest 9: xdist renames ``item._nodeid``,
    which pytest 9 no longer reads.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARED_WORKER.get(module, module)

    return ModuleScheduling(config, log)
