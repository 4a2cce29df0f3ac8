"""`gazimed-lab cv`: every fold trained into one run folder, resumable, pooled over subjects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
from conftest import SMALL, make_tiny_cohort

from gazimed_lab.cli import main
from gazimed_lab.config import load_config
from gazimed_lab.cv import run_cv
from gazimed_lab.evaluation import binary_metrics
from gazimed_lab.evaluation.cv import fold_dirs, pooled_oof, summarize_cv
from gazimed_lab.pipeline import run_notebook


class Killed(RuntimeError):
    """Stands for a kill: raised when fold 1 starts its second epoch."""


class KillFoldOne(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if Path(trainer.default_root_dir).name == "1" and trainer.current_epoch == 1:
            raise Killed("killed during fold 1")


def _config(root: Path) -> Any:
    manifest = make_tiny_cohort(root / "cohort", n=18)
    return load_config("cpu-demo", [f"data.manifest={manifest}",
                                    f"data.cache_dir={root / 'cache'}",
                                    "trainer.max_epochs=2", *SMALL])


@pytest.fixture(scope="module")
def resumed_cv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-fold cv killed during fold 1 (after its first epoch), then the same call again."""
    root = tmp_path_factory.mktemp("cv")
    cfg, run = _config(root), root / "cv"
    with pytest.raises(Killed):
        run_cv(cfg, 2, run_dir=run, n_boot=50, callbacks=[KillFoldOne()])
    state = json.loads((run / "cv_state.json").read_text())
    fold0 = run / "folds" / "0"
    before = {"finished": dict(state["finished"]),
              "fold1_last": (run / "folds" / "1" / "checkpoints" / "last.ckpt").is_file(),
              "fold1_done": (run / "folds" / "1" / "metrics.json").is_file(),
              "fold0_mtime": (fold0 / "metrics.json").stat().st_mtime_ns,
              "fold0_best": (fold0 / "checkpoints" / "best.ckpt").read_bytes()}
    result = run_cv(cfg, 2, run_dir=run, n_boot=50)
    return {"cfg": cfg, "run": run, "before": before, "result": result}


@pytest.mark.slow
def test_a_killed_cv_run_continues_with_the_unfinished_fold(resumed_cv: dict[str, Any]) -> None:
    before, run, result = resumed_cv["before"], resumed_cv["run"], resumed_cv["result"]
    assert list(before["finished"]) == ["0"] and before["fold1_last"] and not before["fold1_done"]
    assert result.actions == {0: "kept", 1: "resumed"}
    fold0 = run / "folds" / "0"
    assert (fold0 / "metrics.json").stat().st_mtime_ns == before["fold0_mtime"]  # not retrained
    assert (fold0 / "checkpoints" / "best.ckpt").read_bytes() == before["fold0_best"]
    log = pd.read_csv(run / "folds" / "1" / "logs" / "csv" / "metrics.csv")
    assert set(log["epoch"].dropna().astype(int)) == {0, 1}  # epoch 0 from before the kill
    for name in ("config.yaml", "folds.csv", "metrics.json", "predictions/oof.csv",
                 "predictions/test_ensemble.csv", "predictions/test_folds.csv",
                 "figures/cv_folds.png"):
        assert (run / name).is_file(), name
    again = run_cv(resumed_cv["cfg"], 2, run_dir=run, n_boot=50)  # finished: nothing trains
    assert again.actions == {0: "kept", 1: "kept"}
    assert again.summary.metrics["oof"] == pytest.approx(result.summary.metrics["oof"],
                                                          nan_ok=True)


