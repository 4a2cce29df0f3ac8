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


def classes(frame: pd.DataFrame) -> pd.Series:
    return frame["target"] > 0.5


def tiny_targets(n: int) -> pd.DataFrame:
    """The shared test cohort's table (tests/conftest.py): targets 0.1 / 0.5 / 0.9 cycling."""
    table = cohort_table(n=n)
    table["target"] = [round((i % 3) / 2 * 0.8 + 0.1, 3) for i in range(n)]
    return table


def test_every_split_of_the_tiny_cohort_holds_both_classes() -> None:
    # 16 subjects, 5 positive: val and test hold 2 subjects each (default fractions 0.15);
    # unstratified by class, seed 42 gave a val split of two negatives.
    splits = make_splits(tiny_targets(16), seed=42)
    for name, part in splits.items():
        assert set(classes(part)) == {False, True}, (name, part["target"].tolist())
    for seed in range(20):
        for name, part in make_splits(tiny_targets(16), seed=seed).items():
            assert set(classes(part)) == {False, True}, (seed, name)


@pytest.mark.parametrize(("n_pos", "expected"), [
    (3, {"train": 1, "val": 1, "test": 1}),  # the minimum for a class in every split
    (2, {"train": 1, "val": 1, "test": 0}),  # too few: train, then val, keep one
    (1, {"train": 1, "val": 0, "test": 0}),
])
def test_a_rare_class_is_shared_out_train_first_then_val_then_test(
        n_pos: int, expected: dict[str, int]) -> None:
    table = cohort_table(n=30)
    table["target"] = [0.9 if i < n_pos else 0.2 for i in range(30)]
    for seed in range(10):
        splits = make_splits(table, seed=seed, val_fraction=0.15, test_fraction=0.15)
        assert {k: int(classes(p).sum()) for k, p in splits.items()} == expected
        assert [len(splits[k]) for k in ("val", "test")] == [4, 4]


def test_held_out_splits_are_stratified_by_class() -> None:
    table = cohort_table(n=100)
    table["target"] = np.where(np.arange(100) % 10 < 3, 0.8, 0.3)  # 30 % positive
    splits = make_splits(table, seed=5, val_fraction=0.2, test_fraction=0.2)
    assert [int(classes(splits[k]).sum()) for k in ("train", "val", "test")] == [18, 6, 6]


def test_splits_without_targets_still_work() -> None:
    table = cohort_table(n=20).drop(columns="target")
    splits = make_splits(table, seed=0)
    assert sum(len(p) for p in splits.values()) == 20
    partly = cohort_table(n=20)
    partly.loc[:9, "target"] = np.nan  # unknown targets are shared out as a group of their own
    splits = make_splits(partly, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert [int(splits[k]["target"].isna().sum()) for k in ("val", "test")] == [2, 2]


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
        assert set(classes(f["val"])) == {False, True}
    # Stratified by class x diagnosis (class x diagnosis x site has groups smaller than
    # 5 folds here): each such group splits evenly over the folds.
    cells = pd.DataFrame([
        f["val"].assign(cls=classes(f["val"])).groupby(["cls", "diagnosis"]).size()
        for f in folds]).fillna(0)
    assert (cells.max() - cells.min()).max() <= 1, cells


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
