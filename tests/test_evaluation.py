from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from gazimed_lab import evaluation as ev


def make_predictions(n: int = 60, seed: int = 0, noise: float = 0.25) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 1, n)
    score = np.clip(target + rng.normal(0, noise, n), 0, 1)
    return pd.DataFrame({
        "subject_id": [f"sub-{i:03d}" for i in range(n)],
        "target": target.round(4),
        "score": score.round(4),
        "label": (score >= 0.5).astype(int),
        "split": "test",
        "sex": np.where(np.arange(n) % 3 == 0, "F", "M"),
        "site": np.where(np.arange(n) < n // 2, "site0", "site1"),
        "age": 55 + (np.arange(n) % 35),
    })


# --------------------------------------------------------------- read_predictions
def test_read_predictions_reads_a_run_folder(tmp_path: Path):
    df = make_predictions(10)
    (tmp_path / "predictions").mkdir()
    df.drop(columns="split").to_csv(tmp_path / "predictions" / "val.csv", index=False)
    table = ev.read_predictions(tmp_path, split="val")
    assert len(table) == 10
    assert (table["split"] == "val").all()
    assert table["score"].dtype == float


def test_read_predictions_names_file_row_and_column(tmp_path: Path):
    df = make_predictions(6)
    df.loc[3, "score"] = 1.3  # 4th data row
    path = tmp_path / "predictions" / "test.csv"
    path.parent.mkdir()
    df.to_csv(path, index=False)
    with pytest.raises(ev.PredictionsError,
                       match=r"`score` must be in \[0, 1\], got 1.3 \(.*test\.csv, row 4, "
                             r"subject sub-003\)"):
        ev.read_predictions(path)


def test_read_predictions_reports_missing_column_and_bad_values(tmp_path: Path):
    df = make_predictions(5)
    path = tmp_path / "p.csv"
    df.drop(columns="score").to_csv(path, index=False)
    with pytest.raises(ev.PredictionsError, match=r"got no `score` .*p\.csv"):
        ev.read_predictions(path)
    bad = df.copy()
    bad.loc[1, "target"] = np.nan
    with pytest.raises(ev.PredictionsError, match=r"`target` must be in \[0, 1\], got nan "
                                                  r"\(DataFrame, row 2"):
        ev.read_predictions(bad)
    assert ev.read_predictions(bad, require_targets=False)["target"].isna().sum() == 1
    bad = df.copy()
    bad["label"] = [0, 1, 2, 0, 1]
    with pytest.raises(ev.PredictionsError, match=r"`label` must be 0 or 1, got 2 .*row 3"):
        ev.read_predictions(bad)
    bad = df.copy()
    bad["score"] = bad["score"].astype(object)
    bad.loc[4, "score"] = "high"
    with pytest.raises(ev.PredictionsError, match=r"`score` must be in \[0, 1\], got high"):
        ev.read_predictions(bad)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        ev.read_predictions(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"predictions/test\.csv"):
        ev.read_predictions(tmp_path)


# --------------------------------------------------------------- point metrics
def test_binary_metrics_match_scikit_learn():
    df = make_predictions(50, seed=3)
    m = ev.binary_metrics(df, threshold=0.4)
    y = (df["target"] > 0.5).astype(int)
    pred = (df["score"] >= 0.4).astype(int)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, df["score"]))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["mae"] == pytest.approx(np.mean(np.abs(df["target"] - df["score"])))
    assert m["mse"] == pytest.approx(np.mean((df["target"] - df["score"]) ** 2))
    assert m["r2"] == pytest.approx(skm.r2_score(df["target"], df["score"]))
    assert m["pearson"] == pytest.approx(np.corrcoef(df["target"], df["score"])[0, 1])
    assert m["brier"] == pytest.approx(np.mean((df["score"] - y) ** 2))
    assert (m["n"], m["n_pos"]) == (50, int(y.sum()))


def test_single_class_metrics_are_nan_not_errors():
    df = make_predictions(10)
    df["target"] = 0.1
    m = ev.binary_metrics(df)
    assert np.isnan(m["auroc"]) and np.isnan(m["recall"])
    assert m["n_pos"] == 0
    with pytest.raises(ValueError, match="both classes"):
        ev.youden_threshold(df)


