"""Several sessions per subject: validation, session order, subject-level splits, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL, cohort_config, edit_manifest, make_tiny_cohort, write_nifti

from gazimed_lab.config import EVAL_SESSIONS, ConfigError, load_config
from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.manifest import ManifestError, read_manifest
from gazimed_lab.data.predict import PredictDataModule
from gazimed_lab.data.qa import row_flags, run_qa, split_balance
from gazimed_lab.data.sessions import natural_key
from gazimed_lab.data.splits import SplitError, make_splits
from gazimed_lab.evaluation import binary_metrics, bootstrap_ci, read_predictions
from gazimed_lab.models.metrics import ScoreMetrics

#: Sessions per subject, by subject index modulo 4 (37 rows for 18 subjects).
VISITS = ("ses-M000", "ses-M006", "ses-M012")
COUNTS = (3, 2, 1, 2)


def make_longitudinal_cohort(root: Path, n: int = 18) -> Path:
    """The tiny cohort with 1-3 sessions per subject, rows shuffled, each session its files.

    Later sessions: the baseline volumes slightly atrophied, plus noise; targets and
    diagnoses change over sessions (they are longitudinal), sex and site do not; a
    ``months`` column gives the visit month.
    """
    manifest = make_tiny_cohort(root, n=n)
    base = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(1)
    rows = []
    for i, row in base.iterrows():
        visits = range(COUNTS[int(i) % 4])
        # Manifest order is not session order: odd subjects list their latest session first.
        for k in reversed(visits) if int(i) % 2 else visits:
            visit = dict(row, session_id=VISITS[k], months=str(6 * k))
            if k:
                for col, name in (("mri", "T1w"), ("pet", "pet")):
                    if not row[col]:
                        continue
                    src = nib.load(str(root / row[col]))
                    data = src.get_fdata() * (1 - 0.02 * k) + rng.normal(0, 0.01, src.shape)
                    rel = f"{col}/{row['subject_id']}_{VISITS[k]}_{name}.nii.gz"
                    write_nifti(root / rel, data, src.affine)
                    visit[col] = rel
                visit["target"] = f"{min(float(row['target']) + 0.05 * k, 1.0):.3f}"
                visit["age"] = str(int(row["age"]) + k)
            rows.append(visit)
    frame = pd.DataFrame(rows)
    frame = frame[["subject_id", "session_id", *[c for c in frame if c not in
                                                ("subject_id", "session_id")]]]
    frame.to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def pristine_sessions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A longitudinal cohort made once (never modify it)."""
    return make_longitudinal_cohort(tmp_path_factory.mktemp("sessions") / "cohort")


@pytest.fixture
def sessions_cohort(pristine_sessions: Path, tmp_path: Path) -> Path:
    """A fresh copy of the longitudinal cohort's manifest (paths absolute: files shared)."""
    frame = pd.read_csv(pristine_sessions, dtype=str, keep_default_na=False)
    for col in ("mri", "pet"):
        frame[col] = [str(pristine_sessions.parent / p) if p else "" for p in frame[col]]
    out = tmp_path / "manifest.csv"
    frame.to_csv(out, index=False)
    return out


