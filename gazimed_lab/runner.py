"""One-call workflows over the public API: train-and-evaluate, and predict a manifest.

``train_and_evaluate`` is what ``gazimed-lab train`` and the ``02_train`` notebook
run: fit, score the validation and test splits once with the best checkpoint,
write per-split predictions and ``metrics.json`` into the run folder (README: Run
folder). ``predict_manifest`` scores new subjects with nothing but a checkpoint
and a manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from omegaconf import DictConfig

from gazimed_lab.checkpoints import check_resumable, load_checkpoint
from gazimed_lab.config import load_config
from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.predict import PredictDataModule
from gazimed_lab.data.sessions import subject_count
from gazimed_lab.evaluation import binary_metrics, write_metrics_json, youden_threshold
from gazimed_lab.models.lightning import AlzheimersLightningModule, flatten_predictions
from gazimed_lab.paths import atomic_write, check_not_input
from gazimed_lab.training import create_trainer

__all__ = [
    "META_COLUMNS",
    "RunResult",
    "load_checkpoint",
    "predict_manifest",
    "train_and_evaluate",
]

META_COLUMNS = ("diagnosis", "site", "age", "sex")


@dataclass
class RunResult:
    """What a finished training run produced (all files are inside ``run_dir``)."""

    run_dir: Path
    best_checkpoint: Path
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    fit_seconds: float
    epochs: int  # epochs completed (early stopping may end before max_epochs)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    global_rank: int = 0  # > 0: a secondary process of a multi-process run (writes nothing)


def _resume_path(resume: str | Path | None, run_dir: Path) -> str | None:
    if resume is None:
        return None
    if str(resume) == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"`--resume last` must find a last checkpoint, got none at {path}; "
                "start without --resume"
            )
        return str(path)
    path = Path(resume)
    if not path.is_file():
        state = "a directory" if path.is_dir() else "a missing path"
        raise FileNotFoundError(f"`resume` must be a checkpoint file, got {state} ({path})")
    return str(path)


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it (so run folders can move)."""
    path, folder = path.resolve(), folder.resolve()
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def _training_log(run_dir: Path) -> Path:
    return run_dir / "logs" / "csv" / "metrics.csv"


def _restore_log_before_resume(run_dir: Path, previous: pd.DataFrame | None) -> None:
    """Put back the rows Lightning's CSV logger deleted when the resumed run started."""
    path = _training_log(run_dir)
    if previous is None or previous.empty or not path.is_file():
        return
    current = pd.read_csv(path)
    first_step = current["step"].min() if len(current) else float("inf")
    kept = previous[previous["step"] < first_step]
    pd.concat([kept, current], ignore_index=True).to_csv(path, index=False)


def _predictions_table(
    records: list[dict[str, Any]], subjects: pd.DataFrame, split: str
) -> pd.DataFrame:
    """One row per subject (and session): the records joined with the manifest's columns."""
    table = pd.DataFrame.from_records(records)
    keys = ["subject_id", *(["session_id"] if "session_id" in subjects.columns else [])]
    # The manifest's targets as parsed there (float64), not the float32 batch copies: the
    # file shows the manifest's decimals (0.1234, not 0.12340000271797180).
    manifest_targets = subjects.set_index(keys)["target"]
    index = pd.MultiIndex.from_frame(table[keys]) if len(keys) > 1 else table["subject_id"]
    table["target"] = manifest_targets.reindex(index).to_numpy(dtype=float)
    meta = subjects[[*keys, *[c for c in META_COLUMNS if c in subjects.columns]]]
    table = table.merge(meta, on=keys, how="left", validate="one_to_one")
    table.insert(table.columns.get_loc("target") + 1, "split", split)
    if len(table) != len(subjects):
        what = "subject and session" if len(keys) > 1 else "subject"
        raise RuntimeError(
            f"predictions must cover every {split} {what}, got {len(table)} of {len(subjects)}"
        )
    return table


def _predict_records(model: pl.LightningModule, loader: Any,
                     accelerator: str = "auto") -> list[dict[str, Any]]:
    """Per-subject records of one loader, in one process on one device (also inside DDP)."""
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    return flatten_predictions(trainer.predict(model, dataloaders=loader) or [])


