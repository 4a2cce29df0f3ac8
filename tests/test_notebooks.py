"""The notebooks: one parameters cell, no outputs, papermill pipeline, nbval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_SAMPLES, GUARD, REPO, guard_module, make_tiny_cohort

from gazimed_lab.config import ConfigError
from gazimed_lab.data.grid import get_grid, grid_from_config
from gazimed_lab.data.qa import run_qa
from gazimed_lab.notebook import lab_launch, setup_notebook
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_is_one_call_of_the_package_helper(path):
    cells = ["".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code"]
    assert sum("setup_notebook(" in c for c in cells) == 1
    assert not any("seed_everything" in c or "load_config(" in c for c in cells)
    text = path.read_text()
    assert "DESIGN.md" not in text and "README: Run folder" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_used(path):
    import ast

    cells = [c for c in _cells(path) if c["cell_type"] == "code"]
    params = [n.id for n in ast.walk(ast.parse("".join(cells[0]["source"])))
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    rest = "\n".join("".join(c["source"]) for c in cells[1:])
    used = {n.id for n in ast.walk(ast.parse(rest)) if isinstance(n, ast.Name)}
    assert [p for p in params if p not in used] == [], f"unused parameters in {path.name}"


# ------------------------------------------------------------ the notebooks' helper
def test_setup_notebook_builds_the_config_from_parameters(tmp_path):
    setup = setup_notebook(tmp_path / "run", "cpu-demo", manifest="m.csv", cache_dir="c",
                           seed=7, overrides=["trainer.max_epochs=3", "data.batch_size=5"],
                           values={"trainer.max_epochs": None, "data.batch_size": 4,
                                   "optim.learning_rate": 0.01})
    cfg = setup.cfg
    assert setup.figures == tmp_path / "run" / "figures" and setup.figures.is_dir()
    assert (cfg.data.manifest, cfg.data.cache_dir, cfg.system.seed) == ("m.csv", "c", 7)
    assert cfg.system.run_dir == str(tmp_path / "run")
    assert cfg.trainer.max_epochs == 3  # None keeps what came before
    assert cfg.data.batch_size == 4 and cfg.optim.learning_rate == 0.01  # values win
    preset = setup_notebook(tmp_path / "run", "cpu-demo").cfg
    assert preset.data.manifest == "data_samples/manifest.csv"  # None keeps the preset's


def test_setup_notebook_without_preset_and_its_errors(tmp_path):
    setup = setup_notebook(str(tmp_path / "r"), seed=1)
    assert setup.cfg is None and setup.run_dir == tmp_path / "r" and setup.seed == 1
    with pytest.raises(ValueError, match=r"`preset` must be given when config values are, got "
                                         r"None with \['manifest'\]"):
        setup_notebook(tmp_path, manifest="m.csv")
    with pytest.raises(ValueError, match=r"`overrides` must be a list of .* got 'a=b'"):
        setup_notebook(tmp_path, "cpu-demo", overrides="a=b")
    with pytest.raises(ValueError, match=r"`seed` must be an int, got '1'"):
        setup_notebook(tmp_path, seed="1")
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch"):
        setup_notebook(tmp_path, "cpu-demo", values={"trainer.max_epoch": 2})


def test_lab_launch_is_local_with_a_token_and_the_project_kernel(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    launch = lab_launch(tmp_path, port=8899)
    assert launch.url == f"http://127.0.0.1:8899/lab?token={launch.env['JUPYTER_TOKEN']}"
    assert len(launch.env["JUPYTER_TOKEN"]) >= 32
    assert launch.env["JUPYTER_TOKEN"] not in " ".join(launch.argv)  # not visible in ps
    for arg in ("--ServerApp.ip=127.0.0.1", "--ServerApp.port=8899", "--allow-root",
                f"--ServerApp.root_dir={tmp_path.resolve()}", "--LabApp.news_url=None",
                "--MappingKernelManager.default_kernel_name=gazimed-lab"):
        assert arg in launch.argv
    assert "--no-browser" not in launch.argv
    assert launch.env["MPLBACKEND"] == "module://matplotlib_inline.backend_inline"
    assert "--LabApp.extension_manager=readonly" in launch.argv
    config = Path(launch.env["JUPYTER_CONFIG_PATH"].split(os.pathsep)[0])
    page = json.loads((config / "labconfig" / "page_config.json").read_text())
    assert page["disabledExtensions"] == {"@jupyterlab/apputils-extension:announcements": True}
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    quiet = lab_launch(tmp_path, token="", open_browser=False)
    assert "--allow-root" not in quiet.argv and "--no-browser" in quiet.argv
    assert "--IdentityProvider.token=" in quiet.argv and "JUPYTER_TOKEN" not in quiet.env
    assert quiet.url == f"http://127.0.0.1:{quiet.port}/lab"
    with pytest.raises(FileNotFoundError, match="`notebook_dir` must be a folder"):
        lab_launch(tmp_path / "missing")


# A 6 mm grid that no preset names: QA must check the volumes on it, not on demo_4mm.
CUSTOM_GRID = {
    "data.grid_shape": [27, 32, 27],
    "data.grid_affine": [[-6.0, 0, 0, 78.0], [0, 6.0, 0, -114.0], [0, 0, 6.0, -72.0],
                         [0, 0, 0, 1.0]],
}


@pytest.fixture(scope="module")
def custom_grid_cohort(tmp_path_factory):
    grid = get_grid("custom", CUSTOM_GRID["data.grid_shape"], CUSTOM_GRID["data.grid_affine"])
    return make_tiny_cohort(tmp_path_factory.mktemp("custom") / "cohort", n=9, grid=grid)


def test_qa_checks_volumes_on_a_custom_grid_from_the_config(custom_grid_cohort, tmp_path):
    setup = setup_notebook(tmp_path / "run", "cpu-demo", manifest=custom_grid_cohort,
                           values=CUSTOM_GRID)
    grid = grid_from_config(setup.cfg)  # as notebook 01 does
    assert (grid.name, grid.shape) == ("custom", (27, 32, 27))
    report = run_qa(setup.cfg.data.manifest, grid=grid)
    assert report.ok, report.errors
    read = report.table[report.table["file"] != ""]
    assert set(read["grid_action"]) == {"on_grid"}
    by_name = run_qa(custom_grid_cohort, grid=setup.cfg.data.grid)  # the name alone: demo_4mm
    assert all(a.startswith("resampled") for a in by_name.table["grid_action"] if a)


@pytest.mark.slow
@pytest.mark.notebooks
def test_notebook_01_runs_on_a_custom_grid(custom_grid_cohort, tmp_path):
    overrides = [f"{k}={json.dumps(v)}" for k, v in CUSTOM_GRID.items()]
    out = run_notebook("01_data_qa", tmp_path / "run", {
        "manifest": str(custom_grid_cohort), "overrides": overrides, "n_features_shown": 2})
    import pandas as pd

    table = pd.read_csv(tmp_path / "run" / "qa" / "qa_table.csv", keep_default_na=False)
    assert set(table.loc[table["file"] != "", "grid_action"]) == {"on_grid"}
    assert "grid custom (27, 32, 27)" in out.read_text()


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
    "ig_steps": 4,
    "overwrite": True,
}


def _guarded_env(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Every Python process started from here blocks non-loopback network and logs."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(GUARD), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("GAZIMED_GUARD_LOG", str(log))
    monkeypatch.setenv("GAZIMED_GUARD_NETWORK", "1")


_QUICK_RUN: dict[str, tuple[Path, dict, Path]] = {}


def quick_pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """The quick pipeline (run folder, summary, guard log), made once per session.

    The network is blocked in this process and in every kernel. The run folder is
    shared with tests/test_browser.py, which copies it instead of training again;
    its volume cache is ``run.parent / "cache"``.
    """
    if "run" not in _QUICK_RUN:
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
        _QUICK_RUN["run"] = (tmp / "run", summary, tmp / "guard")
    return _QUICK_RUN["run"]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The quick pipeline, with the network blocked in this process and in every kernel."""
    return quick_pipeline_run(tmp_path_factory)


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
                     "dash_confusion_youden.png", "dash_subgroups.png", "slices_mosaic.png",
                     "qa_region_outliers.png", "map_region_report.png"):
        assert expected in figures
    assert (run / "qa" / "region_outliers.csv").is_file()  # 01: regional intensity outliers
    import pandas as pd

    report = pd.read_csv(run / "maps" / "region_report.csv")  # 04: every map, ranked by region
    assert {"saliency", "occlusion", "group saliency", "IG"} <= {
        m.split(" ")[0] if not m.startswith("group") else "group saliency" for m in report["map"]}
    assert (report.groupby("map")["rank"].min() == 1).all()
    assert list((run / "maps").glob("group_*_saliency.nii.gz"))
    assert list((run / "maps").glob("group_*_ig_PET.nii.gz"))  # integrated gradients
    assert list((run / "maps").glob("regions_*_MRI.csv"))  # the AAL region ranking
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
