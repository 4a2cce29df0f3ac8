"""End to end on the embedded cohort: fit, test the best checkpoint, predict, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA_SAMPLES, cohort_config

from gazimed_lab.cli import main
from gazimed_lab.runner import load_checkpoint, predict_manifest, train_and_evaluate

TINY = [
    "trainer.max_epochs=2",
    "model.embed_dim=12",
    "model.fusion_dim=32",
    "model.clinical_hidden=[32]",
    "model.clinical_out_dim=16",
    "model.head_hidden=[16]",
    "data.augment=false",
    "trainer.enable_progress_bar=false",
]


def _cfg(tmp_path: Path, *extra: str):
    return cohort_config(DATA_SAMPLES / "manifest.csv", tmp_path, *TINY, *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runner")
    return train_and_evaluate(_cfg(tmp)), tmp


@pytest.mark.slow
def test_fit_test_predict_writes_the_run_folder(trained):
    result, _ = trained
    run = result.run_dir
    for rel in ("config.yaml", "environment.txt", "splits/train.csv", "splits/val.csv",
                "splits/test.csv", "predictions/val.csv", "predictions/test.csv",
                "metrics.json", "checkpoints/last.ckpt"):
        assert (run / rel).is_file(), rel
    assert result.best_checkpoint.is_file()
    assert result.best_checkpoint.parent == run / "checkpoints"
    assert list((run / "logs").rglob("metrics.csv")), "CSV logs must be written"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["test"]["n"] == len(pd.read_csv(run / "splits" / "test.csv"))
    assert 0.0 <= summary["test"]["mae"] <= 1.0
    test = pd.read_csv(run / "predictions" / "test.csv")
    assert test["score"].between(0, 1).all()
    assert set(test["subject_id"]) == set(pd.read_csv(run / "splits" / "test.csv")["subject_id"])
    # The held-out subjects are not in the training split.
    train_ids = set(pd.read_csv(run / "splits" / "train.csv")["subject_id"])
    assert not train_ids & set(test["subject_id"])


@pytest.mark.slow
def test_checkpoint_alone_reproduces_the_predictions(trained, tmp_path):
    result, _ = trained
    test = pd.read_csv(result.run_dir / "predictions" / "test.csv")
    # A manifest of the test subjects without targets: prediction needs only the checkpoint.
    manifest = pd.read_csv(DATA_SAMPLES / "manifest.csv")
    subset = manifest[manifest["subject_id"].isin(test["subject_id"])].drop(columns=["target"])
    subset["mri"] = [str(DATA_SAMPLES / p) for p in subset["mri"]]
    subset["pet"] = [str(DATA_SAMPLES / p) if isinstance(p, str) else "" for p in subset["pet"]]
    subset.to_csv(tmp_path / "new.csv", index=False)
    scored = predict_manifest(result.best_checkpoint, tmp_path / "new.csv", tmp_path / "out.csv")
    merged = test.merge(scored, on="subject_id", suffixes=("", "_new"))
    assert len(merged) == len(test)
    np.testing.assert_allclose(merged["score"], merged["score_new"], atol=1e-6)
    assert merged["target_new"].isna().all()
    assert (tmp_path / "out.csv").is_file()


@pytest.mark.slow
def test_checkpoint_carries_config_and_input_spec(trained):
    result, _ = trained
    model = load_checkpoint(result.best_checkpoint)
    assert model.spec.grid.name == "demo_4mm" and model.spec.img_size == (40, 48, 40)
    assert model.spec.fitted and model.spec.n_features == 118
    assert model.get_model_info()["img_size"] == [40, 48, 40]
    assert model.cfg.preset == "cpu-demo"


@pytest.mark.slow
def test_finished_run_is_not_clobbered(trained):
    _, tmp = trained
    with pytest.raises(FileExistsError, match=r"must not hold a finished run.*overwrite"):
        train_and_evaluate(_cfg(tmp))


@pytest.mark.slow
def test_cli_train_then_predict(tmp_path, capsys):
    code = main(["train", "--config", "cpu-demo",
                 f"data.manifest={DATA_SAMPLES / 'manifest.csv'}",
                 f"data.cache_dir={tmp_path / 'cache'}", f"system.run_dir={tmp_path / 'run'}",
                 *[t.replace("max_epochs=2", "max_epochs=1") for t in TINY]])
    assert code == 0
    assert "auroc" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ckpt = tmp_path / "run" / summary["best_checkpoint"]
    out = tmp_path / "scores.csv"
    assert main(["predict", "--ckpt", str(ckpt), "--manifest",
                 str(DATA_SAMPLES / "manifest.csv"), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(pd.read_csv(DATA_SAMPLES / "manifest.csv"))


def test_cli_reports_bad_config_key_without_traceback(capsys):
    assert main(["train", "--config", "cpu-demo", "trainer.max_epoch=1"]) == 2
    assert "did you mean `trainer.max_epochs`" in capsys.readouterr().err


def test_cli_predict_missing_checkpoint(tmp_path, capsys):
    code = main(["predict", "--ckpt", str(tmp_path / "nope.ckpt"), "--manifest",
                 str(DATA_SAMPLES / "manifest.csv"), "--out", str(tmp_path / "o.csv")])
    assert code == 2
    assert "nope.ckpt" in capsys.readouterr().err


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results(tmp_path):
    results = []
    for name in ("a", "b"):
        cfg = _cfg(tmp_path / name, "trainer.max_epochs=1", "data.augment=true",
                   "trainer.deterministic=true")
        result = train_and_evaluate(cfg)
        summary = json.loads((result.run_dir / "metrics.json").read_text())
        summary.pop("fit_seconds")
        test = pd.read_csv(result.run_dir / "predictions" / "test.csv")
        results.append((summary["test"], summary["val"], test))
    assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
    pd.testing.assert_frame_equal(results[0][2], results[1][2])
    # The splits and the saved config name the same subjects and settings.
    for split in ("train", "val", "test"):
        a = pd.read_csv(tmp_path / "a" / "run" / "splits" / f"{split}.csv")
        b = pd.read_csv(tmp_path / "b" / "run" / "splits" / f"{split}.csv")
        pd.testing.assert_frame_equal(a, b)
    assert "git commit:" in (tmp_path / "a" / "run" / "environment.txt").read_text()


@pytest.mark.slow
def test_resume_last_continues_from_the_saved_epoch(tmp_path):
    first = train_and_evaluate(_cfg(tmp_path, "trainer.max_epochs=1"))
    saved = torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0
    resumed = train_and_evaluate(_cfg(tmp_path, "trainer.max_epochs=3"), resume="last")
    assert first.epochs == 1 and resumed.epochs == 3  # epochs completed
    after = torch.load(resumed.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["epoch"] == 2
    assert after["global_step"] == 3 * saved["global_step"]  # continued, not restarted
    log = pd.read_csv(next((resumed.run_dir / "logs").rglob("metrics.csv")))
    # The log keeps the epochs before the interruption (Lightning's logger deletes them).
    assert {0, 1, 2} <= set(log["epoch"].dropna().astype(int))
    assert log["val/auroc"].notna().sum() == 3


def test_resume_last_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`--resume last` must find a last checkpoint"):
        train_and_evaluate(_cfg(tmp_path), resume="last")


@pytest.mark.slow
def test_prediction_files_keep_the_manifest_target_decimals(trained):
    result, _ = trained
    written = pd.read_csv(result.run_dir / "predictions" / "test.csv", dtype=str)
    manifest = pd.read_csv(DATA_SAMPLES / "manifest.csv", dtype=str).set_index("subject_id")
    assert len(written) > 0
    for sid, text in zip(written["subject_id"], written["target"]):
        # float32 batch copies would write e.g. 0.18340000510215759 for 0.1834
        assert float(text) == float(manifest.loc[sid, "target"]) and len(text) <= 8, text