def train_and_evaluate(
    cfg: DictConfig | str,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    callbacks: list[pl.Callback] | None = None,
) -> RunResult:
    """Fit, score validation and test once with the best checkpoint, write the run folder.

    Parameters
    ----------
    cfg
        Config (or preset name). ``system.run_dir`` names the run folder unless
        ``run_dir`` is given.
    run_dir
        Where everything goes (config, splits, checkpoints, logs, predictions,
        ``metrics.json``).
    resume
        ``"last"`` or a checkpoint path to continue an interrupted run.
    overwrite
        Allow writing into a run folder that already holds a finished run.
    callbacks
        Extra Lightning callbacks for the fit.

    Returns
    -------
    RunResult
        Best checkpoint path, validation and held-out test metrics (computed on
        the predictions of the best checkpoint), fit time. In a multi-process
        run, only global rank 0 writes predictions and ``metrics.json``; the
        other ranks return empty metrics and predictions.
    """
    cfg = load_config(cfg) if isinstance(cfg, str) else cfg.copy()
    run_dir = Path(run_dir if run_dir is not None else cfg.system.run_dir)
    cfg.system.run_dir = str(run_dir)
    if (run_dir / "metrics.json").exists() and resume is None and not overwrite:
        raise FileExistsError(
            f"`run_dir` must not hold a finished run, got {run_dir / 'metrics.json'}; pass "
            "overwrite=True (CLI: a new system.run_dir) or resume='last'"
        )
    pl.seed_everything(int(cfg.system.seed), workers=True, verbose=False)

    dm = MNIDataModule(cfg, run_dir=run_dir)
    # Refuse before training (and before a trainer makes folders): one target class in
    # the train split, or in the val split under an AUROC monitor, a label copy among
    # the clinical columns. trainer.fit checks again through the data module (once).
    dm.check_for_training()
    ckpt_path = _resume_path(resume, run_dir)
    if ckpt_path is not None:
        check_resumable(cfg, ckpt_path, dm.spec)
    model = AlzheimersLightningModule(cfg, spec=dm.spec)
    trainer = create_trainer(cfg, run_dir=run_dir, callbacks=callbacks)

    log = _training_log(run_dir)
    previous = pd.read_csv(log) if ckpt_path and log.is_file() else None
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start

    best = Path(trainer.checkpoint_callback.best_model_path or "")  # type: ignore[union-attr]
    if not best.is_file():
        raise RuntimeError(
            f"training must leave a best checkpoint, got none in {run_dir / 'checkpoints'}; "
            f"was `{cfg.trainer.monitor}` logged?"
        )
    epochs = int(trainer.current_epoch)
    if not trainer.is_global_zero:
        return RunResult(run_dir, best, {}, {}, fit_seconds, epochs,
                         global_rank=int(trainer.global_rank))

    best_model = load_checkpoint(best)
    predictions: dict[str, pd.DataFrame] = {}
    for split in ("val", "test"):
        subjects = dm.splits[split]
        if len(subjects) == 0:
            continue
        records = _predict_records(best_model, dm.split_dataloader(split),
                                   str(cfg.trainer.accelerator))
        table = _predictions_table(records, subjects, split)
        out = run_dir / "predictions" / f"{split}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        predictions[split] = table

    threshold = float(cfg.optim.threshold)
    val_metrics = binary_metrics(predictions["val"], threshold) if "val" in predictions else {}
    test_metrics = binary_metrics(predictions["test"], threshold) if "test" in predictions else {}
    summary: dict[str, Any] = {
        "val": val_metrics,
        "test": test_metrics,
        "threshold": threshold,
        "best_checkpoint": _relative(best, run_dir),
        "epochs": epochs,
        "fit_seconds": round(fit_seconds, 1),
        "n_subjects": {name: subject_count(table) for name, table in dm.splits.items()},
        "preset": cfg.preset,
    }
    if dm.cohort is not None and dm.cohort.has_sessions:
        summary["n_sessions"] = {name: len(table) for name, table in dm.splits.items()}
        summary["eval_sessions"] = str(cfg.data.eval_sessions)
    if "val" in predictions:
        try:
            summary["youden_threshold_val"] = youden_threshold(predictions["val"])
        except ValueError:
            summary["youden_threshold_val"] = None
    write_metrics_json(run_dir, summary, merge=False)
    _restore_log_before_resume(run_dir, previous)
    return RunResult(
        run_dir=run_dir,
        best_checkpoint=best,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        fit_seconds=fit_seconds,
        epochs=epochs,
        predictions=predictions,
    )


def predict_manifest(
    ckpt: str | Path, manifest: str | Path, out: str | Path | None = None,
    accelerator: str = "auto", cache_dir: str | Path | None = None,
    accept_flagged: bool = False,
) -> pd.DataFrame:
    """Score every subject of a manifest with a checkpoint; optionally write a CSV.

    The checkpoint carries the config and the input spec fitted at training (grid,
    normalization, clinical imputation and scaling), so nothing else is needed.
    Targets in the manifest are optional and copied through. One row per manifest row
    (per subject, or per subject and session with a ``session_id`` column, which the
    table then carries). Scores are computed on
    ``accelerator`` (Lightning's ``auto``: a GPU when there is one), on one device.
    ``out`` may not be the manifest, the checkpoint or a directory
    (:class:`~gazimed_lab.paths.OutputPathError`, raised before any work); it is
    written through a temporary file, then renamed. Sessions are ordered as at training
    (``data.session_order_column``); images flagged as probably not in MNI space stop the
    scoring unless ``accept_flagged`` (:class:`~gazimed_lab.data.predict.PredictDataModule`).
    """
    if out is not None:  # before any work: never overwrite an input
        out = check_not_input(out, {"manifest": manifest, "checkpoint": ckpt})
    model = load_checkpoint(ckpt)
    data = model.cfg.data
    dm = PredictDataModule(
        model.spec, manifest, cache_dir=cache_dir if cache_dir is not None else data.cache_dir,
        batch_size=int(data.batch_size), num_workers=int(data.num_workers),
        session_order_column=data.session_order_column, accept_flagged=accept_flagged,
    )
    records = _predict_records(model, dm.predict_dataloader(), accelerator)
    table = _predictions_table(records, dm.subjects, "predict")
    if out is not None:  # temporary file, then rename: no half-written CSV
        atomic_write(out, lambda tmp: table.to_csv(tmp, index=False), "predictions")
    return table