def _problems(manifest: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_session_manifest_is_read_with_the_session_order(sessions_cohort: Path) -> None:
    cohort = read_manifest(sessions_cohort)
    table = cohort.table
    assert cohort.has_sessions and len(table) == 37 and table["subject_id"].nunique() == 18
    assert list(table.columns[:4]) == ["subject_id", "session_id", "session_rank", "mri"]
    assert "session_id" not in cohort.clinical_columns and "months" in cohort.clinical_columns
    # Ranks follow the session ids' natural order, not the rows' (latest first for some).
    rank = dict(zip(zip(table["subject_id"], table["session_id"]), table["session_rank"]))
    assert [rank[("sub-000", v)] for v in VISITS] == [0, 1, 2]
    assert list(table["session_id"].iloc[3:5]) == ["ses-M006", "ses-M000"]  # sub-001
    assert list(table["session_rank"].iloc[3:5]) == [1, 0]
    # A numeric column can order them instead: minus the months puts the last visit first.
    edit_manifest(sessions_cohort, lambda f: f.assign(order=(-f["months"].astype(int)).astype(str)))
    by_column = read_manifest(sessions_cohort, session_order_column="order").table
    first = by_column[by_column["session_rank"] == 0].set_index("subject_id")["session_id"]
    assert first["sub-000"] == "ses-M012" and first["sub-001"] == "ses-M006"
    assert first["sub-002"] == "ses-M000"  # a single session is its own baseline


def test_natural_order_compares_digit_runs_as_numbers() -> None:
    ids = ["ses-M12", "ses-M006", "ses-M0", "ses-m6x", "bl", "m06", "m12"]
    assert sorted(ids, key=natural_key) == ["bl", "m06", "m12", "ses-M0", "ses-M006",
                                            "ses-m6x", "ses-M12"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"session_id": {2: ""}}, r"`session_id` must be a non-empty identifier in every row "
                                  r"when the column is present, got an empty cell \(row 3, "
                                  r"subject `sub-000`\); fix: fill in every session"),
        ({"session_id": {0: "ses/M000"}}, r"`session_id` must be 1-128 characters from letters, "
                                          r"digits, .* got characters other than .*'/' \(row 1"),
        ({"session_id": {1: "ses-M000"}}, r"`\(subject_id, session_id\)` must be unique, got "
                                          r"subject `sub-000`, session `ses-M000` in rows 1, 2 "
                                          r"\(.*manifest\.csv\); fix: give each session"),
        ({"sex": {1: "F"}}, r"`sex` must be one value per subject across its sessions, got `M` "
                            r"in rows 1, 3 and `F` in row 2 \(subject `sub-000`\) \(.*\); fix: "
                            r"correct the manifest: `sex` describes the subject, not the visit"),
        ({"site": {4: "site9"}}, r"`site` must be one value per subject across its sessions, got "
                                 r"`site1` in row 4 and `site9` in row 5 \(subject `sub-001`\)"),
        ({"session_id": {1: "ses-M06", 2: "ses-M6"}},
         r"`session_id` must be ids that sort apart within a subject .* got `ses-M06`, `ses-M6` "
         r"of subject `sub-000`, which sort as the same session \(rows 2, 3\)"),
    ],
    ids=["empty", "unsafe", "duplicate-pair", "sex-conflict", "site-conflict", "sort-equal"],
)
def test_bad_sessions_are_named(sessions_cohort: Path, change: dict[str, dict[int, str]],
                                expected: str) -> None:
    def edit(frame: pd.DataFrame) -> None:
        for col, cells in change.items():
            for row, value in cells.items():
                frame.loc[row, col] = value

    edit_manifest(sessions_cohort, edit)
    with pytest.raises(ManifestError, match=expected) as info:
        read_manifest(sessions_cohort)
    assert len(info.value.problems) == 1, info.value.problems


def test_a_session_rank_column_is_refused(sessions_cohort: Path) -> None:
    edit_manifest(sessions_cohort, lambda f: f.assign(session_rank="0"))
    with pytest.raises(ManifestError, match=r"`manifest column` must be a name other than "
                                            r"`session_rank`, which the workbench computes"):
        read_manifest(sessions_cohort)


def test_diagnosis_and_target_may_change_over_sessions(sessions_cohort: Path) -> None:
    def convert(frame: pd.DataFrame) -> None:  # sub-000 converts: CN -> MCI -> AD
        rows = frame.index[frame["subject_id"] == "sub-000"]
        frame.loc[rows, "diagnosis"] = ["AD", "MCI", "CN"][: len(rows)]

    edit_manifest(sessions_cohort, convert)
    table = read_manifest(sessions_cohort).table
    assert table.loc[table["subject_id"] == "sub-000", "diagnosis"].nunique() == 3
    assert table.loc[table["subject_id"] == "sub-000", "target"].nunique() == 3


def test_session_order_column_problems_are_named(sessions_cohort: Path) -> None:
    assert _problems(sessions_cohort, session_order_column="visit_month")[0].startswith(
        "`data.session_order_column` must be a manifest column, got `visit_month`, which is "
        "not a column")
    edit_manifest(sessions_cohort, lambda f: f.assign(months=f["months"].where(
        f.index != 3, "soon").where(f.index != 5, "")))
    edit_manifest(sessions_cohort, lambda f: f.assign(order=f["months"].where(
        f.index != 1, "12")))  # sub-000: rows 1-3 hold 0/12/6 -> 12 twice
    problems = _problems(sessions_cohort, session_order_column="order")
    assert any(p.startswith("`order` must be a number in every row (data.session_order_column "
                            "orders the sessions), got `soon` (row 4") for p in problems)
    assert any("got an empty cell (row 6" in p for p in problems)
    assert any(p.startswith("`order` must be distinct values within a subject") and
               "12 for sessions `ses-M006`, `ses-M012` of subject `sub-000` (rows 2, 3)" in p
               for p in problems)


