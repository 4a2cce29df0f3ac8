"""Run the study notebooks headless with papermill, sharing one run folder.

``run_pipeline`` executes ``01_data_qa`` to ``04_slice_viewer`` in order into
``RUN_DIR/notebooks/``. A failing notebook stops the pipeline with an error that
names the notebook and the cell; what earlier notebooks wrote stays. A finished
run folder is not overwritten unless asked.

Each notebook is executed under a temporary name and renamed once it finished (a
failed one is kept as ``<name>.failed.ipynb``), and ``RUN_DIR/pipeline_state.json``
records the parameters and the notebooks finished. Running the same command again
after a failure or a kill continues from the first unfinished notebook, keeping
the finished ones; other parameters are refused with the commands that continue
or restart (``--overwrite``).
"""

from __future__ import annotations

import json
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PIPELINE_NOTEBOOKS",
    "PipelineError",
    "notebooks_dir",
    "parse_parameters",
    "run_demo",
    "run_notebook",
    "run_pipeline",
]

PIPELINE_NOTEBOOKS = ("01_data_qa", "02_train", "03_metrics_dashboard", "04_slice_viewer")
KERNEL_NAME = "gazimed-lab"
#: Pipeline state in the run folder: parameters, notebooks, and those finished.
STATE_FILE = "pipeline_state.json"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names notebook and cell."""


def notebooks_dir() -> Path:
    """Return the repository's ``notebooks/`` folder."""
    return Path(__file__).resolve().parents[1] / "notebooks"


