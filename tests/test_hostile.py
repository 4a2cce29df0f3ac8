"""Hostile inputs and faults (issue 12): each fails loudly, named, and nothing is misplaced."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import edit_manifest as _edit
from conftest import write_nifti

from gazimed_lab.data.grid import get_grid, template_on_grid
from gazimed_lab.data.images import ImageError, brain_coverage, conform_to_grid
from gazimed_lab.data.manifest import ManifestError, read_manifest
from gazimed_lab.data.splits import SplitError
from gazimed_lab.paths import (
    OutputPathError,
    atomic_write,
    check_not_input,
    output_path,
    safe_name,
)

GRID = get_grid("demo_4mm")




def _problems(manifest: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, check_images=False, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


# ---------------------------------------------------------------- 1: ids that escape
@pytest.mark.parametrize("sid", ["../../escaped", "a/b", "sub 1", ".hidden", "a\\b"])
def test_unsafe_subject_id_is_refused_at_the_door(tiny_cohort: Path, sid: str) -> None:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[4, "subject_id"] = sid

    problems = _problems(_edit(tiny_cohort, change))
    assert len(problems) == 1
    assert problems[0].startswith("`subject_id` must be 1-128 characters from letters, digits")
    assert f"row 5, subject `{sid}`" in problems[0]


def test_safe_name_and_output_path_never_leave_the_root(tmp_path: Path) -> None:
    assert safe_name("sub-001") == "sub-001"
    names = {safe_name(s) for s in ("../../escaped", "a/b", "a%2Fb", "..", ".", "", "AD/x")}
    assert len(names) == 7 and all("/" not in n and n not in (".", "..") for n in names)
    run = tmp_path / "run"
    for sid in ("../../escaped", "a/b", ".."):
        path = output_path(run, "maps", f"{safe_name(sid)}_saliency_mri.nii.gz")
        assert path.parent == (run / "maps").resolve()
    with pytest.raises(OutputPathError, match=r"`output path` must stay inside .*run"):
        output_path(run, "maps", "../../escaped_saliency_mri.nii.gz")
    with pytest.raises(OutputPathError, match="absolute part"):
        output_path(run, "/etc/passwd")
    (tmp_path / "outside").mkdir()
    run.mkdir()
    (run / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(OutputPathError):
        output_path(run, "link", "x.png")


# ---------------------------------------------------------------- 2: label leak
@pytest.mark.parametrize("name", ["Target", "TARGET", "Subject_ID", "Diagnosis", "Split"])
def test_column_equal_to_a_reserved_one_up_to_case_is_refused(tiny_cohort: Path,
                                                              name: str) -> None:
    def change(frame: pd.DataFrame) -> None:
        frame[name] = frame["target"] if name.lower() == "target" else frame["subject_id"]

    problems = _problems(_edit(tiny_cohort, change))
    assert len(problems) == 1
    assert f"`{name}`" in problems[0] and f"`{name.lower()}`" in problems[0]
    assert "reserved" in problems[0] and "rename or drop" in problems[0]


def test_clinical_copy_of_the_target_on_the_training_split_is_refused(
        tiny_cohort: Path) -> None:
    def change(frame: pd.DataFrame) -> None:
        frame["label_copy"] = (pd.to_numeric(frame["target"]) * 30 + 2).round(6).astype(str)

    from gazimed_lab.data.splits import check_training_splits

    cohort = read_manifest(_edit(tiny_cohort, change), check_images=False)
    table = cohort.table.assign(split=["train"] * 10 + ["val"] * 3 + ["test"] * 3)
    splits = {name: table[table["split"] == name] for name in ("train", "val", "test")}
    with pytest.raises(SplitError, match=r"`label_copy` must not copy the target.*"
                                         r"correlation 1\.000 .*train split"):
        check_training_splits(splits, cohort.clinical_columns, manifest="m.csv")
    fine = [c for c in cohort.clinical_columns if c != "label_copy"]
    check_training_splits(splits, fine, manifest="m.csv")


# ---------------------------------------------------------------- 3: short rows
def test_row_with_one_field_fewer_than_the_header_is_refused(tiny_cohort: Path) -> None:
    lines = tiny_cohort.read_text().splitlines()
    n_fields = len(lines[0].split(","))
    lines[3] = lines[3].rsplit(",", 1)[0]  # drop the last cell: data row 3
    tiny_cohort.write_text("\n".join(lines) + "\n")
    problems = _problems(tiny_cohort)
    assert problems == [
        f"`fields per manifest row` must be {n_fields} (the header's count), got "
        f"{n_fields - 1} (row 3); fix: quote cells that contain commas, and give every row "
        "one cell per column (empty cells are fine)"]


# ---------------------------------------------------------------- 4: one class
def _splits(targets: dict[str, list[float]]) -> dict[str, pd.DataFrame]:
    out = {}
    for name, values in targets.items():
        out[name] = pd.DataFrame({"subject_id": [f"{name}{i}" for i in range(len(values))],
                                  "target": values, "age": np.arange(len(values)) % 3})
    return out


def test_training_targets_all_in_one_class_are_refused() -> None:
    from gazimed_lab.data.splits import check_training_splits

    splits = _splits({"train": [0.1, 0.2, 0.3, 0.4], "val": [0.1, 0.9], "test": [0.2, 0.8]})
    with pytest.raises(SplitError, match=r"`train split targets` must hold both classes "
                                         r"\(target > 0\.5 and <= 0\.5\), got 4 <= 0\.5 and 0 "
                                         r"> 0\.5 \(m\.csv\)"):
        check_training_splits(splits, ["age"], manifest="m.csv")
    same = _splits({"train": [0.7] * 4, "val": [0.1, 0.9], "test": []})
    with pytest.raises(SplitError, match="train split targets"):
        check_training_splits(same, [], manifest="m.csv")


def test_validation_split_of_one_class_is_refused_when_selecting_on_auroc() -> None:
    from gazimed_lab.data.splits import check_training_splits

    splits = _splits({"train": [0.1, 0.9, 0.2, 0.8], "val": [0.1, 0.2], "test": [0.3]})
    with pytest.raises(SplitError, match=r"`val split targets` must hold both classes.*"
                                         r"got 2 <= 0\.5 and 0 > 0\.5.*val/auroc"):
        check_training_splits(splits, [], manifest="m.csv", monitor="val/auroc")
    check_training_splits(splits, [], manifest="m.csv", monitor="val/loss")
    check_training_splits(_splits({"train": [0.1, 0.9], "val": [], "test": []}), [])


def test_train_and_evaluate_refuses_a_one_class_cohort_before_any_checkpoint(
        tiny_cohort: Path, tmp_path: Path) -> None:
    from conftest import cohort_config

    from gazimed_lab.runner import train_and_evaluate

    _edit(tiny_cohort, lambda f: f.assign(target=["0.2"] * len(f)))
    cfg = cohort_config(tiny_cohort, tmp_path, "trainer.max_epochs=1")
    with pytest.raises(SplitError, match=r"`train split targets` must hold both classes.*"
                                         r"got \d+ <= 0\.5 and 0 > 0\.5"):
        train_and_evaluate(cfg)
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()
    assert not (tmp_path / "cache").exists()  # refused before the volumes were cached


def test_plain_trainer_fit_refuses_a_one_class_val_split_under_auroc(
        tiny_cohort: Path, tmp_path: Path) -> None:
    from conftest import cohort_config

    from gazimed_lab import AlzheimersLightningModule, MNIDataModule, create_trainer

    # A fixed split column whose val split holds two negatives (targets 0.1 and 0.5).
    split = ["train"] * 16
    split[0], split[1], split[14], split[15] = "val", "val", "test", "test"
    _edit(tiny_cohort, lambda f: f.assign(split=split))
    cfg = cohort_config(tiny_cohort, tmp_path, "trainer.max_epochs=1",
                        "trainer.enable_progress_bar=false")
    dm = MNIDataModule(cfg)
    assert len(dm.splits["val"]) == 2  # reading the splits (QA, notebooks) is not refused
    trainer = create_trainer(cfg)
    with pytest.raises(SplitError, match=r"`val split targets` must hold both classes.*"
                                         r"got 2 <= 0\.5 and 0 > 0\.5.*val/auroc"):
        trainer.fit(AlzheimersLightningModule(cfg), datamodule=dm)
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))
    # Selecting on the loss instead, the same splits train.
    loss = cohort_config(tiny_cohort, tmp_path, "trainer.monitor=val/loss",
                         "trainer.monitor_mode=min")
    MNIDataModule(loss).check_for_training()


# ---------------------------------------------------------------- 5: off-MNI images
def _mri() -> np.ndarray:
    rng = np.random.default_rng(0)
    return template_on_grid("t1", GRID) + rng.normal(0, 0.01, GRID.shape)


def test_mri_50mm_off_fails_brain_coverage(tmp_path: Path) -> None:
    affine = GRID.affine.copy()
    affine[1, 3] += 50.0
    path = write_nifti(tmp_path / "shifted.nii.gz", _mri(), affine)
    assert brain_coverage(path, GRID) < 0.7
    with pytest.raises(ImageError, match=r"`mri brain coverage` must be >= 0\.8.*shifted"):
        conform_to_grid(path, GRID, what="mri")
    good = write_nifti(tmp_path / "good.nii.gz", _mri(), GRID.affine)
    assert brain_coverage(good, GRID) > 0.95


def test_qa_reports_the_50mm_off_mri_as_an_error(tiny_cohort: Path) -> None:
    from gazimed_lab.data.qa import run_qa

    row = pd.read_csv(tiny_cohort).iloc[0]
    path = tiny_cohort.parent / row["mri"]
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[1, 3] += 50.0
    write_nifti(path, np.asarray(img.dataobj), affine)
    _edit(tiny_cohort, lambda f: f.assign(pet=["" if i == 0 else p
                                               for i, p in enumerate(f["pet"])]))
    report = run_qa(tiny_cohort, GRID)
    assert not report.ok
    assert any("`mri brain coverage`" in e and "sub-000" in e for e in report.errors)


def test_flagged_images_can_be_accepted_explicitly(tmp_path: Path) -> None:
    affine = GRID.affine.copy()
    affine[1, 3] += 50.0
    path = write_nifti(tmp_path / "shifted.nii.gz", _mri(), affine)
    with pytest.warns(UserWarning, match="accepted because data.accept_flagged_images"):
        data, _ = conform_to_grid(path, GRID, what="mri", accept_flagged=True)
    assert data.shape == GRID.shape


def _move_mri(manifest: Path, sid: str, affine_of: Callable[[np.ndarray, tuple[int, ...]],
                                                           np.ndarray],
              flip: bool = False) -> Path:
    """Rewrite ``sid``'s MRI with another affine (data flipped along x when ``flip``)."""
    path = manifest.parent / "mri" / f"{sid}_T1w.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    write_nifti(path, data[::-1] if flip else data, affine_of(img.affine, data.shape))
    return path