def _check_subject_level(splits: dict[str, pd.DataFrame], table: pd.DataFrame,
                         eval_sessions: str) -> None:
    members = {name: set(part["subject_id"]) for name, part in splits.items()}
    assert not members["train"] & members["val"] and not members["train"] & members["test"]
    assert not members["val"] & members["test"]
    assert set().union(*members.values()) == set(table["subject_id"])
    sessions = table.groupby("subject_id")["session_id"].apply(set)
    train = splits["train"].groupby("subject_id")["session_id"].apply(set)
    assert all(train[s] == sessions[s] for s in train.index)  # every session trains
    for name in ("val", "test"):
        part = splits[name]
        kept = part.groupby("subject_id")["session_rank"].apply(list)
        last = table.groupby("subject_id")["session_rank"].max()
        for sid, ranks in kept.items():
            if eval_sessions == "first":
                assert ranks == [0], (name, sid)
            elif eval_sessions == "last":
                assert ranks == [last[sid]], (name, sid)
            else:
                assert ranks == list(range(last[sid] + 1)), (name, sid)


@pytest.mark.parametrize("n_folds", [0, 3])
@pytest.mark.parametrize("eval_sessions", EVAL_SESSIONS)
def test_no_subject_crosses_splits(sessions_cohort: Path, n_folds: int,
                                   eval_sessions: str) -> None:
    table = read_manifest(sessions_cohort).table
    baseline = table[table["session_rank"] == 0].drop(columns=["session_id", "session_rank"])
    for fold in range(max(n_folds, 1)):
        splits = make_splits(table, seed=3, val_fraction=0.2, test_fraction=0.2,
                             n_folds=n_folds, fold=fold, eval_sessions=eval_sessions)
        _check_subject_level(splits, table, eval_sessions)
        # The subjects are those a one-row-per-subject manifest of the baselines gets.
        alone = make_splits(baseline, seed=3, val_fraction=0.2, test_fraction=0.2,
                            n_folds=n_folds, fold=fold)
        for name in splits:
            assert set(splits[name]["subject_id"]) == set(alone[name]["subject_id"]), name


def test_fixed_split_column_is_one_value_per_subject(sessions_cohort: Path) -> None:
    table = read_manifest(sessions_cohort).table
    table["split"] = np.where(table["subject_id"] < "sub-012", "train",
                              np.where(table["subject_id"] < "sub-015", "val", "test"))
    splits = make_splits(table, eval_sessions="first")
    _check_subject_level(splits, table, "first")
    assert set(splits["test"]["subject_id"]) == {"sub-015", "sub-016", "sub-017"}
    table.loc[0, "split"] = "test"  # sub-000's latest session only
    with pytest.raises(SplitError, match=r"`split` must be one value per subject across its "
                                         r"sessions, got several for \['sub-000'\]"):
        make_splits(table)
    edit_manifest(sessions_cohort, lambda f: f.assign(split=["test"] + ["train"] * (len(f) - 1)))
    with pytest.raises(ManifestError, match=r"`split` must be one value per subject across its "
                                            r"sessions, got `test` in row 1 and `train` in rows "
                                            r"2, 3 \(subject `sub-000`\)"):
        read_manifest(sessions_cohort)
    with pytest.raises(SplitError, match=r"`data.eval_sessions` must be one of first, last, all, "
                                         r"got 'baseline'"):
        make_splits(table, eval_sessions="baseline")


def test_eval_sessions_is_a_config_choice() -> None:
    assert load_config("cpu-demo").data.eval_sessions == "first"
    assert load_config("cpu-demo", ["data.eval_sessions=all"]).data.eval_sessions == "all"
    with pytest.raises(ConfigError, match=r"`data.eval_sessions` must be one of first, last, "
                                          r"all, got 'every'"):
        load_config("cpu-demo", ["data.eval_sessions=every"])


def _predictions() -> pd.DataFrame:
    """Three subjects, one of them scored on three sessions with very different scores."""
    return pd.DataFrame({
        "subject_id": ["a", "a", "a", "b", "c"],
        "session_id": ["ses-M000", "ses-M006", "ses-M012", "ses-M000", "ses-M000"],
        "score": [0.9, 0.1, 0.2, 0.3, 0.8],
        "target": [0.8, 0.6, 0.7, 0.2, 0.9],
    })