@pytest.mark.slow
def test_pooled_out_of_fold_scores_each_non_test_subject_once(resumed_cv: dict[str, Any]
                                                              ) -> None:
    run, summary = resumed_cv["run"], resumed_cv["result"].summary
    splits = {k: {s: pd.read_csv(run / "folds" / str(k) / "splits" / f"{s}.csv")["subject_id"]
                  for s in ("train", "val", "test")} for k in (0, 1)}
    oof = pd.read_csv(run / "predictions" / "oof.csv")
    assert oof["subject_id"].is_unique and set(oof["split"]) == {"oof"}
    everyone = set(pd.read_csv(resumed_cv["cfg"].data.manifest)["subject_id"])
    test = set(splits[0]["test"])
    assert set(splits[1]["test"]) == test  # one held-out test split for every fold
    assert set(oof["subject_id"]) == everyone - test and len(oof) == len(everyone) - len(test)
    for k in (0, 1):  # fold k's rows are its validation split, scored by its own model
        rows = oof[oof["fold"] == k]
        assert set(rows["subject_id"]) == set(splits[k]["val"])
        assert not set(rows["subject_id"]) & set(splits[k]["train"])
        val = pd.read_csv(run / "folds" / str(k) / "predictions" / "val.csv")
        assert np.allclose(rows.set_index("subject_id")["score"].loc[val["subject_id"]],
                           val["score"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["oof"]["auroc"] == pytest.approx(binary_metrics(oof)["auroc"])
    assert metrics["n_subjects"] == {"oof": len(everyone) - len(test), "test": len(test)}
    low, high = metrics["oof_ci"]["auroc"]
    assert low <= metrics["oof"]["auroc"] <= high
    ensemble = pd.read_csv(run / "predictions" / "test_ensemble.csv").set_index("subject_id")
    per_fold = [pd.read_csv(run / "folds" / str(k) / "predictions" / "test.csv")
                .set_index("subject_id")["score"] for k in (0, 1)]
    assert set(ensemble.index) == test and (ensemble["n_models"] == 2).all()
    assert np.allclose(ensemble["score"], (per_fold[0] + per_fold[1]).loc[ensemble.index] / 2)
    folds = pd.read_csv(run / "folds.csv")
    val_auroc = folds.loc[folds["split"] == "val", "auroc"].to_numpy()
    assert metrics["val_folds"]["auroc"]["mean"] == pytest.approx(val_auroc.mean())
    assert metrics["val_folds"]["auroc"]["sd"] == pytest.approx(val_auroc.std(ddof=1))
    assert "test (ensemble of folds)" in summary.text() and "± " in summary.text()


@pytest.mark.slow
def test_cv_folder_with_other_parameters_and_cli_errors(resumed_cv: dict[str, Any],
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    run = resumed_cv["run"]
    with pytest.raises(FileExistsError, match=r"another config or number of folds \(folds 2; "
                       r".*continue it with `gazimed-lab cv --config .*config.yaml --folds 2 "
                       r"--run-dir .*`, or restart it with .*--folds 3 .*--overwrite`"):
        run_cv(resumed_cv["cfg"], 3, run_dir=run)
    other = resumed_cv["cfg"].copy()
    other.optim.learning_rate = 1e-2
    with pytest.raises(FileExistsError, match=r"another config"):
        run_cv(other, 2, run_dir=run)
    args = ["cv", "--config", str(run / "config.yaml"), "--folds", "2", "--run-dir", str(run),
            "--n-boot", "20"]
    assert main(args) == 0  # finished: the summary again, no training
    printed = capsys.readouterr().out
    assert "out-of-fold (pooled)" in printed and "fold 1/2: kept" in printed
    assert main([*args[:-2], "data.fold=1"]) == 2
    assert "`cv` sets data.n_folds and data.fold itself" in capsys.readouterr().err
    assert main(["cv", "--config", "cpu-demo", "--folds", "1", "--manifest", "m.csv",
                 "--run-dir", str(tmp_path / "x")]) == 2
    assert "`--folds` must be an integer >= 2, got 1" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "metrics.json").write_text("{}")  # e.g. a training run folder
    with pytest.raises(FileExistsError, match=r"must be empty or a cv run folder"):
        run_cv(resumed_cv["cfg"], 2, run_dir=tmp_path / "busy")


@pytest.mark.slow
@pytest.mark.notebooks
def test_notebook_03_shows_a_cv_run(resumed_cv: dict[str, Any], tmp_path: Path) -> None:
    run = resumed_cv["run"]
    shutil.copytree(run / "folds" / "0", tmp_path / "run")  # a training run for the dashboard
    out = run_notebook("03_metrics_dashboard", tmp_path / "run",
                       {"cv_dir": str(run), "n_boot": 20})
    text = out.read_text()
    assert "out-of-fold (pooled)" in text and "test (ensemble of folds)" in text
    for name in ("dash_cv_folds.png", "dash_cv_roc.png"):
        assert (tmp_path / "run" / "figures" / name).is_file()


def _fake_fold(folder: Path, val: list[str], test: list[str]) -> None:
    (folder / "predictions").mkdir(parents=True)
    for split, ids in (("val", val), ("test", test)):
        pd.DataFrame({"subject_id": ids, "target": [0.1, 0.9][: len(ids)] * (len(ids) // 2),
                      "score": 0.5}).to_csv(folder / "predictions" / f"{split}.csv", index=False)
    (folder / "metrics.json").write_text("{}")


def test_a_subject_in_two_validation_folds_is_named(tmp_path: Path) -> None:
    _fake_fold(tmp_path / "folds" / "0", ["a", "b"], ["t1", "t2"])
    _fake_fold(tmp_path / "folds" / "1", ["b", "c"], ["t1", "t2"])
    with pytest.raises(ValueError, match=r"`out-of-fold predictions` must hold each subject in "
                       r"one fold, got 1 subjects in several, e.g. `b` in folds 0 and 1"):
        pooled_oof(fold_dirs(tmp_path, 2))
    _fake_fold(tmp_path / "other" / "folds" / "0", ["a", "b"], ["t1", "t2"])
    _fake_fold(tmp_path / "other" / "folds" / "1", ["c", "d"], ["t1", "t3"])
    with pytest.raises(ValueError, match=r"`test split` must be the same for every fold, got 2 "
                       r"subjects differing between folds 0 and 1"):
        summarize_cv(tmp_path / "other", 2, n_boot=10, write=False)
    (tmp_path / "other" / "folds" / "1" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"`fold 1` must be finished, got no metrics.json"
                       r".*rerun the same `gazimed-lab cv` command"):
        fold_dirs(tmp_path / "other", 2)
    with pytest.raises(FileNotFoundError, match=r"`cv run folder` must hold cv_state.json"):
        fold_dirs(tmp_path / "other")
