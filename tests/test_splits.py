from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gazimed_lab.data.splits import SplitError, check_disjoint, make_splits, write_splits


def cohort_table(n: int = 90, seed: int = 0, with_split: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dx = np.array(["CN", "MCI", "AD"])[np.arange(n) % 3]
    site = np.array(["s0", "s1"])[(np.arange(n) // 3) % 2]
    table = pd.DataFrame(
        {
            "subject_id": [f"sub-{i:03d}" for i in range(n)],
            "target": rng.uniform(0, 1, n),
            "diagnosis": dx,
            "site": site,
            "age": rng.integers(55, 90, n).astype(float),
            "sex": np.where(np.arange(n) % 2, "F", "M"),
            "feat_0": rng.normal(size=n),
            "split": "",
        }
    )
    if with_split:
        table["split"] = np.array(["train", "train", "train", "val", "test"])[np.arange(n) % 5]
    return table


def ids(frame: pd.DataFrame) -> set[str]:
    return set(frame["subject_id"])


def test_splits_are_disjoint_and_cover_every_subject() -> None:
    table = cohort_table()
    splits = make_splits(table, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert set(splits) == {"train", "val", "test"}
    assert ids(splits["train"]) | ids(splits["val"]) | ids(splits["test"]) == ids(table)
    assert not ids(splits["train"]) & ids(splits["val"])
    assert not ids(splits["train"]) & ids(splits["test"])
    assert not ids(splits["val"]) & ids(splits["test"])
    assert (len(splits["val"]), len(splits["test"])) == (18, 18)
    assert (splits["test"]["split"] == "test").all()


def test_splits_are_stratified_by_diagnosis_and_site() -> None:
    table = cohort_table(n=120)
    splits = make_splits(table, seed=3, val_fraction=0.2, test_fraction=0.2)
    for name in ("val", "test"):
        counts = splits[name].groupby(["diagnosis", "site"]).size()
        # 24 subjects over 6 diagnosis x site groups of equal size: 4 each
        assert len(counts) == 6
        assert counts.min() >= 3 and counts.max() <= 5, counts


def test_stratification_falls_back_when_groups_are_tiny() -> None:
    table = cohort_table(n=12)
    table.loc[0, "diagnosis"] = "rare"  # a group of one cannot be stratified
    splits = make_splits(table, seed=0, val_fraction=0.25, test_fraction=0.25)
    assert sum(len(p) for p in splits.values()) == 12
    check_disjoint(splits)


def test_same_seed_same_split_any_row_order_and_other_seed_differs() -> None:
    table = cohort_table()
    a = make_splits(table, seed=7)
    b = make_splits(table.sample(frac=1.0, random_state=0).reset_index(drop=True), seed=7)
    c = make_splits(table, seed=8)
    for name in ("train", "val", "test"):
        assert list(a[name]["subject_id"]) == list(b[name]["subject_id"])
    assert ids(a["test"]) != ids(c["test"])


def test_fixed_split_column_is_honoured() -> None:
    table = cohort_table(with_split=True)
    splits = make_splits(table, seed=1, val_fraction=0.5, test_fraction=0.5)
    for name in ("train", "val", "test"):
        assert ids(splits[name]) == ids(table[table["split"] == name])


def test_bad_split_values_are_named() -> None:
    table = cohort_table(with_split=True)
    table.loc[4, "split"] = "holdout"
    table.loc[5, "split"] = ""
    with pytest.raises(SplitError, match=r"`split` must be one of.*sub-004 \('holdout'\)"):
        make_splits(table)


def test_kfold_folds_partition_the_non_test_subjects() -> None:
    table = cohort_table(n=90)
    folds = [
        make_splits(table, seed=2, test_fraction=0.2, n_folds=5, fold=k) for k in range(5)
    ]
    tests = [ids(f["test"]) for f in folds]
    assert all(t == tests[0] for t in tests)  # the test set is fixed across folds
    rest = ids(table) - tests[0]
    vals = [ids(f["val"]) for f in folds]
    assert set().union(*vals) == rest
    assert sum(len(v) for v in vals) == len(rest)  # each non-test subject in one val fold
    for f in folds:
        check_disjoint(f)
        assert ids(f["train"]) | ids(f["val"]) == rest
        counts = f["val"].groupby(["diagnosis", "site"]).size()
        assert len(counts) == 6 and counts.max() - counts.min() <= 1  # stratified dx x site


def test_kfold_with_fixed_split_keeps_the_given_test_set() -> None:
    table = cohort_table(with_split=True)
    splits = make_splits(table, seed=0, n_folds=3, fold=1)
    assert ids(splits["test"]) == ids(table[table["split"] == "test"])
    assert ids(splits["train"]) | ids(splits["val"]) == ids(table[table["split"] != "test"])


@pytest.mark.parametrize(("n_folds", "fold", "match"), [
    (1, 0, r"`data.n_folds` must be 0 \(off\) or >= 2, got 1"),
    (3, 3, r"`data.fold` must be in \[0, 3\), got 3"),
])
def test_bad_fold_settings(n_folds: int, fold: int, match: str) -> None:
    with pytest.raises(SplitError, match=match):
        make_splits(cohort_table(), n_folds=n_folds, fold=fold)


def test_overlap_is_reported_with_subject_ids() -> None:
    table = cohort_table(n=10)
    splits = {"train": table.iloc[:6], "val": table.iloc[5:8], "test": table.iloc[7:]}
    with pytest.raises(SplitError, match=r"sub-005 \(train and val\), sub-007 \(val and test\)"):
        check_disjoint(splits)


def test_duplicate_subject_ids_are_rejected() -> None:
    table = cohort_table(n=10)
    table.loc[3, "subject_id"] = "sub-002"
    with pytest.raises(SplitError, match=r"`subject_id` must be unique.*sub-002"):
        make_splits(table)


def test_too_large_fractions_are_rejected() -> None:
    with pytest.raises(SplitError, match="must leave subjects for training"):
        make_splits(cohort_table(n=10), val_fraction=0.5, test_fraction=0.5)


def test_write_splits(tmp_path: Path) -> None:
    splits = make_splits(cohort_table(), seed=0)
    folder = write_splits(splits, tmp_path / "run")
    for name in ("train", "val", "test"):
        saved = pd.read_csv(folder / f"{name}.csv")
        assert list(saved.columns) == ["subject_id", "target", "diagnosis", "site", "age", "sex"]
        assert list(saved["subject_id"]) == list(splits[name]["subject_id"])
