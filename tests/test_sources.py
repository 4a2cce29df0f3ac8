"""`gazimed-lab manifest`: manifests from a Clinica CAPS tree and from file-name patterns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_nifti

from gazimed_lab.cli import main
from gazimed_lab.data.manifest import read_manifest
from gazimed_lab.data.source_table import SourceError, parse_target_map
from gazimed_lab.data.sources import (
    compile_pattern,
    manifest_from_caps,
    manifest_from_pattern,
    report_path,
    scan_caps,
)

AFFINE = np.diag([-4.0, 4.0, 4.0, 1.0])
SPACE = "space-MNI152NLin2009cSym"


def _volume(path: Path, seed: int = 0) -> Path:
    """A tiny valid volume (positive, finite, 3D) on one grid shared by MRI and PET."""
    data = np.random.default_rng(seed).uniform(0.5, 1.5, (5, 6, 5))
    return write_nifti(path, data, AFFINE)


def t1_name(sub: str, ses: str, crop: bool = False) -> str:
    return f"{sub}_{ses}_T1w_{SPACE}{'_desc-Crop' if crop else ''}_res-1x1x1_T1w.nii.gz"


def pet_name(sub: str, ses: str, tracer: str = "18FFDG", suvr: str = "cerebellumPons2",
             old: bool = True, crop: bool = False) -> str:
    middle = "_pet" if old else ""  # Clinica before / after its 2023 rename
    return (f"{sub}_{ses}_trc-{tracer}{middle}_{SPACE}{'_desc-Crop' if crop else ''}"
            f"_res-1x1x1_suvr-{suvr}_pet.nii.gz")


def caps_session(caps: Path, sub: str, ses: str, t1: bool = True, pet: bool = True,
                 **pet_kw: object) -> None:
    folder = caps / "subjects" / sub / ses
    if t1:
        _volume(folder / "t1_linear" / t1_name(sub, ses))
        _volume(folder / "t1_linear" / t1_name(sub, ses, crop=True))
        (folder / "t1_linear" / f"{sub}_{ses}_T1w_{SPACE}_res-1x1x1_affine.mat").write_text("x")
    if pet:
        _volume(folder / "pet_linear" / pet_name(sub, ses, **pet_kw), seed=1)  # type: ignore[arg-type]


def write_tsv(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture
def caps(tmp_path: Path) -> Path:
    """Five subjects, one session each: sub-04 T1 only, sub-05 PET only, sub-03 also AV45."""
    root = tmp_path / "caps"
    for i in (1, 2, 3):
        caps_session(root, f"sub-0{i}", "ses-M000", old=i != 2)  # sub-02: the new file name
    caps_session(root, "sub-03", "ses-M000", t1=False, tracer="18FAV45", suvr="pons")
    caps_session(root, "sub-04", "ses-M000", pet=False)
    caps_session(root, "sub-05", "ses-M000", t1=False)
    caps_session(root, "sub-06", "ses-M000")  # images, no TSV row
    return root


def participants(tmp_path: Path) -> Path:
    return write_tsv(tmp_path / "participants.tsv", [
        {"participant_id": "sub-01", "diagnosis": "CN", "age": 71.5, "sex": "F", "mmse": 29,
         "target": 0.1},
        {"participant_id": "sub-02", "diagnosis": "AD", "age": 80, "sex": "M", "mmse": 21,
         "target": 0.9},
        {"participant_id": "sub-03", "diagnosis": "MCI", "age": 66, "sex": "M", "mmse": "n/a",
         "target": 0.5},
        {"participant_id": "sub-04", "diagnosis": "CN", "age": 70, "sex": "F", "mmse": 30,
         "target": ""},
        {"participant_id": "sub-05", "diagnosis": "AD", "age": 75, "sex": "F", "mmse": 20,
         "target": 1},
        {"participant_id": "sub-07", "diagnosis": "CN", "age": 60, "sex": "M", "mmse": 30,
         "target": 0},
    ])


def test_caps_tree_becomes_a_manifest_the_reader_accepts(caps: Path, tmp_path: Path) -> None:
    out = tmp_path / "cohort" / "manifest.csv"
    result = manifest_from_caps(caps, out, participants(tmp_path))
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["subject_id", "mri", "pet", "target", "diagnosis", "age",
                                   "sex", "mmse"]  # one session each: no session_id column
    assert list(table["subject_id"]) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert table.loc[3, "pet"] == "" and table.loc[3, "target"] == ""  # sub-04: T1 only
    assert table.loc[0, "mri"].startswith("../caps/subjects/sub-01/ses-M000/t1_linear/")
    assert "desc-Crop" not in "".join(table["mri"])  # the uncropped images by default
    assert table.loc[1, "pet"].endswith(pet_name("sub-02", "ses-M000", old=False))
    assert table.loc[2, "pet"].endswith(pet_name("sub-03", "ses-M000"))  # FDG, not AV45
    for column in ("mri", "pet"):  # relative to the manifest's folder
        assert all((out.parent / p).is_file() for p in table[column] if p)
    cohort = read_manifest(out, require_targets=False)
    assert cohort.clinical_columns == ["age", "mmse"] and list(cohort.has_pet) == [1, 1, 1, 0]

    report = pd.read_csv(report_path(out), dtype=str, keep_default_na=False)
    assert report_path(out) == result.report_file == out.parent / "manifest_report.csv"
    kinds = report.groupby("kind")["subject_id"].apply(list).to_dict()
    assert kinds["pet_without_mri"] == ["sub-05"]
    assert kinds["mri_without_pet"] == ["sub-04"]
    assert kinds["tsv_row_without_images"] == ["sub-05", "sub-07"]  # sub-05: PET only
    assert kinds["images_without_tsv_row"] == ["sub-06"]
    assert kinds["missing_target"] == ["sub-04"]
    ignored = report[report["kind"] == "ignored_file"]
    assert len(ignored) == 6  # 5 cropped T1s and the AV45 PET; the .mat files are not images
    av45 = ignored[ignored["file"].str.contains("18FAV45")]
    assert av45["detail"].tolist() == ["tracer `18FAV45`, not `18FFDG` (--tracer)"]
    pet_only = report.loc[report["kind"] == "pet_without_mri", "file"].iloc[0]
    assert pet_only.endswith(pet_name("sub-05", "ses-M000")) and Path(pet_only).is_file()
    summary = result.summary()
    assert "pet_without_mri: 1" in summary and f"sub-05 ses-M000: {pet_only}" in summary
    assert "4 rows, 4 subjects, 3 with PET" in summary


def test_cropped_images_tracer_and_ids_without_bids_prefixes(caps: Path, tmp_path: Path) -> None:
    tsv = write_tsv(tmp_path / "p.tsv", [{"participant_id": "03", "target": 0.5}])
    result = manifest_from_caps(caps, tmp_path / "m.csv", tsv, cropped=True, tracer="18fav45")
    assert list(result.table["subject_id"]) == ["sub-03"]  # `03` read as `sub-03`
    assert "desc-Crop" in result.table.loc[0, "mri"]
    assert result.table.loc[0, "pet"] == ""  # its AV45 PET is not cropped: not used
    assert "not desc-Crop (--cropped uses the cropped images)" in set(result.report["detail"])


def test_several_suvr_regions_need_a_choice(caps: Path, tmp_path: Path) -> None:
    caps_session(caps, "sub-01", "ses-M000", t1=False, suvr="pons")
    with pytest.raises(SourceError, match=r"`PET images per session` must be one, got 2: .*"
                       r"suvr-cerebellumPons2_pet.*suvr-pons_pet.*subject `sub-01`, session "
                       r"`ses-M000`\); fix: .*--suvr"):
        manifest_from_caps(caps, tmp_path / "m.csv")
    result = manifest_from_caps(caps, tmp_path / "m.csv", suvr="pons")
    pets = result.table.set_index("subject_id")["pet"]
    assert pets["sub-01"].endswith("suvr-pons_pet.nii.gz") and pets["sub-02"] == ""


def test_several_sessions_write_a_session_id_column(tmp_path: Path) -> None:
    caps = tmp_path / "caps"
    for ses in ("ses-M000", "ses-M012"):
        caps_session(caps, "sub-01", ses)
    caps_session(caps, "sub-02", "ses-M000", pet=False)
    tsv = write_tsv(tmp_path / "sessions.tsv", [
        {"participant_id": "sub-01", "session_id": "ses-M000", "target": 0.2, "mmse": 28},
        {"participant_id": "sub-01", "session_id": "ses-M012", "target": 0.6, "mmse": 24},
        {"participant_id": "sub-02", "session_id": "ses-M000", "target": 0.0, "mmse": 30},
    ])
    out = tmp_path / "m.csv"
    manifest_from_caps(caps, out, tsv)
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["subject_id", "session_id", "mri", "pet", "target", "mmse"]
    assert table[["subject_id", "session_id", "target"]].values.tolist() == [
        ["sub-01", "ses-M000", "0.2"], ["sub-01", "ses-M012", "0.6"], ["sub-02", "ses-M000", "0.0"]]
    assert "ses-M012" in table.loc[1, "mri"] and "ses-M012" in table.loc[1, "pet"]

    baseline = manifest_from_caps(caps, out, tsv, session="ses-M000", overwrite=True)
    assert "session_id" not in baseline.table.columns and len(baseline.table) == 2
    ignored = baseline.report[baseline.report["kind"] == "ignored_file"]
    other = ignored[ignored["detail"].str.startswith("session")]
    assert set(other["session_id"]) == {"ses-M012"}
    assert list(other["detail"]) == ["session `ses-M012`, not `ses-M000` (--session)"] * 2
    assert other["file"].str.contains("t1_linear|pet_linear").all()  # its T1 and its PET
    assert "tsv_row_without_images" not in set(baseline.report["kind"])  # other sessions
    read_manifest(out)


def test_subject_level_tsv_applies_to_every_session(tmp_path: Path) -> None:
    caps = tmp_path / "caps"
    for ses in ("ses-M000", "ses-M006"):
        caps_session(caps, "sub-01", ses)
    tsv = write_tsv(tmp_path / "p.tsv", [{"subject_id": "sub-01", "sex": "F", "target": 0.3}])
    result = manifest_from_caps(caps, tmp_path / "m.csv", tsv)
    assert result.table[["session_id", "sex", "target"]].values.tolist() == [
        ["ses-M000", "F", "0.3"], ["ses-M006", "F", "0.3"]]


def fsl_tree(root: Path, subjects: tuple[str, ...] = ("s01", "s02", "s03")) -> Path:
    for i, sid in enumerate(subjects):
        _volume(root / sid / "anat" / f"{sid}_T1_mni.nii.gz")
        if i != 1:
            _volume(root / sid / "pet" / f"{sid}_pet_mni.nii.gz", seed=1)
    return root


def test_pattern_layout_pairs_by_subject(tmp_path: Path) -> None:
    root = fsl_tree(tmp_path / "fsl")
    _volume(root / "s03" / "anat" / "s01_T1_mni.nii.gz")  # a stray file: s01 in s03's folder
    tsv = write_tsv(tmp_path / "clinical.tsv", [
        {"subject_id": s, "diagnosis": d, "target": t}
        for s, d, t in (("s01", "CN", 0), ("s02", "AD", 1), ("s03", "MCI", 0.5))])
    out = tmp_path / "out" / "manifest.csv"
    result = manifest_from_pattern(root, out, "{subject}/anat/{subject}_T1_mni.nii.gz",
                                   "{subject}/pet/{subject}_pet_mni.nii.gz", tsv)
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert table[["subject_id", "mri", "pet"]].values.tolist() == [
        ["s01", "../fsl/s01/anat/s01_T1_mni.nii.gz", "../fsl/s01/pet/s01_pet_mni.nii.gz"],
        ["s02", "../fsl/s02/anat/s02_T1_mni.nii.gz", ""],
        ["s03", "../fsl/s03/anat/s03_T1_mni.nii.gz", "../fsl/s03/pet/s03_pet_mni.nii.gz"]]
    stray = result.report[result.report["kind"] == "ignored_file"]
    assert stray["file"].str.endswith("s03/anat/s01_T1_mni.nii.gz").tolist() == [True]
    assert "a repeated placeholder differs" in stray["detail"].iloc[0]
    assert read_manifest(out).subject_ids == ["s01", "s02", "s03"]
    assert os.path.isabs(result.manifest)


def test_pattern_with_sessions_and_wildcards(tmp_path: Path) -> None:
    root = tmp_path / "spm"
    for sid, ses in (("A1", "bl"), ("A1", "m12"), ("B2", "bl")):
        _volume(root / f"wm_{sid}_{ses}_T1.nii")
        _volume(root / "pet" / ses / f"w_{sid}_fdg_x.nii", seed=1)
    result = manifest_from_pattern(root, tmp_path / "m.csv", "wm_{subject}_{session}_T1.nii",
                                   "pet/{session}/w_{subject}_fdg_*.nii")
    assert result.table[["subject_id", "session_id"]].values.tolist() == [
        ["A1", "bl"], ["A1", "m12"], ["B2", "bl"]]
    assert all(result.table["pet"] != "") and (result.table["target"] == "").all()
    with pytest.raises(SourceError, match=r"`--pet pattern` must be the placeholders of --mri "
                       r"\['subject', 'session'\], got \['subject'\]"):
        manifest_from_pattern(root, tmp_path / "n.csv", "wm_{subject}_{session}_T1.nii",
                              "pet/*/w_{subject}_fdg_x.nii")


def test_two_t1s_for_one_subject_are_named(tmp_path: Path) -> None:
    root = fsl_tree(tmp_path / "fsl")
    _volume(root / "s01" / "anat" / "s01_T1_mni_run2.nii.gz")
    with pytest.raises(SourceError, match=r"`T1 images per session` must be one, got 2: "
                       r".*s01_T1_mni.nii.gz, .*s01_T1_mni_run2.nii.gz \(.*fsl; subject `s01`\)"):
        manifest_from_pattern(root, tmp_path / "m.csv", "{subject}/anat/{subject}_T1_mni*")


@pytest.mark.parametrize(("pattern", "message"), [
    ("{subj}/T1.nii", r"`--mri placeholder` must be \{subject\} or \{session\}, got `\{subj\}`"),
    ("anat/T1_{session}.nii", r"`--mri` must be a pattern with a \{subject\} placeholder"),
    ("/data/{subject}.nii", r"`--mri` must be a pattern relative to the root folder"),
    ("{subject/T1.nii", r"`--mri` must be balanced \{placeholder\} braces, got an unmatched `\{`"),
])
def test_bad_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        compile_pattern(pattern, "--mri")


def test_unsafe_subject_id_from_a_pattern_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _volume(root / "subject 1" / "T1.nii.gz")
    with pytest.raises(SourceError, match=r"`subject id` must be 1-128 characters .*, got "
                       r"`subject 1` \(characters other .*' '\) \(.*T1.nii.gz\)"):
        manifest_from_pattern(root, tmp_path / "m.csv", "{subject}/T1.nii.gz")


def test_tsv_problems_are_each_named(caps: Path, tmp_path: Path) -> None:
    tsv = write_tsv(tmp_path / "bad.tsv", [
        {"participant_id": "sub-01", "Sex": "F", "pet": "x", "target": 1.4},
        {"participant_id": "sub-01", "Sex": "M", "pet": "", "target": "AD"}])
    with pytest.raises(SourceError) as info:
        manifest_from_caps(caps, tmp_path / "m.csv", tsv)
    text = str(info.value)
    assert "`TSV column` must be not `mri` / `pet`" in text and "got `pet`" in text
    assert "`TSV column` must be spelled `sex` exactly (a reserved manifest column), got `Sex`" \
        in text and "fix: rename it to `sex`" in text
    assert not (tmp_path / "m.csv").exists()  # nothing written
    tsv = write_tsv(tmp_path / "bad.tsv", [
        {"participant_id": "sub-01", "target": 1.4}, {"participant_id": "sub-01", "target": "AD"}])
    with pytest.raises(SourceError) as info:
        manifest_from_caps(caps, tmp_path / "m.csv", tsv)
    assert info.value.problems == [
        f"`TSV rows` must be one per subject, got subject `sub-01` in rows 1, 2 ({tsv}); fix: "
        "add a session_id column for several sessions",
        f"`target` must be a number in [0, 1] (or empty), got `1.4` ({tsv}; row 1, subject "
        "`sub-01`); fix: scale it, or map text values with --target-map CN=0,AD=1",
        f"`target` must be a number in [0, 1] (or empty), got `AD` ({tsv}; row 2, subject "
        "`sub-01`); fix: scale it, or map text values with --target-map CN=0,AD=1"]
    write_tsv(tsv, [{"id": "sub-01", "target": 0}])
    with pytest.raises(SourceError, match=r"`TSV id column` must be one of `participant_id`, "
                       r"`subject_id`, got neither among \['id', 'target'\]"):
        manifest_from_caps(caps, tmp_path / "m.csv", tsv)
    tsv.write_text("participant_id,target\nsub-01,0\n")
    with pytest.raises(SourceError, match=r"`TSV` must be tab-separated columns, got a "
                       r"comma-separated header"):
        manifest_from_caps(caps, tmp_path / "m.csv", tsv)
    tsv.write_text("participant_id\ttarget\nsub-01\t0\textra\n")
    with pytest.raises(SourceError, match=r"`fields per TSV row` must be 2 \(the header's "
                       r"count\), got 3 \(.*bad.tsv; row 1\)"):
        manifest_from_caps(caps, tmp_path / "m.csv", tsv)
    with pytest.raises(SourceError, match=r"`TSV` must be an existing file, got a missing path"):
        manifest_from_caps(caps, tmp_path / "m.csv", tmp_path / "none.tsv")


def test_target_from_another_column_never_stays_a_feature(caps: Path, tmp_path: Path) -> None:
    tsv = write_tsv(tmp_path / "p.tsv", [
        {"participant_id": f"sub-0{i}", "diagnosis": dx, "cdr_scaled": c, "mmse": 30 - i}
        for i, dx, c in ((1, "CN", 0.0), (2, "AD", 0.8), (3, "MCI", 0.4))])
    scaled = manifest_from_caps(caps, tmp_path / "a.csv", tsv, target="cdr_scaled")
    assert "cdr_scaled" not in scaled.table.columns  # a copy of the label among the inputs
    assert list(scaled.table["target"]) == ["0.0", "0.8", "0.4"]
    mapped = manifest_from_caps(caps, tmp_path / "b.csv", tsv, target="diagnosis",
                                target_map=parse_target_map("CN=0,MCI=0.5,AD=1"))
    assert list(mapped.table["target"]) == ["0", "1", "0.5"]
    assert list(mapped.table["diagnosis"]) == ["CN", "AD", "MCI"]  # reserved: kept
    with pytest.raises(SourceError, match=r"`diagnosis` must be one of \['AD', 'CN'\] "
                       r"\(--target-map\), got `MCI` \(.*p.tsv; row 3, subject `sub-03`\)"):
        manifest_from_caps(caps, tmp_path / "c.csv", tsv, target="diagnosis",
                           target_map={"CN": 0.0, "AD": 1.0})
    with pytest.raises(SourceError, match=r"`--target` must be a column of the TSV, got "
                       r"`cdr_scale` .*; fix: did you mean `cdr_scaled`\?"):
        manifest_from_caps(caps, tmp_path / "d.csv", tsv, target="cdr_scale")
    with pytest.raises(SourceError, match=r"`--target-map item` must be `<value>=<number in "
                       r"\[0, 1\]>`, got `AD=2`"):
        parse_target_map("CN=0,AD=2")


def test_output_that_exists_or_is_an_input_is_refused(caps: Path, tmp_path: Path) -> None:
    tsv = participants(tmp_path)
    with pytest.raises(ValueError, match=r"`--out` must not be an input, got the TSV"):
        manifest_from_caps(caps, tsv, tsv)
    out = tmp_path / "m.csv"
    out.write_text("hand-edited\n")
    with pytest.raises(FileExistsError, match=r"`--out` must not be an existing manifest.*"
                       r"--overwrite"):
        manifest_from_caps(caps, out, tsv)
    assert out.read_text() == "hand-edited\n"
    with pytest.raises(SourceError, match=r"`CAPS folder` must be a folder holding `subjects/`"):
        scan_caps(tmp_path)
    with pytest.raises(SourceError, match=r"`T1 images` must be at least one, got none"):
        manifest_from_pattern(caps, tmp_path / "n.csv", "{subject}/nothing_here.nii")


def test_cli_manifest_prints_what_it_could_not_pair(caps: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.csv"
    code = main(["manifest", "--caps", str(caps), "--tsv", str(participants(tmp_path)),
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "pet_without_mri: 1" in printed and "images_without_tsv_row: 1" in printed
    assert f"next: gazimed-lab qa {out}" in printed
    assert main(["manifest", "--caps", str(caps), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["manifest", "--caps", str(caps), "--mri", "{subject}.nii", "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "`--mri` / `--pet` patterns must go with --root" in capsys.readouterr().err
    assert main(["manifest", "--root", str(caps), "--suvr", "pons", "--mri", "{subject}.nii",
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert "must go with --caps" in capsys.readouterr().err
    assert main(["manifest", "--out", str(tmp_path / "x.csv")]) == 2
    assert "one of --caps CAPS_DIR or --root DIR" in capsys.readouterr().err


def test_benchmark_tree_is_read_completely(tmp_path: Path) -> None:
    from benchmarks.sources import make_caps_tree, run

    caps, tsv = make_caps_tree(tmp_path / "caps", n_subjects=3, n_sessions=2)
    result = manifest_from_caps(caps, tmp_path / "m.csv", tsv)
    assert len(result.table) == 6 and (result.table["pet"] != "").all()
    assert set(result.report["kind"]) == {"ignored_file"}  # only the cropped copies
    assert len(result.report) == 12 and result.report["detail"].str.contains("uncropped").all()
    timed = run(n_subjects=2, n_sessions=1, repeats=1, work=tmp_path)
    assert timed["rows"] == 2 and len(timed["caps_seconds"]) == len(timed["pattern_seconds"]) == 1