def test_metrics_count_each_subject_once() -> None:
    table = _predictions()
    per_subject = read_predictions(table)
    assert list(per_subject["subject_id"]) == ["a", "b", "c"]
    assert per_subject.attrs["n_rows"] == 5 and list(per_subject["n_sessions"]) == [3, 1, 1]
    assert per_subject.loc[0, "score"] == pytest.approx(0.4)
    assert per_subject.loc[0, "target"] == pytest.approx(0.7)
    assert per_subject.loc[0, "session_id"] == "ses-M000;ses-M006;ses-M012"
    by_hand = pd.DataFrame({"subject_id": ["a", "b", "c"], "score": [0.4, 0.3, 0.8],
                            "target": [0.7, 0.2, 0.9]})
    metrics = binary_metrics(table)
    assert metrics["n"] == 3 and metrics["n_pos"] == 2
    expected = binary_metrics(by_hand)
    assert {k: v for k, v in metrics.items() if np.isfinite(v)} == pytest.approx(
        {k: v for k, v in expected.items() if np.isfinite(v)})
    # Per row, two of a's three sessions (0.1, 0.2) would rank below b's 0.3: AUROC 0.5.
    assert metrics["auroc"] == 1.0
    assert bootstrap_ci(table, "mae", n_boot=50).point == pytest.approx(expected["mae"])
    # Without session_id nothing is averaged (a one-row-per-subject table is left alone).
    assert len(read_predictions(by_hand)) == 3 and "n_sessions" not in read_predictions(by_hand)
    repeated = pd.concat([table, table.iloc[[0]]])
    with pytest.raises(ValueError, match=r"`session_id`\) must be unique, got subject a, "
                                         r"session ses-M000 again \(DataFrame, row 6"):
        read_predictions(repeated)


def test_training_metrics_average_each_subjects_sessions() -> None:
    table = _predictions()
    grouped, flat = ScoreMetrics("val"), ScoreMetrics("val")
    codes = pd.factorize(table["subject_id"])[0]
    for part in (slice(0, 2), slice(2, 5)):  # two batches: subject a is split across them
        grouped.update(_tensor(table["score"][part]), _tensor(table["target"][part]),
                       _tensor(codes[part], dtype="int64"))
    flat.update(_tensor([0.4, 0.3, 0.8]), _tensor([0.7, 0.2, 0.9]))
    got, want = grouped.compute(), flat.compute()
    for name, value in want.items():
        assert float(got[name]) == pytest.approx(float(value), abs=1e-6, nan_ok=True), name
    assert float(got["val/auroc"]) == pytest.approx(1.0)


def _tensor(values: object, dtype: str = "float32") -> object:
    import torch

    return torch.as_tensor(np.asarray(values, dtype=dtype))