def test_confusion_counts_a_hand_made_case():
    df = pd.DataFrame({"subject_id": list("abcde"), "target": [0.1, 0.2, 0.9, 0.8, 0.7],
                       "score": [0.2, 0.6, 0.9, 0.3, 0.5]})
    # score 0.5 at threshold 0.5 is negative: positive means score > threshold (torchmetrics)
    np.testing.assert_array_equal(ev.confusion(df, 0.5), [[1, 1], [2, 1]])


def test_youden_threshold_falls_in_the_gap_of_a_separable_case():
    neg = [0.05, 0.1, 0.2, 0.3, 0.30]
    pos = [0.45, 0.5, 0.7, 0.9]
    df = pd.DataFrame({"subject_id": [f"s{i}" for i in range(9)],
                       "target": [0.0] * 5 + [1.0] * 4, "score": neg + pos})
    thr = ev.youden_threshold(df)
    assert 0.30 < thr < 0.45
    assert thr == pytest.approx(0.375)
    assert ev.binary_metrics(df, thr)["accuracy"] == 1.0


def test_youden_threshold_on_a_hand_computed_case():
    # Sorted scores (truth): .9(1) .7(1) .6(1) .45(0) .35(0) .3(1) .2(0) .1(0);
    # J = TPR - FPR is largest (0.75) when calling >= 0.6 positive.
    df = pd.DataFrame({"subject_id": [f"s{i}" for i in range(8)],
                       "target": [0, 0, 0, 1, 1, 1, 0, 1],
                       "score": [0.1, 0.2, 0.35, 0.3, 0.6, 0.7, 0.45, 0.9]})
    assert ev.youden_threshold(df) == pytest.approx((0.6 + 0.45) / 2)


# --------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_point_and_narrows_with_more_subjects():
    small = ev.bootstrap_ci(make_predictions(40, seed=1), "auroc", n_boot=300, seed=0)
    large = ev.bootstrap_ci(make_predictions(400, seed=1), "auroc", n_boot=300, seed=0)
    for res in (small, large):
        point, low, high = res
        assert low <= point <= high
        assert res.n_skipped == 0
    assert (large.high - large.low) < 0.6 * (small.high - small.low)
    mae = ev.bootstrap_ci(make_predictions(40, seed=1), "mae", n_boot=200)
    assert mae.low <= mae.point <= mae.high


def test_bootstrap_ci_is_reproducible_and_accepts_a_callable():
    df = make_predictions(40)
    assert tuple(ev.bootstrap_ci(df, n_boot=100, seed=5)) == tuple(
        ev.bootstrap_ci(df, n_boot=100, seed=5))
    res = ev.bootstrap_ci(df, lambda t: float(t["score"].mean()), n_boot=100)
    assert res.point == pytest.approx(df["score"].mean())
    with pytest.raises(ValueError, match="`metric` must be one of"):
        ev.bootstrap_ci(df, "nonsense")


def test_bootstrap_skips_and_counts_single_class_resamples():
    df = make_predictions(12, seed=2)
    df["target"] = [0.9] + [0.1] * 11  # one positive subject
    with pytest.warns(RuntimeWarning, match="skipped"):
        res = ev.bootstrap_ci(df, "auroc", n_boot=200, stratified=False)
    # The lone positive is left out of about (11/12)^12 = 35 % of resamples.
    assert 30 < res.n_skipped < 120
    assert np.isfinite(res.low) and res.low <= res.point <= res.high
    strat = ev.bootstrap_ci(df, "auroc", n_boot=200, stratified=True)
    assert strat.n_skipped == 0


def test_bootstrap_resamples_subjects_not_rows():
    df = make_predictions(30)
    doubled = pd.concat([df, df], ignore_index=True)  # every subject has two rows
    a = ev.bootstrap_ci(df, "auroc", n_boot=200, seed=3)
    b = ev.bootstrap_ci(doubled, "auroc", n_boot=200, seed=3)
    assert tuple(a) == pytest.approx(tuple(b))