def parse_parameters(items: list[str] | None) -> dict[str, Any]:
    """``["max_epochs=2", "interactive=false"]`` -> ``{"max_epochs": 2, "interactive": False}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"notebook parameter must look like `key=value`, got `{item}`")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if KERNEL_NAME in specs:
        return KERNEL_NAME
    warnings.warn(
        f"Jupyter kernel `{KERNEL_NAME}` is not registered (run `make setup`); using `python3`",
        stacklevel=3,
    )
    return "python3"


def _declared_parameters(path: Path) -> set[str]:
    import papermill as pm

    return set(pm.inspect_notebook(str(path)).keys())


def run_notebook(
    name: str,
    run_dir: str | Path,
    parameters: dict[str, Any] | None = None,
    source_dir: str | Path | None = None,
) -> Path:
    """Execute one notebook with papermill into ``run_dir/notebooks/<name>.ipynb``.

    Only the parameters the notebook declares are passed to it.

    Raises
    ------
    PipelineError
        Naming the notebook, the failing cell and the error.
    """
    import papermill as pm

    source = Path(source_dir or notebooks_dir()) / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook must exist, got a missing file ({source})")
    run_dir = Path(run_dir).resolve()
    out = run_dir / "notebooks" / f"{name}.ipynb"
    # Executed under a temporary name, renamed when it finished: a kill or a failure
    # never replaces a good executed notebook, nor leaves a partial one under its name.
    partial = out.with_name(f".{name}.partial.ipynb")
    failed = out.with_name(f"{name}.failed.ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    declared = _declared_parameters(source)
    given = {"run_dir": str(run_dir), **(parameters or {})}
    passed = {k: v for k, v in given.items() if k in declared}
    try:
        pm.execute_notebook(
            str(source), str(partial), parameters=passed, kernel_name=_kernel_name(),
            cwd=str(source.parent), progress_bar=False, log_output=False,
        )
    except pm.PapermillExecutionError as exc:
        if partial.exists():
            os.replace(partial, failed)
        raise PipelineError(
            f"notebook `{name}` failed at cell {exc.cell_index} (execution count "
            f"{exc.exec_count}): {exc.ename}: {exc.evalue}; the executed notebook is at "
            f"{failed} and earlier notebooks' outputs are kept in {run_dir}; fix the cause, "
            f"then rerun the same command to continue from `{name}`"
        ) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    failed.unlink(missing_ok=True)
    return out


def _command(run_dir: Path, params: dict[str, Any], overwrite: bool = False) -> str:
    """Return the ``gazimed-lab pipeline`` command line that runs with ``params``."""
    parts = ["gazimed-lab", "pipeline", "--run-dir", shlex.quote(str(run_dir)),
             "--preset", shlex.quote(str(params.get("preset", "cpu-demo")))]
    if "manifest" in params:
        parts += ["--manifest", shlex.quote(str(params["manifest"]))]
    for key, value in params.items():
        if key not in ("preset", "manifest"):
            text = value if isinstance(value, str) else json.dumps(value)
            parts += ["-p", shlex.quote(f"{key}={text}")]
    return " ".join(parts + (["--overwrite"] if overwrite else []))


def _read_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: treated as no state (everything runs again)
    return state if isinstance(state, dict) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def run_pipeline(
    run_dir: str | Path = "runs/pipeline",
    preset: str = "cpu-demo",
    parameters: list[str] | dict[str, Any] | None = None,
    manifest: str | Path | None = None,
    overwrite: bool = False,
    notebooks: tuple[str, ...] = PIPELINE_NOTEBOOKS,
    source_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the notebooks in order into one run folder; return a summary dict.

    Parameters
    ----------
    run_dir
        The shared run folder (README: Run folder).
    preset
        Config preset passed to every notebook's ``preset`` parameter.
    parameters
        Further notebook parameters (``key=value`` strings or a dict); each
        notebook receives those it declares. A key no notebook declares is an error.
    manifest
        Cohort manifest; default: each notebook's own default (the embedded cohort).
    overwrite
        Run again into a folder that holds a finished pipeline run.
    """
    run_dir = Path(run_dir).resolve()
    marker = run_dir / "pipeline.json"
    if marker.exists() and not overwrite:
        raise FileExistsError(
            f"`run_dir` must not hold a finished pipeline run, got {marker}; pass --overwrite "
            "or choose another --run-dir"
        )
    params = parameters if isinstance(parameters, dict) else parse_parameters(parameters)
    params = {"preset": preset, **params}
    if manifest is not None:
        params["manifest"] = str(Path(manifest).resolve())
    src = Path(source_dir or notebooks_dir())
    declared = set().union(*(_declared_parameters(src / f"{n}.ipynb") for n in notebooks))
    unknown = sorted(set(params) - declared - {"run_dir"})
    if unknown:
        raise ValueError(
            f"notebook parameters must be declared by a notebook, got {unknown}; declared: "
            f"{sorted(declared)}"
        )
    state_path = run_dir / STATE_FILE
    if overwrite:
        marker.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)
    params = json.loads(json.dumps(params))  # as the state file will hold them
    state = _read_state(state_path)
    if state is not None and (state.get("parameters") != params
                              or state.get("notebooks") != list(notebooks)):
        old = state.get("parameters") if isinstance(state.get("parameters"), dict) else {}
        raise FileExistsError(
            f"`run_dir` holds an unfinished pipeline run with other parameters or notebooks, "
            f"got {state.get('parameters')} ({state.get('notebooks')}) in {state_path}; "
            f"continue it with `{_command(run_dir, old or {})}`, or restart it with "
            f"`{_command(run_dir, params, overwrite=True)}`")
    finished: dict[str, float] = dict(state.get("finished", {})) if state else {}
    kept: list[str] = []  # the leading finished notebooks; everything after reruns
    for name in notebooks:
        if name not in finished or not (run_dir / "notebooks" / f"{name}.ipynb").is_file():
            break
        kept.append(name)
    summary: dict[str, Any] = {"notebooks": {}, "parameters": params, "kept": kept}
    new_state = {"parameters": params, "notebooks": list(notebooks),
                 "finished": {n: finished[n] for n in kept}}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_state(state_path, new_state)
    for name in notebooks:
        if name in kept:
            summary["notebooks"][name] = finished[name]
            print(f"  {name:<24} kept (finished before)", flush=True)
            continue
        start = time.perf_counter()
        run_notebook(name, run_dir, params, source_dir=src)
        seconds = round(time.perf_counter() - start, 1)
        summary["notebooks"][name] = seconds
        new_state["finished"][name] = seconds
        _write_state(state_path, new_state)
        print(f"  {name:<24} done in {seconds:6.1f} s", flush=True)
    marker.write_text(json.dumps(summary, indent=2))
    return summary


def run_demo(run_dir: str | Path = "runs/demo", n_subjects: int | None = None
             ) -> dict[str, Any]:
    """Generate the demo cohort if absent, then run the pipeline on it (``make demo``)."""
    from gazimed_lab.config import DEMO_SUBJECTS
    from gazimed_lab.data.synthetic import demo_cohort

    start = time.perf_counter()
    n_subjects = DEMO_SUBJECTS if n_subjects is None else int(n_subjects)
    manifest = demo_cohort(n_subjects=n_subjects)
    print(f"demo cohort: {manifest} ({n_subjects} subjects)", flush=True)
    summary = run_pipeline(run_dir, preset="cpu-demo", manifest=manifest, overwrite=True)
    run_dir = Path(run_dir).resolve()
    total = time.perf_counter() - start
    print(f"\ndemo finished in {total / 60:.1f} min")
    print(f"  executed notebooks: {run_dir / 'notebooks'}")
    print(f"  figures:            {run_dir / 'figures'}")
    print(f"  metrics:            {run_dir / 'metrics.json'}")
    summary["seconds"] = round(total, 1)
    return summary