def test_data_module_serves_sessions_and_writes_them_in_the_splits(sessions_cohort: Path,
                                                                   tmp_path: Path) -> None:
    cfg = cohort_config(sessions_cohort, tmp_path, "data.augment=false", "data.batch_size=4")
    dm = MNIDataModule(cfg)
    dm.setup()
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(dm.train_dataset) == len(train) > train["subject_id"].nunique()
    assert len(dm.val_dataset) == val["subject_id"].nunique()  # first session only
    batch = next(iter(dm.val_dataloader()))
    assert batch["session_id"] == ["ses-M000"] * len(batch["subject_id"])
    assert batch["subject_index"].tolist() == list(range(len(batch["subject_id"])))
    train_batch = next(iter(dm.split_dataloader("train")))
    assert len(train_batch["session_id"]) == 4
    written = {name: pd.read_csv(tmp_path / "run" / "splits" / f"{name}.csv")
               for name in ("train", "val", "test")}
    assert list(written["train"].columns[:2]) == ["subject_id", "session_id"]
    assert "session_rank" not in written["train"].columns
    assert len(written["train"]) == len(train) and len(written["val"]) == len(val)
    assert set(written["val"]["session_id"]) == {"ses-M000"}
    balance = split_balance(pd.concat(dm.splits.values()))
    assert balance.loc["train", "n"] == train["subject_id"].nunique()
    assert balance.loc["train", "n_sessions"] == len(train)
    # Prediction scores every row of a manifest: each session of each subject.
    predict = PredictDataModule(dm.spec, sessions_cohort, cache_dir=tmp_path / "cache")
    assert len(predict.dataset) == 37 and predict.dataset.session_ids is not None
    assert next(iter(predict.predict_dataloader()))["session_id"][0] == predict.subjects[
        "session_id"].iloc[0]
    # ... ordered as training orders them (data.session_order_column), and a flagged
    # image stops the scoring unless accepted for this prediction.
    edit_manifest(sessions_cohort, lambda f: f.assign(
        session_id=f["session_id"].replace({"ses-M012": "ses-M12"}).where(
            f["subject_id"] != "sub-000", f["session_id"].replace({"ses-M012": "ses-M06"}))))
    with pytest.raises(ManifestError, match=r"sort as the same session"):
        _ = PredictDataModule(dm.spec, sessions_cohort, cache_dir=tmp_path / "cache").subjects
    ordered = PredictDataModule(dm.spec, sessions_cohort, cache_dir=tmp_path / "cache",
                                session_order_column="months")
    first = ordered.subjects.set_index(["subject_id", "session_id"])["session_rank"]
    assert first[("sub-000", "ses-M06")] == 2 and first[("sub-000", "ses-M000")] == 0
    frame = pd.read_csv(sessions_cohort, dtype=str, keep_default_na=False)
    source = nib.load(frame.loc[0, "mri"])
    moved = source.affine.copy()
    moved[1, 3] += 50.0  # 50 mm off: the brain leaves the MNI brain mask
    write_nifti(tmp_path / "moved_T1w.nii.gz", np.asarray(source.dataobj), moved)
    edit_manifest(sessions_cohort, lambda f: f.assign(
        mri=f["mri"].where(f.index != 0, str(tmp_path / "moved_T1w.nii.gz"))))
    with pytest.raises(ManifestError, match=r"`mri brain coverage` must be >= 0\.8"):
        _ = PredictDataModule(dm.spec, sessions_cohort, cache_dir=tmp_path / "cache",
                              session_order_column="months").dataset
    with pytest.warns(UserWarning, match=r"scoring 2 flagged image\(s\) because accept_flagged .*"
                                         r"subject `sub-000`, session `ses-M000`, mri .*moved_T1w"):
        accepted = PredictDataModule(dm.spec, sessions_cohort, cache_dir=tmp_path / "cache",
                                     session_order_column="months", accept_flagged=True)
        assert len(accepted.dataset) == 37
    # the moved MRI, and its pair with the PET (which now disagree in world space)
    assert [(r["session_id"], r["modality"]) for r in accepted.accepted_flagged] == [
        ("ses-M000", "mri"), ("ses-M000", "pet")]


def test_qa_tables_carry_sessions(sessions_cohort: Path) -> None:
    report = run_qa(sessions_cohort)
    assert report.ok, report.errors
    assert list(report.table.columns[:3]) == ["row", "subject_id", "session_id"]
    assert len(report.table) == 74
    pair = report.table[(report.table["subject_id"] == "sub-004")
                        & (report.table["session_id"] == "ses-M006")]
    assert len(pair) == 2 and (pair["pair_agreement"] > 0.8).all()
    edit_manifest(sessions_cohort, lambda f: f.assign(
        mri=f["mri"].where(f.index != 1, f["mri"].iat[0])))
    warnings = run_qa(sessions_cohort).warnings
    assert any("session `ses-M006`, mri" in w and "one file used 2 times" in w for w in warnings)