def test_roc_and_pr_curves_with_bands():
    df = make_predictions(80)
    roc = ev.roc_curve_ci(df, n_boot=100, seed=0)
    y = (df["target"] > 0.5).astype(int)
    assert roc["auroc"] == pytest.approx(skm.roc_auc_score(y, df["score"]))
    assert roc["auroc_low"] <= roc["auroc"] <= roc["auroc_high"]
    assert np.all(roc["tpr_low"] <= roc["tpr_high"])
    assert np.all(np.diff(roc["tpr"]) >= 0) and roc["tpr"][-1] == 1.0
    inside = (roc["tpr"] >= roc["tpr_low"] - 1e-9) & (roc["tpr"] <= roc["tpr_high"] + 1e-9)
    assert inside.mean() > 0.9
    pr = ev.pr_curve_ci(df, n_boot=100, seed=0)
    assert pr["average_precision"] == pytest.approx(skm.average_precision_score(y, df["score"]))
    assert pr["prevalence"] == pytest.approx(y.mean())
    assert np.all(np.diff(pr["precision"]) <= 1e-12)  # interpolated precision never rises


# --------------------------------------------------------------- calibration
def test_calibration_bins_sum_to_n_and_perfect_calibration_has_small_error():
    rng = np.random.default_rng(0)
    n = 20000
    score = rng.uniform(0, 1, n)
    target = (rng.uniform(0, 1, n) < score).astype(float)
    df = pd.DataFrame({"subject_id": np.arange(n).astype(str), "target": target,
                       "score": score})
    table = ev.calibration(df, n_bins=10)
    assert table["count"].sum() == n
    assert list(table["bin"]) == list(range(10))
    assert table.attrs["ece"] < 0.02
    assert np.allclose(table["frac_positive"], table["mean_score"], atol=0.04)
    assert table.attrs["brier"] == pytest.approx(skm.brier_score_loss(target, score))
    over = df.assign(score=np.sqrt(score))  # over-confident in AD
    assert ev.calibration(over).attrs["ece"] > 0.1
    quant = ev.calibration(df, n_bins=5, strategy="quantile")
    assert quant["count"].sum() == n and quant["count"].min() > 0.15 * n


def test_calibration_keeps_empty_bins():
    df = pd.DataFrame({"subject_id": list("abc"), "target": [0, 1, 1], "score": [0.05, 0.95, 1.0]})
    table = ev.calibration(df, n_bins=4)
    assert list(table["count"]) == [1, 0, 0, 2]
    assert np.isnan(table.loc[1, "mean_score"])


# --------------------------------------------------------------- subgroups
def test_subgroup_table_has_correct_n_per_group():
    df = make_predictions(60)
    df.loc[0, "site"] = np.nan
    table = ev.subgroup_metrics(df, age_bands=(0, 65, 75, 200))
    assert table.iloc[0][["group", "value", "n"]].tolist() == ["all", "all", 60]
    for group in ("sex", "age_band", "site"):
        assert table.loc[table["group"] == group, "n"].sum() == 60
    sex = table[table["group"] == "sex"].set_index("value")["n"]
    assert sex.to_dict() == {"F": 20, "M": 40}
    ages = table[table["group"] == "age_band"].set_index("value")["n"]
    expected = pd.cut(df["age"], [0, 65, 75, 200], right=False).value_counts().sort_index()
    assert ages.tolist() == expected.tolist()
    assert list(ages.index) == ["<65", "65-75", "≥75"]
    assert table[(table["group"] == "site") & (table["value"] == "missing")]["n"].item() == 1


def test_subgroup_auroc_is_nan_for_single_class_groups():
    df = make_predictions(40)
    df.loc[df["sex"] == "F", "target"] = 0.2
    table = ev.subgroup_metrics(df, by=("sex",), n_boot=20)
    f_row = table[(table["group"] == "sex") & (table["value"] == "F")].iloc[0]
    assert np.isnan(f_row["auroc"]) and f_row["n_pos"] == 0
    assert {"auroc_low", "auroc_high", "mae"} <= set(table.columns)
    with pytest.warns(UserWarning, match="no `scanner` column"):
        ev.subgroup_metrics(df, by=("scanner",))


# --------------------------------------------------------------- run folders
METRICS_CSV = """epoch,step,lr-AdamW,train/loss_step,train/loss_epoch,val/loss,val/auroc
,0,0.001,,,,
0,1,,0.50,,,
,2,0.002,,,,
0,3,,0.40,,,
0,3,,,,0.45,0.61
0,3,,,0.46,,
,4,0.003,,,,
1,5,,0.30,,,
,6,0.004,,,,
1,7,,0.20,,,
1,7,,,,0.35,0.72
1,7,,,0.26,,
"""


