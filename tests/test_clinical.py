from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cohort_config

from gazimed_lab.data.clinical import ClinicalStats, align_feature_columns
from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.spec import SpecError


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [1.0, 2.0, np.nan, 4.0, 100.0],
            "b": [5.0, 5.0, 5.0, np.nan, -3.0],
            "c": [np.nan, np.nan, np.nan, np.nan, 7.0],
        }
    )


def test_fit_and_transform_on_known_values() -> None:
    train = frame().iloc[:4]
    with pytest.warns(UserWarning, match=r"never observed on the training split.*\['c'\]"):
        stats = ClinicalStats.fit(train, ["a", "b", "c"])
    assert stats.medians == [2.0, 5.0, 0.0]
    assert stats.means == pytest.approx([7 / 3, 5.0, 0.0])
    assert stats.stds[0] == pytest.approx(np.std([1.0, 2.0, 4.0]))
    assert stats.stds[1:] == [1.0, 1.0]  # zero variance and never observed: scale 1
    x, mask = stats.transform(frame())
    assert x.dtype == np.float32 and mask.dtype == np.float32 and x.shape == (5, 3)
    np.testing.assert_array_equal(mask[:, 2], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(mask[:, 0], [1, 1, 0, 1, 1])
    # an imputed value is the training median, standardized
    assert x[2, 0] == pytest.approx((2.0 - 7 / 3) / stats.stds[0])
    assert x[3, 1] == pytest.approx(0.0)
    assert x[4, 2] == pytest.approx(7.0)


def test_json_round_trip() -> None:
    stats = ClinicalStats.fit(frame(), ["a", "b"])
    again = ClinicalStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats


def test_non_numeric_value_is_named() -> None:
    table = frame().astype(object)
    table.loc[1, "b"] = "five"
    with pytest.raises(ValueError, match=r"column `b` must be numeric, got .five. \(row 1"):
        ClinicalStats.fit(table, ["a", "b"])


def test_align_feature_columns() -> None:
    assert align_feature_columns(["a", "b"], ["a", "b"]) == ["a", "b"]
    with pytest.warns(UserWarning, match="reordered by name"):
        assert align_feature_columns(["b", "a"], ["a", "b"]) == ["a", "b"]
    with pytest.warns(UserWarning, match=r"ignoring 1 clinical column.*\['z'\]"):
        assert align_feature_columns(["a", "z", "b"], ["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match=r"got 2 missing: \['b', 'c'\] \(new.csv\)"):
        align_feature_columns(["a"], ["a", "b", "c"], source="new.csv")


def _config(manifest: Path, tmp_path: Path) -> object:
    return cohort_config(manifest, tmp_path)


def test_datamodule_statistics_come_from_train_rows_only(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    dm = MNIDataModule(_config(tiny_cohort, tmp_path))
    spec = dm.spec
    train = dm.splits["train"]
    expected = ClinicalStats.fit(train, dm.feature_names)
    assert spec.clinical == expected
    assert spec.feature_names == ("age", "feat_0", "feat_1", "feat_2", "feat_3", "feat_4")
    # Changing val / test values leaves the statistics unchanged; a train value changes them.
    table = pd.read_csv(tiny_cohort)
    held_out = list(dm.splits["val"]["subject_id"]) + list(dm.splits["test"]["subject_id"])
    changed = table.copy()
    changed.loc[changed["subject_id"].isin(held_out), "feat_0"] = 1e6
    changed.loc[changed["subject_id"] == held_out[0], "feat_1"] = np.nan
    changed.to_csv(tiny_cohort, index=False)
    dm2 = MNIDataModule(_config(tiny_cohort, tmp_path))
    assert dm2.spec == spec
    changed.loc[changed["subject_id"] == train["subject_id"].iloc[0], "feat_0"] = 1e6
    changed.to_csv(tiny_cohort, index=False)
    dm3 = MNIDataModule(_config(tiny_cohort, tmp_path))
    assert dm3.spec.means != spec.means
    diffs = dm3.spec.differences(spec)
    assert any(d.startswith("clinical means:") for d in diffs) and len(diffs) <= 3


def test_saved_spec_is_reused_in_fit_mode(tiny_cohort: Path, tmp_path: Path) -> None:
    state = MNIDataModule(_config(tiny_cohort, tmp_path)).spec.to_dict()
    table = pd.read_csv(tiny_cohort)
    table["feat_0"] = table["feat_0"] * 100  # would change freshly fitted statistics
    table = table[[c for c in table.columns if c != "age"] + ["age"]]
    table.to_csv(tiny_cohort, index=False)
    with pytest.warns(UserWarning, match="reordered by name"):
        dm = MNIDataModule(_config(tiny_cohort, tmp_path), spec=state)
        assert dm.spec.to_dict() == state
    with pytest.raises(SpecError, match=r"input spec must hold grid.*without 'grid' \(spec\)"):
        MNIDataModule(_config(tiny_cohort, tmp_path), spec={
            k: v for k, v in state.items() if k != "grid"})
    with pytest.raises(SpecError, match=r"version must be one of \[1, 2\].*got 7 \(spec\)"):
        MNIDataModule(_config(tiny_cohort, tmp_path), spec={**state, "version": 7})