def _shifted(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = affine.copy()
    out[1, 3] += 50.0
    return out


def test_flagged_image_stops_training_unless_accepted_and_recorded(
        tiny_cohort: Path, tmp_path: Path) -> None:
    from conftest import cohort_config

    from gazimed_lab import MNIDataModule

    path = _move_mri(tiny_cohort, "sub-003", _shifted)  # sub-003 has no PET
    with pytest.raises(ManifestError, match=r"subject `sub-003`: `mri brain coverage` must be "
                                            r">= 0\.8.*accept_flagged_images=true"):
        MNIDataModule(cohort_config(tiny_cohort, tmp_path)).setup()
    assert not (tmp_path / "run" / "qa" / "accepted_flagged.csv").exists()

    accepted = cohort_config(tiny_cohort, tmp_path, "data.accept_flagged_images=true")
    MNIDataModule(accepted).setup()
    table = pd.read_csv(tmp_path / "run" / "qa" / "accepted_flagged.csv")
    assert list(table[["subject_id", "modality", "file"]].itertuples(index=False, name=None)) \
        == [("sub-003", "mri", str(path))]
    assert table["flag"].str.contains("`mri brain coverage` must be >= 0.8").all()
    assert table["split"].isin(["train", "val", "test"]).all()

    # The volume is cached now; the switch is checked on every read, not only on a build.
    with pytest.raises(ManifestError, match=r"subject `sub-003`: `mri brain coverage`"):
        MNIDataModule(cohort_config(tiny_cohort, tmp_path, "system.run_dir=" +
                                    str(tmp_path / "again"))).setup()


def test_resampling_done_for_training_is_recorded_in_the_run_folder(
        tiny_cohort: Path, tmp_path: Path) -> None:
    from conftest import cohort_config

    from gazimed_lab import MNIDataModule

    def flipped(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, shape[0] - 1  # same world positions, x axis reversed
        return affine @ flip

    path = _move_mri(tiny_cohort, "sub-003", flipped, flip=True)
    MNIDataModule(cohort_config(tiny_cohort, tmp_path)).setup()
    table = pd.read_csv(tmp_path / "run" / "qa" / "resampled.csv")
    assert list(table["subject_id"]) == ["sub-003"] and list(table["file"]) == [str(path)]
    assert table.loc[0, "grid_action"].startswith("resampled from (40, 48, 40) 4x4x4 mm RAS")
    assert not (tmp_path / "run" / "qa" / "accepted_flagged.csv").exists()


# ---------------------------------------------------------------- 6: output = input
def test_predict_output_equal_to_an_input_is_refused(tiny_cohort: Path, tmp_path: Path) -> None:
    from gazimed_lab.runner import predict_manifest

    before = tiny_cohort.read_bytes()
    with pytest.raises(OutputPathError, match=r"`out` must not be an input, got the manifest"):
        predict_manifest(tmp_path / "model.ckpt", tiny_cohort, out=tiny_cohort)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    with pytest.raises(OutputPathError, match=r"got the checkpoint"):
        predict_manifest(ckpt, tiny_cohort, out=ckpt)
    with pytest.raises(OutputPathError, match=r"got a directory"):
        predict_manifest(ckpt, tiny_cohort, out=tmp_path)
    assert tiny_cohort.read_bytes() == before and ckpt.read_bytes() == b"weights"
    with pytest.raises(OutputPathError):
        check_not_input(tiny_cohort.parent / "." / tiny_cohort.name, {"manifest": tiny_cohort})


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    out.write_text("old\n")

    def half(path: Path) -> None:
        path.write_text("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"`predictions` could not be written to .*scores\.csv: "
                                      r"the disk is full"):
        atomic_write(out, half, "predictions")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]
    atomic_write(out, lambda p: p.write_text("new\n"))
    assert out.read_text() == "new\n"


# ---------------------------------------------------------------- 7: pipeline rerun
def _notebook(path: Path, source: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'run_dir = ""  # run folder\npreset = ""  # preset\nfail = False  # fail')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture
def fake_notebooks(tmp_path: Path) -> Path:
    src = tmp_path / "nb"
    src.mkdir()
    for name in ("a_first", "b_second", "c_third"):
        body = (f"from pathlib import Path\n"
                f"with open(Path(run_dir) / 'ran.txt', 'a') as fh:\n"
                f"    fh.write('{name}\\n')\n")
        if name == "c_third":
            body += "assert not fail, 'failing on purpose'\n"
        _notebook(src / f"{name}.ipynb", body)
    return src


def test_pipeline_rerun_continues_from_the_first_unfinished_notebook(
        fake_notebooks: Path, tmp_path: Path) -> None:
    from gazimed_lab.pipeline import PipelineError, run_pipeline

    names = ("a_first", "b_second", "c_third")
    run = tmp_path / "run"
    with pytest.raises(PipelineError, match=r"`c_third` failed.*rerun the same command to "
                                            r"continue from `c_third`"):
        run_pipeline(run, parameters={"fail": True}, notebooks=names, source_dir=fake_notebooks)
    good_b = (run / "notebooks" / "b_second.ipynb").read_bytes()
    assert not (run / "notebooks" / "c_third.ipynb").exists()  # the failed one is set apart
    assert (run / "notebooks" / "c_third.failed.ipynb").is_file()
    state = json.loads((run / "pipeline_state.json").read_text())
    assert list(state["finished"]) == ["a_first", "b_second"]
    # A rerun with other parameters names the commands that continue or restart.
    with pytest.raises(FileExistsError, match=r"gazimed-lab pipeline --run-dir .*run "
                                              r"--preset cpu-demo -p fail=true.*--overwrite"):
        run_pipeline(run, parameters={"fail": False}, notebooks=names,
                     source_dir=fake_notebooks)
    # Killed mid-notebook: a partial output lies around; the same command continues.
    (run / "notebooks" / ".c_third.partial.ipynb").write_text("{")
    (fake_notebooks / "c_third.ipynb").write_text(
        (fake_notebooks / "c_third.ipynb").read_text().replace("assert not fail", "assert True"))
    summary = run_pipeline(run, parameters={"fail": True}, notebooks=names,
                           source_dir=fake_notebooks)
    assert (run / "ran.txt").read_text().split() == ["a_first", "b_second", "c_third",
                                                      "c_third"]
    assert summary["kept"] == ["a_first", "b_second"]
    assert (run / "notebooks" / "b_second.ipynb").read_bytes() == good_b
    assert (run / "notebooks" / "c_third.ipynb").is_file()
    assert not (run / "notebooks" / "c_third.failed.ipynb").exists()
    assert not (run / "notebooks" / ".c_third.partial.ipynb").exists()
    assert (run / "pipeline.json").is_file()


# ---------------------------------------------------------------- weak: NA spellings
def test_na_subject_id_and_none_pet_path_are_read_as_written(tiny_cohort: Path) -> None:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[0, "subject_id"] = "NA"
        frame.loc[1, "pet"] = "None"  # a file named None
        frame.loc[2, "feat_0"] = "NA"  # a clinical value: still missing

    root = tiny_cohort.parent
    (root / "None").write_bytes((root / "pet" / "sub-001_pet.nii.gz").read_bytes())
    cohort = read_manifest(_edit(tiny_cohort, change), check_images=False)
    assert cohort.subject_ids[0] == "NA"
    assert cohort.table.loc[1, "pet"] == str(root / "None")
    assert np.isnan(cohort.table.loc[2, "feat_0"])


# ---------------------------------------------------------------- weak: directories as files
def test_a_directory_where_a_file_is_expected_is_called_a_directory(
        tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gazimed_lab.cli import main
    from gazimed_lab.config import ConfigError, load_config
    from gazimed_lab.runner import _resume_path

    def change(frame: pd.DataFrame) -> None:
        frame.loc[2, "mri"] = "mri"  # the folder of the MRI files

    problems = _problems(_edit(tiny_cohort, change))
    assert len(problems) == 1
    assert problems[0].startswith("`mri` must be an existing NIfTI file, got a directory (")
    assert "row 3, subject `sub-002`" in problems[0]
    with pytest.raises(ManifestError, match=r"`manifest` must be an existing CSV file, got a "
                                            r"directory"):
        read_manifest(tiny_cohort.parent)
    (tmp_path / "conf.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"config file must be an existing YAML file, got a "
                                          r"directory \(.*conf\.yaml\)"):
        load_config(tmp_path / "conf.yaml")
    with pytest.raises(FileNotFoundError, match=r"`resume` must be a checkpoint file, got a "
                                                r"directory"):
        _resume_path(tmp_path, tmp_path)
    assert main(["train", "--config", str(tmp_path / "conf.yaml")]) == 2
    assert "got a directory" in capsys.readouterr().err
    assert main(["predict", "--ckpt", str(tmp_path), "--manifest", str(tiny_cohort),
                 "--out", str(tmp_path / "scores.csv")]) == 2
    err = capsys.readouterr().err
    assert "`ckpt` must be a checkpoint file, got a directory" in err
    assert "Traceback" not in err


def test_max_epochs_zero_is_refused_in_the_config() -> None:
    from gazimed_lab.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"`trainer.max_epochs` must be >= 1 \(or -1: until "
                                          r"early stopping\), got 0"):
        load_config("cpu-demo", overrides=["trainer.max_epochs=0"])
    assert load_config("cpu-demo", overrides=["trainer.max_epochs=-1"]).trainer.max_epochs == -1


# ---------------------------------------------------------------- weak: disk and folders
@pytest.mark.parametrize(("error", "cause"), [
    (OSError(28, "No space left on device"), "the disk is full"),
    (PermissionError(13, "Permission denied"), "permission denied"),
    (OSError(30, "Read-only file system"), "a read-only file system"),
])
def test_write_failures_in_the_cli_are_one_line_naming_path_and_cause(
        tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], error: OSError, cause: str) -> None:
    from gazimed_lab.cli import main

    out = tmp_path / "qa"

    def refuse(self: pd.DataFrame, path: object, *args: object, **kwargs: object) -> None:
        raise type(error)(error.errno, error.strerror, str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", refuse)
    assert main(["qa", str(tiny_cohort), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"gazimed-lab qa: error: `{out / 'qa_table.csv'}` could not be "
                          f"written: {cause}; ")


def test_predict_out_that_is_a_directory_is_one_line(
        tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gazimed_lab.cli import main

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    assert main(["predict", "--ckpt", str(ckpt), "--manifest", str(tiny_cohort),
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "`out` must be a file path, got a directory" in err


def test_cache_writes_failing_for_lack_of_space_are_reported_once_as_disk_full(
        tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import cohort_config

    from gazimed_lab import MNIDataModule
    from gazimed_lab.data.cache import CacheFullError

    def short_write(fh: object, arr: np.ndarray, **kwargs: object) -> None:
        raise OSError(f"{arr.nbytes} requested and {arr.nbytes // 2} written")

    monkeypatch.setattr(np, "save", short_write)
    with pytest.raises(CacheFullError, match=r"`data.cache_dir` must have room for the "
                                             r"preprocessed volumes, got a full disk at .*cache"
                                             r".*MiB free.*set data.cache_dir") as info:
        MNIDataModule(cohort_config(tiny_cohort, tmp_path)).setup()
    assert "subject" not in str(info.value) and "requested" not in str(info.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing partial


# ---------------------------------------------------------------- weak: qa = training
def test_qa_reports_what_training_refuses_for_a_negative_pet(tiny_cohort: Path,
                                                             tmp_path: Path) -> None:
    from conftest import cohort_config

    from gazimed_lab import MNIDataModule
    from gazimed_lab.data.qa import run_qa

    path = tiny_cohort.parent / "pet" / "sub-002_pet.nii.gz"
    img = nib.load(str(path))
    write_nifti(path, np.asarray(img.dataobj) - 10.0, img.affine)  # structure kept, all < 0
    report = run_qa(tiny_cohort, GRID)
    found = [e for e in report.errors if "sub-002" in e]
    assert len(found) == 1 and found[0].startswith("`PET reference region `whole_brain` mean` "
                                                   "must be > 0, got -")
    with pytest.raises(ManifestError) as info:
        MNIDataModule(cohort_config(tiny_cohort, tmp_path)).setup()
    refused = [p for p in info.value.problems if "sub-002" in p]
    assert len(refused) == 1
    assert found[0].split(" (grid")[0] in refused[0]  # the same check, the same words


# ---------------------------------------------------------------- weak: not scalar volumes
_RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


@pytest.mark.parametrize(("dtype", "got"), [
    (np.complex64, r"got complex64 data"),
    (_RGB, r"got an RGB volume, expected a scalar volume"),
])
@pytest.mark.parametrize("from_file", [True, False])
def test_complex_and_rgb_volumes_are_refused_as_not_scalar(
        tmp_path: Path, dtype: np.dtype, got: str, from_file: bool) -> None:
    from gazimed_lab.data.images import load_volume, read_nifti

    data = np.ones((8, 8, 8), dtype=dtype)
    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    source = path if from_file else nib.Nifti1Image(data, np.eye(4))
    where = "odd.nii.gz" if from_file else "in-memory image"
    pattern = rf"`pet` must be a real-valued scalar volume, {got} \(.*{where}\); fix: "
    with pytest.raises(ImageError, match=pattern) as info:
        read_nifti(source, "pet")
    assert "truncated" not in str(info.value)
    with pytest.raises(ImageError, match=pattern):
        load_volume(source, "pet")


# ---------------------------------------------------------------- weak: accepted, but warned
def _hostile_but_usable(manifest: Path) -> Path:
    """Empty column, a shared PET, swapped MRI/PET, a constant PET, a negative MRI, a 2-subject
    val split: each accepted (no error), each worth a warning."""
    root = manifest.parent
    brain = template_on_grid("brain_mask", GRID) > 0
    write_nifti(root / "pet" / "sub-002_pet.nii.gz", brain * 5.0, GRID.affine)
    mri = root / "mri" / "sub-004_T1w.nii.gz"
    write_nifti(mri, np.asarray(nib.load(str(mri)).dataobj) - 10.0, GRID.affine)

    def change(frame: pd.DataFrame) -> None:
        frame["feat_empty"] = ""
        frame.loc[6, "pet"] = frame.loc[5, "pet"]
        frame.loc[1, ["mri", "pet"]] = frame.loc[1, ["pet", "mri"]].to_numpy()
        frame["split"] = ["train"] * 11 + ["val"] * 2 + ["test"] * 3

    return _edit(manifest, change)


def test_suspicious_cohort_is_warned_about_in_qa_and_when_training_starts(
        tiny_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from conftest import cohort_config

    from gazimed_lab import MNIDataModule
    from gazimed_lab.data.qa import cohort_warnings, run_qa

    assert run_qa(tiny_cohort, GRID).warnings == []  # a clean cohort: nothing to say
    _hostile_but_usable(tiny_cohort)
    report = run_qa(tiny_cohort, GRID, out_dir=tmp_path / "qa")
    assert report.ok, report.errors  # warnings, not errors
    found = report.warnings
    assert (tmp_path / "qa" / "warnings.txt").read_text() == "".join(f"{w}\n" for w in found)
    expected = [
        r"^`feat_empty` must be a column with a value in at least one row, got an entirely "
        r"empty column \(16 of 16 rows empty\); it is dropped",
        r"^`pet` must be a file of its own .* got one file used 2 times: row 6 \(subject "
        r"`sub-005`, pet\), row 7 \(subject `sub-006`, pet\) \(.*sub-005_pet\.nii\.gz\)",
        r"^`mri/pet` must be the T1 MRI in `mri` and the PET in `pet`, got columns that look "
        r"swapped: .*row 2, subject `sub-001`\); fix: swap",
        r"^`pet` must be a volume that varies inside the brain, got a constant PET \(std 0 .*"
        r"value 5\) \(.*sub-002_pet\.nii\.gz; row 3, subject `sub-002`\)",
        r"^`mri` must be non-negative intensities .* got 100% of the MNI brain mask below 0 .*"
        r"sub-004_T1w\.nii\.gz; row 5, subject `sub-004`\)",
        r"^`val split` must be >= 3 subjects, got 2 subjects \(`sub-011`, `sub-012`\)",
    ]
    assert len(found) == len(expected), found
    for pattern, text in zip(expected, found, strict=True):
        assert re.search(pattern, text), (pattern, text)

    # Training: the same words, logged at WARNING and warned once, and training goes on.
    caplog.set_level(logging.WARNING, logger="gazimed_lab")
    module = MNIDataModule(cohort_config(tiny_cohort, tmp_path))
    with pytest.warns(UserWarning, match=r"6 cohort warning\(s\)") as record:
        module.check_for_training()
        module.check_for_training()  # once per data module
    assert len([w for w in record if "cohort warning" in str(w.message)]) == 1
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all(text in logged for text in found)

    # A requested clinical column that is empty is kept but says so.
    cohort = read_manifest(tiny_cohort, clinical_columns=["feat_0", "feat_empty"],
                           check_images=False)
    assert "it is kept because it was requested (data.clinical_columns) but imputed in every " \
           "row" in cohort_warnings(cohort, volumes={})[0]
