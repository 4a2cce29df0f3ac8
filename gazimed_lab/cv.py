"""Cross-validation as one command: ``gazimed-lab cv --config P --folds K``.

:func:`run_cv` trains fold ``k`` of ``K`` (``data.n_folds=K``, ``data.fold=k``) with
:func:`~gazimed_lab.runner.train_and_evaluate` into ``RUN_DIR/folds/<k>/`` (a complete
run folder each). :func:`~gazimed_lab.data.splits.make_splits` holds the test split out
first, the same for every fold, and never lets it choose anything; fold ``k`` of a
stratified k-fold over the rest is the validation split that chooses fold ``k``'s
checkpoint. :func:`~gazimed_lab.evaluation.cv.summarize_cv` then writes the per-fold,
mean ± sd, pooled out-of-fold and test-ensemble metrics into ``RUN_DIR``.

Resumable fold by fold, as ``pipeline.py`` is: ``RUN_DIR/cv_state.json`` records the
config, ``K`` and the folds finished. The same command after a kill keeps the finished
folds, continues an interrupted fold from its last epoch-end checkpoint (or starts it
again when it had none) and goes on with the rest; another config or ``K`` in the same
folder is refused with the commands that continue or restart (``overwrite``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from gazimed_lab.config import config_to_dict, load_config, save_config
from gazimed_lab.evaluation.cv import STATE_FILE, CVSummary, summarize_cv
from gazimed_lab.paths import is_secondary_process, output_path
from gazimed_lab.runner import train_and_evaluate

__all__ = ["CVResult", "run_cv"]

#: Files of a cv run folder besides ``folds/``; ``overwrite`` removes them.
_OUTPUTS = ("metrics.json", "folds.csv", "predictions", "figures/cv_folds.png")


@dataclass
class CVResult:
    """A finished cross-validation: the summary and what this call did per fold.

    ``summary`` is None in the other processes of a multi-process run (rank 0 writes it).
    """

    run_dir: Path
    summary: CVSummary | None
    seconds: float
    actions: dict[int, str] = field(default_factory=dict)  # kept / resumed / trained


def _parameters(cfg: DictConfig, folds: int) -> dict[str, Any]:
    values = config_to_dict(cfg)
    values["system"].pop("run_dir", None)
    values["data"].pop("fold", None)
    return json.loads(json.dumps({"folds": folds, "config": values}))


def _command(run_dir: Path, folds: int, overwrite: bool = False) -> str:
    parts = ["gazimed-lab", "cv", "--config", shlex.quote(str(run_dir / "config.yaml")),
             "--folds", str(folds), "--run-dir", shlex.quote(str(run_dir))]
    return " ".join(parts + (["--overwrite"] if overwrite else []))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _prepare(run_dir: Path, params: dict[str, Any], folds: int, overwrite: bool
             ) -> dict[str, Any]:
    state_path = run_dir / STATE_FILE
    if overwrite and state_path.is_file():
        shutil.rmtree(run_dir / "folds", ignore_errors=True)
        for name in _OUTPUTS:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        state_path.unlink()
    state = _read_state(state_path)
    if state is None and run_dir.is_dir() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"`--run-dir` must be empty or a cv run folder, got a folder without {STATE_FILE} "
            f"({run_dir}); choose another --run-dir")
    if state is not None and {k: state.get(k) for k in params} != params:
        old = state.get("folds", folds)
        raise FileExistsError(
            f"`--run-dir` holds a cv run with another config or number of folds (folds "
            f"{old}; {state_path}); continue it with `{_command(run_dir, int(old))}`, or "
            f"restart it with `{_command(run_dir, folds, overwrite=True)}`")
    return state or {**params, "finished": {}}


def run_cv(cfg: DictConfig | str, folds: int, run_dir: str | Path = "runs/cv",
           n_boot: int = 1000, seed: int = 0, overwrite: bool = False,
           callbacks: list[pl.Callback] | None = None) -> CVResult:
    """Train every fold (resumably), then summarize the cross-validation.

    Parameters
    ----------
    cfg
        The config (or a preset name); ``data.n_folds`` / ``data.fold`` and
        ``system.run_dir`` are set per fold.
    folds
        Number of folds ``K`` (>= 2).
    run_dir
        The cv run folder (``folds/<k>/`` and the summary inside).
    n_boot, seed
        Bootstrap resamples and seed of the summary's CIs (not part of the training).
    overwrite
        Remove a previous cv run in ``run_dir`` and start again.
    callbacks
        Extra Lightning callbacks for every fold's fit.

    Returns
    -------
    CVResult
        The summary and, per fold, whether it was ``kept``, ``resumed`` or ``trained``.

    Raises
    ------
    ValueError
        For ``folds`` below 2.
    FileExistsError
        For a folder that is not a cv run, or holds one with other parameters.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"`--folds` must be an integer >= 2, got {folds!r}")
    cfg = load_config(cfg) if isinstance(cfg, str) else cfg.copy()
    cfg.data.n_folds, cfg.data.fold = folds, 0
    run_dir = Path(run_dir).expanduser().resolve()
    params = _parameters(cfg, folds)
    # Under DDP every process runs this loop (Lightning starts the others by running the
    # command again, during the first fold's fit); only global rank 0 keeps the cv folder.
    primary = not is_secondary_process()
    cfg.system.run_dir = str(run_dir)
    state_path = run_dir / STATE_FILE
    if primary:
        state = _prepare(run_dir, params, folds, overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")  # the base config: what continues the run
        _write_state(state_path, state)
    else:
        state = {**params, "finished": {}}
    start = time.perf_counter()
    actions: dict[int, str] = {}
    for k in range(folds):
        folder = output_path(run_dir, "folds", str(k))
        if (folder / "metrics.json").is_file():  # written last: the fold finished
            actions[k] = "kept"
            state["finished"].setdefault(str(k), None)
            if primary:
                print(f"  fold {k}/{folds}: kept (finished before)", flush=True)
            continue
        resume = "last" if (folder / "checkpoints" / "last.ckpt").is_file() else None
        if resume is None and folder.exists() and primary:
            shutil.rmtree(folder)  # an interrupted fold without a checkpoint: start it again
        fold_cfg = cfg.copy()
        fold_cfg.data.fold, fold_cfg.system.run_dir = k, str(folder)
        began = time.perf_counter()
        result = train_and_evaluate(fold_cfg, run_dir=folder, resume=resume,
                                    callbacks=callbacks)
        seconds = round(time.perf_counter() - began, 1)
        actions[k] = "resumed" if resume else "trained"
        state["finished"][str(k)] = seconds
        if not primary:
            continue
        _write_state(state_path, state)
        auroc = result.val_metrics.get("auroc", float("nan"))
        print(f"  fold {k}/{folds}: {actions[k]} in {seconds:.0f} s, validation AUROC "
              f"{auroc:.3f}", flush=True)
    if not primary:  # rank 0 alone summarizes (its folds' predictions)
        return CVResult(run_dir, None, time.perf_counter() - start, actions)
    summary = summarize_cv(run_dir, folds, n_boot=n_boot, seed=seed,
                           threshold=float(cfg.optim.threshold))
    return CVResult(run_dir, summary, time.perf_counter() - start, actions)
