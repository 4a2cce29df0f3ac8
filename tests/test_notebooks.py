"""The notebooks: one parameters cell, no outputs, papermill pipeline, nbval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_SAMPLES, GUARD, REPO, guard_module

from gazimed_lab.pipeline import (
    PIPELINE_NOTEBOOKS,
    PipelineError,
    notebooks_dir,
    run_notebook,
    run_pipeline,
)

NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def test_the_five_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_data_qa", "02_train", "03_metrics_dashboard", "04_slice_viewer",
                     "05_predict"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell(path):
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    source = "".join(tagged[0]["source"])
    assert "run_dir" in source
    # Every parameter is documented with a comment.
    for line in source.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"undocumented parameter in {path.name}: {line}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} holds outputs"
            assert cell.get("execution_count") is None, f"{path.name} holds execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_are_short_and_define_no_functions(path):
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        assert "def " not in source and "class " not in source, "code belongs in the package"
        assert len(source.splitlines()) <= 15, f"long cell in {path.name}: {source[:60]}"
        assert "/work/" not in source and "/home/" not in source, "no absolute paths"


def test_unknown_pipeline_parameter_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"must be declared by a notebook, got \['max_epoch'\]"):
        run_pipeline(tmp_path / "run", parameters=["max_epoch=2"])


def test_finished_pipeline_run_is_not_clobbered(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "pipeline.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"finished pipeline run.*--overwrite"):
        run_pipeline(tmp_path / "run")


QUICK = {
    "max_epochs": 2,
    "n_boot": 100,
    "n_features_shown": 4,
    "occlusion_subjects": 1,
    "occlusion_mask_size": 10,
    "max_per_group": 2,
    "smoothgrad_samples": 2,
    "overwrite": True,
}


def _guarded_env(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Every Python process started from here blocks non-loopback network and logs."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(GUARD), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("GAZIMED_GUARD_LOG", str(log))
    monkeypatch.setenv("GAZIMED_GUARD_NETWORK", "1")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The quick pipeline, with the network blocked in this process and in every kernel."""
    tmp = tmp_path_factory.mktemp("pipeline")
    params = {**QUICK, "cache_dir": str(tmp / "cache")}
    guard = guard_module()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _guarded_env(monkeypatch, tmp / "guard")
        guard.install_network_guard()
        try:
            summary = run_pipeline(tmp / "run", parameters=params,
                                   manifest=DATA_SAMPLES / "manifest.csv")
        finally:
            guard.uninstall_network_guard()
    return tmp / "run", summary, tmp / "guard"


def test_network_guard_blocks_and_records(tmp_path, monkeypatch):
    _guarded_env(monkeypatch, tmp_path / "guard")
    probe = ("import socket\n"
             "try:\n    socket.create_connection(('example.org', 80), timeout=5)\n"
             "except OSError as exc:\n    print(exc)\n"
             "socket.socket().close(); print(socket.getaddrinfo('localhost', 80)[0][4][0])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert "blocked by the test guard: 'example.org'" in out.stdout, out.stderr
    records = guard_module().read_records(tmp_path / "guard")
    assert [r["target"] for r in records if r["event"] == "network"] == ["'example.org'"]


@pytest.mark.slow
@pytest.mark.notebooks
def test_pipeline_runs_the_four_notebooks_into_one_run_folder(pipeline_run):
    run, summary, _ = pipeline_run
    assert list(summary["notebooks"]) == list(PIPELINE_NOTEBOOKS)
    for name in PIPELINE_NOTEBOOKS:
        assert (run / "notebooks" / f"{name}.ipynb").is_file()
    figures = {p.name for p in (run / "figures").glob("*.png")}
    for expected in ("qa_missingness.png", "qa_split_balance.png", "qa_mosaic.png",
                     "train_learning_curves.png", "dash_roc.png", "dash_calibration.png",
                     "dash_confusion_youden.png", "dash_subgroups.png", "slices_mosaic.png"):
        assert expected in figures
    assert list((run / "maps").glob("group_*_saliency.nii.gz"))
    assert (run / "metrics.json").is_file() and (run / "pipeline.json").is_file()
    for name, seconds in summary["notebooks"].items():
        assert seconds < 300, f"{name} quick run took {seconds} s"


@pytest.mark.slow
@pytest.mark.notebooks
def test_quick_pipeline_ran_with_the_network_blocked(pipeline_run):
    _, summary, guard_log = pipeline_run
    records = guard_module().read_records(guard_log)
    kernels = [r for r in records if r["event"] == "start"
               and any("ipykernel" in str(a) for a in r["argv"])]
    assert len(kernels) >= len(summary["notebooks"])  # every notebook's kernel was guarded
    assert [r for r in records if r["event"] == "network"] == []


@pytest.mark.slow
@pytest.mark.notebooks
def test_predict_notebook_scores_a_manifest(pipeline_run):
    run, _, _ = pipeline_run
    run_notebook("05_predict", run, {"manifest": str(DATA_SAMPLES / "manifest.csv")})
    import pandas as pd

    scores = pd.read_csv(run / "predictions" / "new_subjects.csv")
    assert len(scores) == 40 and "qa_flags" in scores.columns
    assert (run / "figures" / "predict_scores.png").is_file()


@pytest.mark.slow
@pytest.mark.notebooks
def test_nbval_validates_the_executed_notebooks(pipeline_run):
    run, _, _ = pipeline_run
    notebooks = [str(run / "notebooks" / f"{n}.ipynb") for n in PIPELINE_NOTEBOOKS]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         "--nbval-current-env", "--nbval-sanitize-with", str(REPO / "tests" / "nbval_sanitize.cfg"),
         *notebooks],
        cwd=str(notebooks_dir()), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.mark.slow
@pytest.mark.notebooks
def test_pipeline_stops_at_the_failing_notebook_and_keeps_earlier_outputs(tmp_path):
    with pytest.raises(PipelineError, match=r"notebook `02_train` failed at cell \d+.*ConfigError"):
        run_pipeline(tmp_path / "run", manifest=DATA_SAMPLES / "manifest.csv",
                     parameters={"learning_rate": "fast", "cache_dir": str(tmp_path / "c")})
    assert (tmp_path / "run" / "notebooks" / "01_data_qa.ipynb").is_file()
    assert (tmp_path / "run" / "qa" / "qa_table.csv").is_file()
    assert not (tmp_path / "run" / "pipeline.json").exists()
