"""``create_trainer(cfg)``: a Lightning Trainer with the run folder, callbacks and loggers.

Run folder (written by global rank 0 only)::

    run_dir/config.yaml        the resolved config (load_config reads it back)
    run_dir/environment.txt    python/torch/CUDA versions, git commit, pip freeze
    run_dir/checkpoints/       epoch=03-val_auroc=0.812.ckpt (top k), last.ckpt,
                               best.ckpt (link or copy, written when fit ends)
    run_dir/logs/csv/metrics.csv, run_dir/logs/tensorboard/
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import platform
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from gazimed_lab.config import load_config, save_config

# Lightning 2.6 warns on every batch about its own use of torch's pytree API: not ours.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

__all__ = [  # noqa: F822 (DEFAULT_TRAINING_CONFIG comes from the module __getattr__)
    "DEFAULT_TRAINING_CONFIG",
    "AtomicCheckpointIO",
    "BestCheckpointLink",
    "TrainerFactory",
    "best_checkpoint",
    "checkpoint_filename",
    "create_trainer",
    "environment_report",
    "resolve_precision",
]


def resolve_precision(precision: str | None, accelerator: str = "auto") -> str:
    """Lightning precision: ``None`` means bf16-mixed / 16-mixed on CUDA, 32-true otherwise."""
    if precision is not None:
        return str(precision)
    wants_cuda = accelerator in ("auto", "gpu", "cuda")
    if wants_cuda and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def checkpoint_filename(monitor: str) -> str:
    """ModelCheckpoint file pattern, e.g. ``epoch=03-val_auroc=0.812`` for ``val/auroc``."""
    return "epoch={epoch:02d}-" + monitor.replace("/", "_") + "={" + monitor + ":.3f}"


def environment_report() -> str:
    """Python, torch, CUDA, platform, git commit and ``pip freeze`` (importlib.metadata)."""
    lines = [
        f"python: {sys.version.split()[0]} ({sys.executable})",
        f"platform: {platform.platform()}",
        f"torch: {torch.__version__} (cuda {torch.version.cuda}, "
        f"available {torch.cuda.is_available()})",
        f"pytorch_lightning: {pl.__version__}",
        f"git commit: {_git_commit()}",
        "",
        "# pip freeze",
    ]
    packages = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.add(f"{name}=={dist.version}")
    lines += sorted(packages, key=str.lower)
    return "\n".join(lines) + "\n"


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if out.returncode != 0:
        return "unknown (not a git checkout or no commits)"
    return out.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name beside the final one, then renamed.

    Lightning writes through a temporary file in the system temp folder and moves it
    into place: when that folder is on another file system the move is a copy, and a
    full disk (or a kill) during it leaves a truncated file under the checkpoint's
    name. Here the rename is always within the run folder (atomic), a failed write
    leaves no file behind, and the error names the path and the cause.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see the class)."""
        from gazimed_lab.paths import atomic_write

        if storage_options is not None:
            raise TypeError(f"`storage_options` must be None for local checkpoints, got "
                            f"{storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), what="checkpoint")


class BestCheckpointLink(Callback):
    """Make ``checkpoints/best.ckpt`` point at the best checkpoint when fit ends (rank 0).

    A relative symlink where the file system allows it, else a copy.
    """

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint

    def _link(self, trainer: pl.Trainer) -> None:
        best = self.checkpoint.best_model_path
        if not trainer.is_global_zero or not best or not Path(best).is_file():
            return
        best_path = Path(best)
        target = best_path.parent / "best.ckpt"
        if target.is_symlink() or target.exists():
            target.unlink()
        try:
            target.symlink_to(best_path.name)
        except OSError:
            shutil.copy2(best_path, target)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Link the best checkpoint."""
        self._link(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        """Link the best checkpoint so far when training is interrupted."""
        self._link(trainer)


_SCORE = re.compile(r"=(?P<score>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))(?:-v\d+)?\.ckpt$")


def best_checkpoint(run_dir: str | Path, mode: str | None = None) -> Path:
    """Path of the best checkpoint of a run folder.

    ``checkpoints/best.ckpt`` when present; otherwise the top-k file with the best
    score in its name (``mode`` max/min, default from ``run_dir/config.yaml``);
    otherwise ``last.ckpt``.

    Raises
    ------
    FileNotFoundError
        When the run folder has no checkpoint.
    """
    folder = Path(run_dir) / "checkpoints"
    best = folder / "best.ckpt"
    if best.is_file():
        return best
    if mode is None:
        config = Path(run_dir) / "config.yaml"
        mode = load_config(config).trainer.monitor_mode if config.is_file() else "max"
    scored = []
    for path in folder.glob("*.ckpt") if folder.is_dir() else []:
        match = _SCORE.search(path.name)
        if match and not path.name.startswith("last"):
            score = float(match.group("score"))
            if math.isfinite(score):
                scored.append((score if mode == "max" else -score, path))
    if scored:
        return max(scored, key=lambda item: item[0])[1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(
        f"run folder must hold a checkpoint in `checkpoints/`, got none ({folder}); "
        "train first with create_trainer(cfg).fit(...)"
    )


@rank_zero_only
def _write_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "environment.txt").write_text(environment_report())


def _loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    logs = run_dir / "logs"
    loggers: list[Any] = [
        CSVLogger(save_dir=str(logs), name="csv", version=""),
        TensorBoardLogger(save_dir=str(logs), name="tensorboard", version="",
                          default_hp_metric=False),
    ]
    if cfg.trainer.wandb:
        if importlib.util.find_spec("wandb") is None:
            warnings.warn("trainer.wandb is true but wandb is not installed; using CSV and "
                          "TensorBoard only (pip install wandb)", stacklevel=3)
        else:
            from pytorch_lightning.loggers import WandbLogger

            loggers.append(WandbLogger(project="gazimed-lab", name=run_dir.name,
                                       save_dir=str(logs)))
    return loggers


def create_trainer(cfg: Any, run_dir: str | Path | None = None, **overrides: Any) -> pl.Trainer:
    """Build a ``pl.Trainer`` configured from ``cfg.trainer`` with the run folder prepared.

    Parameters
    ----------
    cfg
        The config (``load_config(...)`` or ``model.cfg``; a plain dict works too).
        It is checked and saved as ``run_dir/config.yaml``.
    run_dir
        Run folder; default ``cfg.system.run_dir``.
    **overrides
        Extra ``pl.Trainer`` arguments that win over the config (e.g.
        ``fast_dev_run=True``, ``logger=False``); ``callbacks`` are appended.

    Returns
    -------
    pytorch_lightning.Trainer
        With ModelCheckpoint (monitor ``trainer.monitor``, top-k, last, readable
        names), EarlyStopping, LearningRateMonitor, TQDM progress bar,
        CSV + TensorBoard (+ W&B) loggers, precision, accumulation and clipping.
    """
    from gazimed_lab.models.lightning import resolve_config

    cfg = resolve_config(cfg)  # a checked copy
    t = cfg.trainer
    run_dir = Path(run_dir if run_dir is not None else cfg.system.run_dir)
    if cfg.system.num_threads:
        torch.set_num_threads(int(cfg.system.num_threads))
    _write_run_folder(cfg, run_dir)
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename=checkpoint_filename(t.monitor),
        monitor=t.monitor,
        mode=t.monitor_mode,
        save_top_k=t.save_top_k,
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks: list[Callback] = [checkpoint, BestCheckpointLink(checkpoint),
                                 LearningRateMonitor(logging_interval="step")]
    if t.early_stopping:
        callbacks.append(EarlyStopping(
            monitor=t.monitor, mode=t.monitor_mode, patience=t.early_stopping_patience,
            min_delta=t.early_stopping_min_delta, check_finite=False,
        ))
    if t.enable_progress_bar:
        callbacks.append(TQDMProgressBar())
    callbacks += list(overrides.pop("callbacks", []) or [])
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm if t.gradient_clip_val else None,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        # No sync_batchnorm: the network's SubjectStandardize all-reduces its batch
        # statistics itself (torch's SyncBatchNorm is GPU-only and would replace it).
        enable_progress_bar=t.enable_progress_bar,
        logger=_loggers(cfg, run_dir),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    for key in ("limit_train_batches", "limit_val_batches"):
        value = t[key]
        if value is not None:  # > 1: a number of batches; <= 1.0: a fraction
            kwargs[key] = int(value) if value > 1 and float(value).is_integer() else value
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


class TrainerFactory:
    """The reference design's trainer factory, over :func:`create_trainer`.

    Examples
    --------
    >>> trainer = TrainerFactory.create_trainer(                  # doctest: +SKIP
    ...     config=DEFAULT_TRAINING_CONFIG, experiment_name="alzheimers_detection_v1")
    >>> trainer.fit(model, train_dataloader, val_dataloader)   # doctest: +SKIP
    """

    @staticmethod
    def create_trainer(config: Any = None, experiment_name: str | None = None,
                       **overrides: Any) -> pl.Trainer:
        """Build a trainer for ``config`` (default: the ``default`` preset).

        ``experiment_name`` names the run folder: ``runs/<experiment_name>`` beside
        ``system.run_dir`` (its parent folder); without it, ``system.run_dir``.
        ``overrides`` are passed to :func:`create_trainer`.
        """
        cfg = load_config("default") if config is None else config
        run_dir = None
        if experiment_name is not None:
            name = str(experiment_name)
            if not name or Path(name).name != name or name in (".", ".."):
                raise ValueError(
                    f"`experiment_name` must be a plain folder name, got {experiment_name!r}"
                )
            run_dir = Path(str(cfg["system"]["run_dir"])).parent / name
        return create_trainer(cfg, run_dir=run_dir, **overrides)


def __getattr__(name: str) -> Any:
    # DEFAULT_TRAINING_CONFIG: a fresh copy of the ``default`` preset on every access, so
    # that editing one does not change the next.
    if name == "DEFAULT_TRAINING_CONFIG":
        return load_config("default")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
