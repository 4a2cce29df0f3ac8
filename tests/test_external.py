"""External evaluation (``gazimed-lab evaluate``) and the paired bootstrap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL as SMALL_MODEL
from conftest import cohort_config, make_tiny_cohort

from gazimed_lab.cli import main
from gazimed_lab.evaluation import binary_metrics, bootstrap_ci, paired_bootstrap
from gazimed_lab.evaluation.external import (
    ORACLE_REFERENCE,
    evaluate_external,
    parse_named,
)
from gazimed_lab.evaluation.oracle import oracle_predictions, oracle_table

REPO = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO / "data_samples"
PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------ paired bootstrap
def scored(scores: list[float], targets: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": [f"s{i}" for i in range(len(scores))],
                         "target": targets, "score": scores})


def test_paired_bootstrap_of_identical_rankings_is_exactly_zero() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, 60)
    a = scored(list(np.clip(target + rng.normal(0, 0.3, 60), 0, 1)), list(target))
    for b in (a.copy(), a.assign(score=a["score"] ** 2)):  # same ranking, same AUROC
        res = paired_bootstrap(a, b, n_boot=300, seed=1)
        assert (res.difference, res.low, res.high, res.mean) == (0.0, 0.0, 0.0, 0.0)
        assert res.p_value == 1.0 and res.n == 60 and res.n_skipped == 0
    # Unpaired, the same tables look uncertain: each alone has a wide interval.
    alone = bootstrap_ci(a, "auroc", n_boot=300, seed=1)
    assert alone.high - alone.low > 0.1


def test_paired_bootstrap_known_case_by_hand() -> None:
    # One positive (p) and two negatives. Stratified resampling keeps p and draws the
    # negatives with replacement: {n1, n1} (1/4), {n1, n2} / {n2, n1} (1/2), {n2, n2} (1/4).
    # a scores n1 below p and n2 above: AUROC 1, 0.5, 0 on those. b is perfect: 1.
    # a - b: 0 (1/4), -0.5 (1/2), -1 (1/4); mean -0.5; 2.5 / 97.5 % quantiles -1 and 0.
    a = scored([0.9, 0.1, 0.95], [0.9, 0.1, 0.2])
    b = scored([0.9, 0.1, 0.2], [0.9, 0.1, 0.2])
    res = paired_bootstrap(a, b, n_boot=1000, seed=3)
    assert res.difference == pytest.approx(-0.5)  # full data: a 0.5, b 1
    assert (res.low, res.high) == (-1.0, 0.0)
    assert res.mean == pytest.approx(-0.5, abs=0.045)  # 4 SE of 1000 draws (SD 0.354)
    # Share of resamples <= 0 is 1, >= 0 is about 1/4: p about 2 * 1/4.
    assert res.p_value == pytest.approx(0.5, abs=0.11)  # 4 SE
    swapped = paired_bootstrap(b, a, n_boot=1000, seed=3)
    assert (swapped.difference, swapped.low, swapped.high) == (0.5, 0.0, 1.0)


def test_paired_bootstrap_pairs_subjects_by_id_not_by_row() -> None:
    a = scored([0.9, 0.1, 0.95, 0.3], [0.9, 0.1, 0.2, 0.8])
    b = a.iloc[::-1].reset_index(drop=True)  # same table, rows reversed
    res = paired_bootstrap(a, b, n_boot=200)
    assert (res.difference, res.low, res.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_refuses_unmatched_tables() -> None:
    a = scored([0.9, 0.1, 0.95], [0.9, 0.1, 0.2])
    with pytest.raises(ValueError, match="same subjects"):
        paired_bootstrap(a, a.iloc[:2], n_boot=10)
    with pytest.raises(ValueError, match=r"`target` must agree.*s1"):
        paired_bootstrap(a, a.assign(target=[0.9, 0.4, 0.2]), n_boot=10)
    with pytest.raises(ValueError, match="unique"):
        paired_bootstrap(pd.concat([a, a]), pd.concat([a, a]), n_boot=10)
    with pytest.raises(ValueError, match="`metric` must be one of"):
        paired_bootstrap(a, a, metric="auc")


# --------------------------------------------------------- evaluate_external
def view_predictions(manifest: Path, views: str) -> pd.DataFrame:
    """The oracle of some views as if it were a model's predictions on the cohort."""
    table = pd.read_csv(manifest, dtype={"subject_id": str})
    preds = oracle_predictions(manifest, views, targets=table)
    preds["diagnosis"] = table["diagnosis"]
    return preds.drop(columns="split")


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A copy of data_samples/ (40 subjects with truth.csv): its manifest."""
    shutil.copytree(DATA_SAMPLES, tmp_path / "cohort")
    return tmp_path / "cohort" / "manifest.csv"


def test_evaluate_predictions_with_truth_writes_metrics_oracle_and_differences(
        samples: Path, tmp_path: Path) -> None:
    mri = view_predictions(samples, "mri")
    clin = view_predictions(samples, "clinical")
    clin_csv = tmp_path / "clin.csv"
    clin.to_csv(clin_csv, index=False)
    out = tmp_path / "eval"
    result = evaluate_external(samples, predictions={"mri_view": mri, "clin_view": clin_csv},
                               out_dir=out, n_boot=60, seed=5)
    summary = result.summary.set_index("model")
    # Each model's point metrics are those of its table.
    for name, table in (("mri_view", mri), ("clin_view", clin)):
        expected = binary_metrics(table)
        for metric in ("auroc", "balanced_accuracy", "mae", "brier"):
            assert summary.loc[name, metric] == pytest.approx(expected[metric])
        assert summary.loc[name, "auroc_low"] <= expected["auroc"] <= summary.loc[
            name, "auroc_high"]
        assert summary.loc[name, "n"] == 40 and summary.loc[name, "kind"] == "predictions"
    # Oracle rows: the oracle on the same subjects; a model that *is* a view's oracle
    # reaches exactly that row.
    oracle = oracle_table(samples, targets=mri)
    got = summary.loc[summary["kind"] == "oracle", "auroc"]
    assert list(got.index) == [f"oracle: {s}" for s in oracle["subset"]]
    assert np.allclose(got.to_numpy(), oracle["auroc"].to_numpy())
    assert summary.loc["oracle: mri", "auroc"] == pytest.approx(summary.loc["mri_view", "auroc"])
    # Differences: the model pair, then each model against the oracle of every input.
    diff = result.differences
    assert [tuple(r) for r in diff[["model_a", "model_b"]].to_numpy()] == [
        ("mri_view", "clin_view"), ("mri_view", f"oracle: {ORACLE_REFERENCE}"),
        ("clin_view", f"oracle: {ORACLE_REFERENCE}")]
    first = diff.iloc[0]
    by_hand = paired_bootstrap(mri, clin, n_boot=60, seed=5)
    assert (first["difference"], first["low"], first["high"]) == pytest.approx(tuple(by_hand))
    assert first["difference"] == pytest.approx(
        summary.loc["mri_view", "auroc"] - summary.loc["clin_view", "auroc"])
    # Files.
    for name in ("metrics.csv", "summary.csv", "differences.csv", "oracle.csv", "report.md",
                 "evaluation.json", "predictions/mri_view.csv", "predictions/clin_view.csv"):
        assert (out / name).is_file(), name
    for name in ("roc", "auroc", "mri_view_calibration", "mri_view_dashboard",
                 "clin_view_calibration", "clin_view_dashboard"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == PNG, name
    long = pd.read_csv(out / "metrics.csv")
    assert set(long["kind"]) == {"predictions", "oracle"}
    assert (long.loc[long["kind"] == "oracle", "metric"] == "auroc").all()
    settings = json.loads((out / "evaluation.json").read_text())
    assert settings["truth"].endswith("truth.csv") and settings["n_boot"] == 60
    assert "oracle: all+demographics" in (out / "report.md").read_text()


def test_evaluate_without_truth_has_no_oracle_rows(samples: Path, tmp_path: Path) -> None:
    mri = view_predictions(samples, "mri")
    (samples.parent / "truth.csv").unlink()
    result = evaluate_external(samples, predictions={"m": mri}, out_dir=tmp_path / "e",
                               n_boot=20, figures=False)
    assert result.oracle is None and list(result.summary["kind"]) == ["predictions"]
    assert result.differences.empty
    assert not (tmp_path / "e" / "oracle.csv").exists()
    assert not (tmp_path / "e" / "figures").exists()


def test_evaluate_refuses_mismatched_models_and_bad_names(samples: Path) -> None:
    mri = view_predictions(samples, "mri")
    with pytest.raises(ValueError, match="at least one model"):
        evaluate_external(samples)
    with pytest.raises(ValueError, match=r"same subjects.*`short`"):
        evaluate_external(samples, predictions={"full": mri, "short": mri.iloc[:30]},
                          n_boot=5)
    with pytest.raises(ValueError, match=r"target.*`shifted`"):
        evaluate_external(samples, predictions={"full": mri, "shifted": mri.assign(
            target=mri["target"] * 0.9)}, n_boot=5)
    with pytest.raises(ValueError, match="model name"):
        evaluate_external(samples, predictions={"a b": mri}, n_boot=5)
    assert parse_named("base=x/preds.csv") == ("base", Path("x/preds.csv"))
    assert parse_named("runs/a/checkpoints/best.ckpt") == (None, Path(
        "runs/a/checkpoints/best.ckpt"))


def test_cli_evaluate_with_predictions_only(samples: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "pet.csv"
    view_predictions(samples, "pet").to_csv(csv, index=False)
    out = tmp_path / "cli"
    code = main(["evaluate", "--manifest", str(samples), "--predictions", f"pet_view={csv}",
                 "--out", str(out), "--n-boot", "20", "--seed", "2", "--no-figures"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pet_view" in printed and "oracle: all" in printed
    summary = pd.read_csv(out / "summary.csv").set_index("model")
    assert summary.loc["pet_view", "auroc"] == pytest.approx(summary.loc["oracle: pet", "auroc"])
    # Input errors: a message, exit code 2, no traceback.
    assert main(["evaluate", "--manifest", str(samples), "--out", str(out)]) == 2
    assert "at least one model" in capsys.readouterr().err
    assert main(["evaluate", "--manifest", str(samples), "--ckpt", str(tmp_path / "no.ckpt"),
                 "--out", str(out)]) == 2
    assert "checkpoint must be an existing file" in capsys.readouterr().err


# ------------------------------------------------------ with a trained model
SMALL = [*SMALL_MODEL, "trainer.max_epochs=1"]


@pytest.mark.slow
def test_cli_evaluate_checkpoints_and_a_baseline_on_an_unseen_cohort(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gazimed_lab.runner import predict_manifest, train_and_evaluate

    train = make_tiny_cohort(tmp_path / "train", seed=0)
    external = make_tiny_cohort(tmp_path / "external", n=18, seed=7)
    result = train_and_evaluate(cohort_config(train, tmp_path, *SMALL))
    ckpt = result.best_checkpoint
    table = pd.read_csv(external)
    rng = np.random.default_rng(1)
    baseline = table[["subject_id", "target"]].assign(
        score=np.clip(table["target"] + rng.normal(0, 0.2, len(table)), 0, 1))
    baseline.to_csv(tmp_path / "baseline.csv", index=False)
    out = tmp_path / "evaluate"
    code = main(["evaluate", "--ckpt", f"a={ckpt}", "--ckpt", f"b={ckpt}", "--manifest",
                 str(external), "--predictions", f"linear={tmp_path / 'baseline.csv'}",
                 "--out", str(out), "--n-boot", "40"])
    assert code == 0, capsys.readouterr().err
    # The checkpoint's predictions are predict_manifest's.
    direct = predict_manifest(ckpt, external)
    written = pd.read_csv(out / "predictions" / "a.csv", dtype={"subject_id": str})
    assert list(written["subject_id"]) == list(direct["subject_id"])
    assert np.allclose(written["score"], direct["score"], atol=1e-6)
    # The same checkpoint twice: paired difference exactly 0 with CI [0, 0].
    diff = pd.read_csv(out / "differences.csv").set_index(["model_a", "model_b"])
    assert tuple(diff.loc[("a", "b"), ["difference", "low", "high"]]) == (0.0, 0.0, 0.0)
    assert ("a", "linear") in diff.index and ("b", "linear") in diff.index
    summary = pd.read_csv(out / "summary.csv").set_index("model")
    assert list(summary["kind"]) == ["checkpoint", "checkpoint", "predictions"]
    assert summary.loc["a", "n"] == 18
    assert (out / "figures" / "a_dashboard.png").read_bytes()[:8] == PNG