def test_qa_follows_the_training_session_order_and_flags_each_session(
        sessions_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gazimed_lab.cli import main

    # Ids that sort as one session are refused unless a numeric column orders them, as
    # training does with data.session_order_column: `gazimed-lab qa` takes it too.
    edit_manifest(sessions_cohort, lambda f: f.assign(session_id=f["session_id"].where(
        ~((f["subject_id"] == "sub-000") & (f["session_id"] == "ses-M012")), "ses-M06")))
    assert main(["qa", str(sessions_cohort)]) == 1
    assert "sort as the same session" in capsys.readouterr().out
    assert main(["qa", str(sessions_cohort), "--session-order-column", "months",
                 "--pet-reference", "cerebellum"]) == 0
    # A flag raised on one session's volume stays on that session's row.
    frame = pd.read_csv(sessions_cohort, dtype=str, keep_default_na=False)
    blank = tmp_path / "zeros_T1w.nii.gz"
    source = nib.load(frame.loc[0, "mri"])
    write_nifti(blank, np.zeros(source.shape), source.affine)
    late = (frame["subject_id"] == "sub-000") & (frame["session_id"] == "ses-M006")
    edit_manifest(sessions_cohort, lambda f: f.assign(mri=f["mri"].where(~late, str(blank))))
    report = run_qa(sessions_cohort, session_order_column="months")
    scores = frame.loc[frame["subject_id"] == "sub-000", ["subject_id", "session_id"]]
    flags = row_flags(report.table, scores.assign(score=0.5))
    by_session = dict(zip(scores["session_id"], flags))
    assert "all-zero" in by_session["ses-M006"], by_session
    assert by_session["ses-M000"] == "" and by_session["ses-M06"] == ""
    subjects = row_flags(report.table, scores.drop(columns="session_id"))
    assert all("all-zero" in f for f in subjects)  # without sessions: the subject's flags
    # The QA browser picks one session of a subject at a time (its MRI and PET).
    from gazimed_lab import viz

    browser = viz.qa_browser(report.table)
    zero = next(f for f in browser.flag.options if "all-zero" in f)
    browser.flag.value = zero
    assert list(browser.subject.options) == ["sub-000 · ses-M006"]
    assert browser.count.value == "1 session"
    assert browser.figure.get_suptitle() == "sub-000 · ses-M006"
    assert [ax.get_title().split(" · ")[0] for ax in browser.figure.axes
            if ax.get_title()] == ["MRI", "PET"]
    browser.flag.value = "all subjects"
    assert len(browser.subject.options) == 37 and browser.count.value == "37 sessions"
    unflagged = report.table[report.table["flags"].fillna("") == ""]
    quiet = viz.qa_browser(unflagged)
    capsys.readouterr()
    quiet.flag.value = "flagged"
    assert quiet.count.value == "0 sessions" and quiet.figure is None
    assert "no session is flagged" in capsys.readouterr().out  # the Output widget, no kernel


def test_single_session_manifest_gets_no_session_column(tiny_cohort: Path,
                                                        tmp_path: Path) -> None:
    cohort = read_manifest(tiny_cohort)
    assert not cohort.has_sessions and "session_rank" not in cohort.table
    dm = MNIDataModule(cohort_config(tiny_cohort, tmp_path, "data.augment=false"))
    dm.setup("validate")
    assert "session_id" not in next(iter(dm.val_dataloader()))
    for name in ("train", "val", "test"):
        assert "session_id" not in pd.read_csv(tmp_path / "run" / "splits" / f"{name}.csv")
    assert "session_id" not in run_qa(tiny_cohort).table.columns
    assert "n_sessions" not in split_balance(pd.concat(dm.splits.values())).columns


def _session_rows(frame: pd.DataFrame, split: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["subject_id"], frame["session_id"])) & set(
        zip(split["subject_id"], split["session_id"]))


@pytest.mark.slow
def test_longitudinal_run_scores_sessions_and_counts_subjects_once(sessions_cohort: Path,
                                                                   tmp_path: Path) -> None:
    from gazimed_lab.runner import predict_manifest, train_and_evaluate

    cfg = cohort_config(sessions_cohort, tmp_path, *SMALL, "trainer.max_epochs=2",
                        "data.augment=false", "data.eval_sessions=all")
    result = train_and_evaluate(cfg)
    run = result.run_dir
    summary = json.loads((run / "metrics.json").read_text())
    test = pd.read_csv(run / "predictions" / "test.csv")
    split = pd.read_csv(run / "splits" / "test.csv")
    assert list(test.columns[:5]) == ["subject_id", "session_id", "score", "label", "target"]
    assert len(test) == len(split) > test["subject_id"].nunique()  # every session scored
    assert _session_rows(test, split) == set(zip(split["subject_id"], split["session_id"]))
    assert summary["test"]["n"] == test["subject_id"].nunique()
    assert summary["n_subjects"]["test"] == test["subject_id"].nunique()
    assert summary["n_sessions"]["test"] == len(test) and summary["eval_sessions"] == "all"
    means = test.groupby("subject_id")[["score", "target"]].mean().reset_index()
    assert summary["test"]["mae"] == pytest.approx(binary_metrics(means)["mae"])
    # The targets are the manifest's, per session.
    manifest = read_manifest(sessions_cohort).table.set_index(["subject_id", "session_id"])
    keys = list(zip(test["subject_id"], test["session_id"]))
    assert np.allclose(test["target"], manifest.loc[keys, "target"].to_numpy())
    scored = predict_manifest(result.best_checkpoint, sessions_cohort, tmp_path / "scores.csv")
    assert len(scored) == 37 and list(scored.columns[:2]) == ["subject_id", "session_id"]
    again = test.merge(scored, on=["subject_id", "session_id"], suffixes=("", "_new"))
    assert len(again) == len(test)
    np.testing.assert_allclose(again["score"], again["score_new"], atol=1e-6)