def test_read_training_log_merges_sparse_rows(tmp_path: Path):
    log_path = tmp_path / "logs" / "csv" / "metrics.csv"
    log_path.parent.mkdir(parents=True)
    log_path.write_text(METRICS_CSV)
    log = ev.read_training_log(tmp_path)
    assert log["epoch"].tolist() == [0, 1]
    assert log["step"].tolist() == [3, 7]
    assert log["val/auroc"].tolist() == [0.61, 0.72]
    assert log["val/loss"].tolist() == [0.45, 0.35]
    assert log["train/loss_epoch"].tolist() == [0.46, 0.26]
    assert log["train/loss_step"].tolist() == [0.40, 0.20]  # last of the epoch
    assert log["lr-AdamW"].tolist() == [0.002, 0.004]  # lr rows have no epoch in the file
    assert ev.read_training_log(log_path).equals(log)


def test_read_training_log_finds_versioned_logs_and_reports_absence(tmp_path: Path):
    versioned = tmp_path / "logs" / "csv" / "version_0" / "metrics.csv"
    versioned.parent.mkdir(parents=True)
    versioned.write_text(METRICS_CSV)
    assert len(ev.read_training_log(tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match=r"logs/csv/metrics\.csv"):
        ev.read_training_log(tmp_path / "elsewhere")


def test_write_metrics_json_round_trips_and_merges(tmp_path: Path):
    path = ev.write_metrics_json(tmp_path, {"test": {"auroc": np.float32(0.8), "r2": np.nan,
                                                     "n": np.int64(5)}})
    ev.write_metrics_json(tmp_path, {"val": {"auroc": 0.7}})
    data = json.loads(path.read_text())
    assert data["test"]["auroc"] == pytest.approx(0.8)
    assert data["test"]["r2"] is None and data["test"]["n"] == 5
    assert data["val"]["auroc"] == 0.7


def test_compare_runs_one_row_per_run(tmp_path: Path):
    good, other, json_only = tmp_path / "good", tmp_path / "other", tmp_path / "json_only"
    for run, noise in ((good, 0.1), (other, 0.4)):
        (run / "predictions").mkdir(parents=True)
        make_predictions(60, noise=noise).to_csv(run / "predictions" / "test.csv", index=False)
    (good / "logs" / "csv").mkdir(parents=True)
    (good / "logs" / "csv" / "metrics.csv").write_text(METRICS_CSV)
    ev.write_metrics_json(good, {"test": {"auroc": 0.0, "loss": 0.12}, "val": {"brier": 9.0},
                                 "preset": "cpu-demo"})
    ev.write_metrics_json(json_only, {"test/auroc": 0.66, "val/auroc": 0.7})
    table = ev.compare_runs([good, other, json_only], n_boot=50)
    assert table["run"].tolist() == ["good", "other", "json_only"]
    assert table["source"].tolist() == ["predictions", "predictions", "metrics.json"]
    assert table.loc[0, "auroc"] > table.loc[1, "auroc"]  # predictions win over metrics.json
    assert table.loc[0, "loss"] == pytest.approx(0.12)  # metrics.json fills the rest
    assert table.loc[0, "preset"] == "cpu-demo"
    assert table.loc[0, "brier"] < 1.0  # never taken from another split
    assert table.loc[2, "auroc"] == pytest.approx(0.66)
    assert table.loc[0, "epochs"] == 2 and np.isnan(table.loc[1, "epochs"])
    assert table.loc[0, "auroc_low"] <= table.loc[0, "auroc"] <= table.loc[0, "auroc_high"]
    with pytest.raises(FileNotFoundError, match="neither"):
        ev.compare_runs([tmp_path / "empty"])


def test_metrics_table_lists_intervals():
    table = ev.metrics_table(make_predictions(40), metrics=("auroc", "mae"), n_boot=50)
    assert table["metric"].tolist() == ["auroc", "mae"]
    assert (table["low"] <= table["value"]).all() and (table["value"] <= table["high"]).all()
