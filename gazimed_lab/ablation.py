"""Per-modality ablations on one cohort and one split: which input carries the signal.

``run_ablations`` trains the same preset once per input set (clinical only, MRI
only, PET only, MRI + PET, all) with the same seed, hence the same subject-level split, and
compares the held-out test metrics of each run's best checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from gazimed_lab.config import load_config
from gazimed_lab.evaluation import compare_runs
from gazimed_lab.paths import is_secondary_process
from gazimed_lab.runner import train_and_evaluate
from gazimed_lab.viz import plot_run_comparison

__all__ = ["ABLATIONS", "run_ablations"]

ABLATIONS: dict[str, list[str]] = {
    "clinical-only": ["model.mode=clinical_only"],
    "MRI-only": ["model.mode=image_only", "data.channels=1"],
    "PET-only": ["model.mode=image_only", "data.channels=2", "model.use_mri=false"],
    "MRI+PET": ["model.mode=image_only", "data.channels=2"],
    "all (MRI+PET+clinical)": ["model.mode=multimodal", "data.channels=2"],
}


def run_ablations(
    manifest: str | Path,
    out_dir: str | Path = "runs/ablations",
    preset: str = "cpu-demo",
    overrides: list[str] | None = None,
    names: list[str] | None = None,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Train one run per input set and return the test-metric comparison table.

    Writes each run into ``out_dir/<name>/``, the table to
    ``out_dir/ablations.csv`` and a figure to ``out_dir/ablations.png``. Under DDP the
    other processes train along and return an empty table (rank 0 writes).
    """
    out_dir = Path(out_dir)
    chosen = names or list(ABLATIONS)
    unknown = [n for n in chosen if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"ablation names must be in {list(ABLATIONS)}, got {unknown}")
    runs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for name in chosen:
        slug = name.split(" ")[0].lower().replace("+", "-")
        run_dir = out_dir / slug
        cfg = load_config(preset, [f"data.manifest={manifest}", f"system.run_dir={run_dir}",
                                   *(overrides or []), *ABLATIONS[name]])
        start = time.perf_counter()
        train_and_evaluate(cfg, run_dir=run_dir, overwrite=True)
        seconds[name] = time.perf_counter() - start
        runs[name] = run_dir
        if not is_secondary_process():
            print(f"  {name:<24} {seconds[name]:6.0f} s", flush=True)
    if is_secondary_process():
        return pd.DataFrame()
    table = compare_runs(runs, split="test", n_boot=n_boot)
    table["train_and_test_seconds"] = table["run"].map(seconds).round(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "ablations.csv", index=False)
    plot_run_comparison(table, output_file=out_dir / "ablations.png",
                        title="Per-modality ablation: held-out test split")
    return table
