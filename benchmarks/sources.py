"""``python -m benchmarks.sources``: time ``gazimed-lab manifest`` on a generated CAPS tree.

Writes a Clinica-like CAPS folder of ``--subjects`` subjects (``--sessions`` each: the
t1-linear T1, its cropped copy and transform, the pet-linear PET and its cropped copy,
tiny NIfTI files: the build reads names, not voxels) and a participants TSV, then
times :func:`~gazimed_lab.data.sources.manifest_from_caps` and the same images through
a file-name pattern (:func:`~gazimed_lab.data.sources.manifest_from_pattern`). Prints
the medians and writes them, with the machine facts, to a JSON file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from benchmarks.common import REPO, load_now, machine_facts, median
from gazimed_lab.data.sources import manifest_from_caps, manifest_from_pattern

__all__ = ["make_caps_tree", "run"]

SPACE = "space-MNI152NLin2009cSym"


def make_caps_tree(root: Path, n_subjects: int, n_sessions: int = 1) -> tuple[Path, Path]:
    """Write a CAPS tree and its participants TSV under ``root``; return both paths."""
    image = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([-4.0, 4.0, 4.0, 1.0]))
    rows = []
    for i in range(n_subjects):
        sub = f"sub-ADNI{i:04d}"
        for j in range(n_sessions):
            ses = f"ses-M{12 * j:03d}"
            folder = root / "subjects" / sub / ses
            t1, pet = folder / "t1_linear", folder / "pet_linear"
            t1.mkdir(parents=True, exist_ok=True)
            pet.mkdir(parents=True, exist_ok=True)
            stem = f"{sub}_{ses}"
            for crop in ("", "_desc-Crop"):
                nib.save(image, str(t1 / f"{stem}_T1w_{SPACE}{crop}_res-1x1x1_T1w.nii.gz"))
                nib.save(image, str(pet / f"{stem}_trc-18FFDG_pet_{SPACE}{crop}_res-1x1x1_suvr-"
                                          "cerebellumPons2_pet.nii.gz"))
            (t1 / f"{stem}_T1w_{SPACE}_res-1x1x1_affine.mat").write_bytes(b"")
            (pet / f"{stem}_trc-18FFDG_pet_space-T1w_rigid.mat").write_bytes(b"")
        rows.append({"participant_id": sub, "diagnosis": ["CN", "MCI", "AD"][i % 3],
                     "age": 60 + i % 30, "sex": "FM"[i % 2], "target": round((i % 3) / 2, 2),
                     **{f"feat_{k}": float(i * k % 17) for k in range(118)}})
    tsv = root / "participants.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
    return root, tsv


def _time(fn: Any, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def run(n_subjects: int = 300, n_sessions: int = 1, repeats: int = 5,
        work: Path | None = None) -> dict[str, Any]:
    """Build the tree, time both builds; return the results."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        caps, tsv = make_caps_tree(Path(tmp) / "caps", n_subjects, n_sessions)
        out = Path(tmp) / "cohort" / "manifest.csv"
        caps_s = _time(lambda: manifest_from_caps(caps, out, tsv, overwrite=True), repeats)
        pattern = ("subjects/{subject}/{session}/t1_linear/{subject}_{session}_T1w_" + SPACE
                   + "_res-1x1x1_T1w.nii.gz")
        pet = ("subjects/{subject}/{session}/pet_linear/{subject}_{session}_trc-18FFDG_pet_"
               + SPACE + "_res-1x1x1_suvr-cerebellumPons2_pet.nii.gz")
        pattern_s = _time(lambda: manifest_from_pattern(caps, out, pattern, pet, tsv,
                                                        overwrite=True), repeats)
        rows = len(pd.read_csv(out))
    return {"subjects": n_subjects, "sessions": n_sessions, "rows": rows, "repeats": repeats,
            "tsv_columns": 123, "caps_seconds": caps_s, "caps_median_s": median(caps_s),
            "pattern_seconds": pattern_s, "pattern_median_s": median(pattern_s)}


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sources", description=__doc__)
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    start = load_now()
    results = {"command": "python -m benchmarks.sources " + " ".join(argv or []),
               "loadavg_start": start, "machine": machine_facts(),
               **run(args.subjects, args.sessions, args.repeats), "loadavg_end": load_now()}
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "benchmarks" / "results" / f"sources-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{results['rows']} manifest rows ({args.subjects} subjects x {args.sessions} "
          f"sessions), median of {args.repeats}: CAPS {results['caps_median_s']:.2f} s, "
          f"pattern {results['pattern_median_s']:.2f} s; load average {start} -> "
          f"{results['loadavg_end']}; wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
