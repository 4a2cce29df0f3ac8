"""Manifests from pipeline outputs: a Clinica CAPS folder, or any folder and a file-name pattern.

Two ways to find the images, one way to pair them with the clinical table:

* :func:`scan_caps` reads a Clinica CAPS folder (``clinica run t1-linear`` and
  ``clinica run pet-linear``), with the file names of the CAPS specification::

    subjects/<sub>/<ses>/t1_linear/<sub>_<ses>[_<key>-<value>...]_T1w_space-MNI152NLin2009cSym[_desc-Crop]_res-1x1x1_T1w.nii.gz
    subjects/<sub>/<ses>/pet_linear/<sub>_<ses>_trc-<tracer>[_...][_pet]_space-MNI152NLin2009cSym[_desc-Crop]_res-1x1x1_suvr-<region>_pet.nii.gz

  (``_pet_space-`` is the name before Clinica's 2023 rename, ``_space-`` after; both
  are read). The uncropped images are used unless ``cropped=True``; one tracer
  (``18FFDG`` by default, compared without case) and, when a session holds several,
  one SUVR reference region (``suvr``) are kept. Every other NIfTI file in those
  folders is listed as ignored, with the reason.
* :func:`scan_pattern` reads any folder (FSL, SPM, your own layout) through patterns
  relative to it, such as ``{subject}/anat/{subject}_T1_mni.nii.gz``: ``{subject}``
  (required) and ``{session}`` (optional) stand for one or more characters other than
  ``/`` and take the same value wherever they repeat; ``*`` and ``?`` are the usual
  wildcards inside one folder or file name; everything else is literal.

:func:`build_manifest` pairs each (subject, session)'s T1 with its PET and joins the
participants / sessions TSV (:mod:`gazimed_lab.data.source_table`). It never drops
anything silently: a T1 without PET is a row with an empty ``pet``; a PET without a
T1, a TSV row without images, images without a TSV row, an ignored file and a row
without a target are each printed and listed in ``<manifest stem>_report.csv``
(``kind``, ``subject_id``, ``session_id``, ``file``, ``detail``). Paths are written
relative to the manifest's folder. A ``session_id`` column is written when a subject
has several sessions (``session=`` keeps one). Problems that stop the build (two T1s
for one session, an unknown placeholder, a bad target) are collected and raised
together as one :class:`SourceError`, each naming the file, row or column.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gazimed_lab.data.images import problem
from gazimed_lab.data.source_table import (
    REPORT_COLUMNS,
    SourceError,
    join_table,
    read_source_table,
)
from gazimed_lab.paths import atomic_write, check_not_input, check_subject_id, path_state

__all__ = [
    "MNI_SPACE",
    "SourceError",
    "SourceResult",
    "build_manifest",
    "compile_pattern",
    "manifest_from_caps",
    "manifest_from_pattern",
    "report_path",
    "scan_caps",
    "scan_pattern",
]

#: The template space of Clinica's t1-linear and pet-linear outputs.
MNI_SPACE = "MNI152NLin2009cSym"
_ENTITIES = r"(?P<entities>(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*?)"
_T1 = re.compile(rf"(?P<sub>sub-[A-Za-z0-9]+)_(?P<ses>ses-[A-Za-z0-9]+){_ENTITIES}(?:_T1w)?"
                 rf"_space-{MNI_SPACE}(?P<crop>_desc-Crop)?_res-1x1x1_T1w\.nii(?:\.gz)?")
_PET = re.compile(rf"(?P<sub>sub-[A-Za-z0-9]+)_(?P<ses>ses-[A-Za-z0-9]+){_ENTITIES}(?:_pet)?"
                  rf"_space-{MNI_SPACE}(?P<crop>_desc-Crop)?_res-1x1x1_suvr-(?P<suvr>[A-Za-z0-9]+)"
                  r"_pet\.nii(?:\.gz)?")
_NIFTI = (".nii", ".nii.gz")
_PLACEHOLDERS = ("subject", "session")
_IMAGE_COLUMNS = ["subject_id", "session_id", "modality", "file"]


@dataclass
class SourceResult:
    """What :func:`build_manifest` wrote and what it could not pair.

    Attributes
    ----------
    manifest
        The manifest CSV written.
    table
        Its rows (paths as written: relative to the manifest's folder).
    report
        One row per thing not paired or not used: ``kind``, ``subject_id``,
        ``session_id``, ``file``, ``detail`` (see :data:`REPORT_KINDS`).
    report_file
        ``<manifest stem>_report.csv`` beside the manifest.
    """

    manifest: Path
    table: pd.DataFrame
    report: pd.DataFrame
    report_file: Path

    def summary(self, shown: int = 10) -> str:
        """Text for the terminal: what was written, then every kind of report row."""
        table = self.table
        n_subjects = table["subject_id"].nunique()
        sessions = " (several sessions: `session_id` column)" if "session_id" in table else ""
        with_pet = int((table["pet"] != "").sum())
        lines = [f"wrote {self.manifest}: {len(table)} rows, {n_subjects} subjects{sessions}, "
                 f"{with_pet} with PET"]
        if not len(self.report):
            return "\n".join([*lines, "everything was paired and used"])
        lines.append(f"not paired or not used (all listed in {self.report_file}):")
        for kind, rows in self.report.groupby("kind", sort=False):
            lines.append(f"  {kind}: {len(rows)} ({REPORT_KINDS[str(kind)]})")
            for _, row in rows.head(shown).iterrows():
                who = " ".join(v for v in (row["subject_id"], row["session_id"]) if v)
                what = "; ".join(v for v in (row["file"], row["detail"]) if v)
                lines.append(f"    {who or '-'}: {what}")
            if len(rows) > shown:
                lines.append(f"    ... {len(rows) - shown} more")
        return "\n".join(lines)


#: Report kinds and what each means.
REPORT_KINDS: dict[str, str] = {
    "pet_without_mri": "a PET with no T1 of the same subject and session; not in the manifest",
    "mri_without_pet": "a T1 with no PET: a manifest row with an empty `pet`",
    "tsv_row_without_images": "a TSV row with no T1; not in the manifest",
    "images_without_tsv_row": "images of a subject / session the TSV does not list; not in "
                              "the manifest",
    "missing_target": "a manifest row with an empty `target` (fine for prediction; training "
                      "refuses it)",
    "ignored_file": "a file not used, with the reason",
}


def report_path(manifest: str | Path) -> Path:
    """Return the report file written beside a manifest: ``<stem>_report.csv``."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}_report.csv")


def _records(rows: list[dict[str, str]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns).fillna("")


def _folder(path: str | Path, what: str, fix: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SourceError([problem(what, "an existing folder", path_state(folder), str(folder),
                                   fix)])
    return folder.resolve()


# ------------------------------------------------------------------------------ CAPS
def _caps_file(path: Path, modality: str, sub: str, ses: str, tracer: str, suvr: str | None,
               cropped: bool) -> tuple[dict[str, str] | None, str]:
    """Return a CAPS image record, or None and why the file is not used."""
    match = (_T1 if modality == "mri" else _PET).fullmatch(path.name)
    if match is None:
        pipeline = "t1-linear" if modality == "mri" else "pet-linear"
        return None, f"not a {pipeline} output in {MNI_SPACE} (CAPS file name)"
    if (match["sub"], match["ses"]) != (sub, ses):
        return None, f"named for {match['sub']} {match['ses']}, but lies in {sub}/{ses}"
    if bool(match["crop"]) != cropped:
        return None, ("the uncropped image is used (pass --cropped for desc-Crop)" if not cropped
                      else "not desc-Crop (--cropped uses the cropped images)")
    if modality == "pet":
        found = dict(e.split("-", 1) for e in match["entities"].split("_")[1:])
        label = found.get("trc", found.get("acq", ""))
        if label.lower() != tracer.lower():
            return None, f"tracer `{label or 'none'}`, not `{tracer}` (--tracer)"
        if suvr is not None and match["suvr"] != suvr:
            return None, f"SUVR reference `{match['suvr']}`, not `{suvr}` (--suvr)"
    return {"subject_id": sub, "session_id": ses, "modality": modality, "file": str(path)}, ""


def scan_caps(caps_dir: str | Path, tracer: str = "18FFDG", suvr: str | None = None,
              cropped: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Find the t1-linear and pet-linear images of a Clinica CAPS folder.

    Parameters
    ----------
    caps_dir
        The CAPS folder (the one holding ``subjects/``).
    tracer
        PET tracer label (``trc-<label>``) to keep, compared without case.
    suvr
        SUVR reference region to keep (``suvr-<label>``); ``None`` takes any, but a
        session with several is an error.
    cropped
        Use the ``desc-Crop`` images instead of the uncropped ones.

    Returns
    -------
    tuple of DataFrame
        The images (``subject_id``, ``session_id``, ``modality`` mri/pet, ``file``
        absolute) and the ignored NIfTI files (report rows, kind ``ignored_file``).

    Raises
    ------
    SourceError
        Without a ``subjects/`` folder.
    """
    caps = _folder(caps_dir, "CAPS folder", "give the folder that clinica run t1-linear wrote")
    subjects = caps / "subjects"
    if not subjects.is_dir():
        raise SourceError([problem("CAPS folder", "a folder holding `subjects/` (Clinica CAPS)",
                                   f"no subjects/ folder ({path_state(subjects)})", str(caps),
                                   "point at the CAPS root, or use --root with --mri/--pet "
                                   "patterns for other layouts")])
    images: list[dict[str, str]] = []
    ignored: list[dict[str, str]] = []
    for sub_dir in sorted(p for p in subjects.iterdir() if p.is_dir()):
        for ses_dir in sorted(p for p in sub_dir.iterdir() if p.is_dir()):
            for modality, folder in (("mri", "t1_linear"), ("pet", "pet_linear")):
                if not (ses_dir / folder).is_dir():
                    continue
                for path in sorted((ses_dir / folder).iterdir()):
                    if not path.name.endswith(_NIFTI) or not path.is_file():
                        continue  # transforms (.mat) and other non-images
                    record, why = _caps_file(path, modality, sub_dir.name, ses_dir.name,
                                             tracer, suvr, cropped)
                    if record is not None:
                        images.append(record)
                    else:
                        ignored.append({"kind": "ignored_file", "subject_id": sub_dir.name,
                                        "session_id": ses_dir.name, "file": str(path),
                                        "detail": why})
    return _records(images, _IMAGE_COLUMNS), _records(ignored, REPORT_COLUMNS)


# --------------------------------------------------------------------------- patterns
@dataclass(frozen=True)
class CompiledPattern:
    """A file-name pattern as a glob (to list candidates) and a regex (to read ids)."""

    pattern: str
    glob: str
    regex: re.Pattern[str]
    placeholders: tuple[str, ...]


def compile_pattern(pattern: str, what: str = "pattern") -> CompiledPattern:
    """Compile a pattern such as ``{subject}/pet/{subject}_{session}_pet.nii.gz``.

    Raises
    ------
    SourceError
        For an absolute pattern, a pattern without ``{subject}``, an unknown or
        unclosed placeholder.
    """
    fix = "write it relative to --root, with {subject} and optionally {session}"
    if not pattern or Path(pattern).is_absolute() or pattern.startswith("~"):
        raise SourceError([problem(what, "a pattern relative to the root folder",
                                   f"`{pattern}`", what, fix)])
    regex, globbed, seen = [], [], []
    for part in re.split(r"(\{[^{}]*\}|[{}])", pattern):
        if part in ("{", "}"):
            raise SourceError([problem(what, "balanced {placeholder} braces",
                                       f"an unmatched `{part}` in `{pattern}`", what, fix)])
        if part.startswith("{"):
            name = part[1:-1]
            if name not in _PLACEHOLDERS:
                raise SourceError([problem(f"{what} placeholder", "{subject} or {session}",
                                           f"`{part}` in `{pattern}`", what, fix)])
            regex.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+?)")
            seen.append(name)
            globbed.append("*")
            continue
        for char in part:
            regex.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            globbed.append(char if char in "*?/" else glob.escape(char))
    if "subject" not in seen:
        raise SourceError([problem(what, "a pattern with a {subject} placeholder",
                                   f"`{pattern}`", what, fix)])
    return CompiledPattern(pattern, "".join(globbed), re.compile("".join(regex)),
                           tuple(dict.fromkeys(seen)))


def scan_pattern(root: str | Path, mri: str, pet: str | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Find the images under ``root`` that match the MRI (and PET) patterns.

    Returns
    -------
    tuple of DataFrame
        The images (as :func:`scan_caps`; ``session_id`` is empty without a
        ``{session}`` placeholder) and the files that match a pattern's wildcards
        but not its placeholders (a repeated ``{subject}`` with two values),
        listed as ``ignored_file``.

    Raises
    ------
    SourceError
        For a bad pattern, or MRI and PET patterns with different placeholders.
    """
    base = _folder(root, "root folder", "give the folder the patterns start from")
    patterns = {"mri": compile_pattern(mri, "--mri")}
    if pet:
        patterns["pet"] = compile_pattern(pet, "--pet")
        if set(patterns["pet"].placeholders) != set(patterns["mri"].placeholders):
            raise SourceError([problem(
                "--pet pattern", f"the placeholders of --mri {list(patterns['mri'].placeholders)}",
                f"{list(patterns['pet'].placeholders)} (`{pet}`)", "--pet",
                "use {session} in both patterns or in neither")])
    images: list[dict[str, str]] = []
    ignored: list[dict[str, str]] = []
    for modality, compiled in patterns.items():
        for found in sorted(glob.glob(str(base / compiled.glob))):
            path = Path(found)
            if not path.is_file():
                continue
            rel = path.relative_to(base).as_posix()
            match = compiled.regex.fullmatch(rel)
            if match is None:
                ignored.append({"kind": "ignored_file", "subject_id": "", "session_id": "",
                                "file": str(path), "detail": f"matches the wildcards of "
                                f"`{compiled.pattern}` but a repeated placeholder differs"})
                continue
            images.append({"subject_id": match["subject"],
                           "session_id": match.groupdict().get("session") or "",
                           "modality": modality, "file": str(path)})
    return _records(images, _IMAGE_COLUMNS), _records(ignored, REPORT_COLUMNS)


# ---------------------------------------------------------------------------- pairing
def _check_ids(images: pd.DataFrame, source: str) -> list[str]:
    problems = []
    for column, what in (("subject_id", "subject id"), ("session_id", "session id")):
        for value, rows in images.groupby(column, sort=True):
            why = check_subject_id(str(value)) if value else None
            if why is not None:
                problems.append(problem(what, "1-128 characters from letters, digits, '.', "
                                        "'_', '-', starting with a letter or a digit",
                                        f"`{value}` ({why})", rows["file"].iloc[0],
                                        "rename the files or folders, or match less with "
                                        "the placeholder"))
    for (sid, ses, modality), rows in images.groupby(["subject_id", "session_id", "modality"]):
        if len(rows) > 1:
            label = "T1" if modality == "mri" else "PET"
            who = f"subject `{sid}`" + (f", session `{ses}`" if ses else "")
            problems.append(problem(f"{label} images per session", "one",
                                    f"{len(rows)}: {', '.join(rows['file'])}", f"{source}; {who}",
                                    "make the pattern more specific (or pass --suvr / "
                                    "--session)"))
    return problems


def _pair(images: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """One row per (subject, session) with a T1: ``mri``, ``pet`` ("" when absent)."""
    mri = images[images["modality"] == "mri"].set_index(["subject_id", "session_id"])["file"]
    pet = images[images["modality"] == "pet"].set_index(["subject_id", "session_id"])["file"]
    pairs = pd.DataFrame({"mri": mri}).join(pet.rename("pet"), how="left").fillna("")
    report = [{"kind": "pet_without_mri", "subject_id": s, "session_id": e, "file": f,
               "detail": "no T1 of this subject and session"}
              for (s, e), f in pet.items() if (s, e) not in mri.index]
    report += [{"kind": "mri_without_pet", "subject_id": s, "session_id": e, "file": m,
                "detail": "written with an empty `pet`"}
               for (s, e), m, p in zip(pairs.index, pairs["mri"], pairs["pet"]) if not p]
    return pairs.reset_index().sort_values(["subject_id", "session_id"], ignore_index=True), report


def _relative(path: str, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix() if path else ""


def build_manifest(images: pd.DataFrame, out: str | Path, tsv: str | Path | None = None,
                   ignored: pd.DataFrame | None = None, target: str | None = None,
                   target_map: dict[str, float] | None = None, session: str | None = None,
                   caps_ids: bool = False, overwrite: bool = False, source: str = "images"
                   ) -> SourceResult:
    """Pair T1 and PET per (subject, session), join the TSV, write the manifest and report.

    Parameters
    ----------
    images
        As returned by :func:`scan_caps` / :func:`scan_pattern`.
    out
        The manifest CSV to write (its folder is created); refused when it exists
        unless ``overwrite``, and when it is the TSV.
    tsv
        Participants / sessions TSV (see :func:`~gazimed_lab.data.source_table.read_source_table`);
        ``None``: a manifest without targets or clinical columns (for prediction).
    ignored
        Report rows of files the scan did not use.
    target, target_map
        The TSV column that becomes ``target`` (default ``target`` when present) and
        an optional mapping of its text values to numbers (``{"CN": 0, "AD": 1}``).
    session
        Keep only this session (e.g. the baseline ``ses-M000``).
    caps_ids
        TSV ids get the BIDS prefixes ``sub-`` / ``ses-`` when they lack them.
    overwrite
        Replace an existing manifest.
    source
        Name of the image source in messages (the CAPS or root folder).

    Raises
    ------
    SourceError
        Every problem found (nothing is written then).
    """
    out = Path(out).expanduser().absolute()
    check_not_input(out, {"TSV": tsv}, "--out")
    if out.exists() and not overwrite:
        raise FileExistsError(f"`--out` must not be an existing manifest, got {out}; pass "
                              "--overwrite to replace it, or choose another file")
    report = [] if ignored is None else ignored.to_dict("records")
    if session is not None:
        other = images["session_id"] != session
        report += [{"kind": "ignored_file", "subject_id": r.subject_id,
                    "session_id": r.session_id, "file": r.file,
                    "detail": f"session `{r.session_id or 'none'}`, not `{session}` (--session)"}
                   for r in images[other].itertuples()]
        images = images[~other]
    problems = _check_ids(images, source)
    if images.empty or not (images["modality"] == "mri").any():
        problems.append(problem("T1 images", "at least one", "none", source,
                                "check the folder and the --mri pattern (or the CAPS "
                                "t1_linear outputs)"))
    if problems:
        raise SourceError(problems)
    pairs, paired_report = _pair(images)
    report += paired_report
    table = read_source_table(tsv, target, target_map, caps_ids) if tsv is not None else None
    rows, joined_report = join_table(pairs, table, session_given=session is not None)
    report += joined_report
    folder = out.parent
    for column in ("mri", "pet"):
        rows[column] = [_relative(p, folder) for p in rows[column]]
    several = rows.groupby("subject_id")["session_id"].nunique().gt(1).any()
    if not several:
        rows = rows.drop(columns="session_id")
    report_frame = _records(report, REPORT_COLUMNS)
    report_file = report_path(out)
    atomic_write(out, lambda tmp: rows.to_csv(tmp, index=False), "manifest")
    atomic_write(report_file, lambda tmp: report_frame.to_csv(tmp, index=False), "report")
    return SourceResult(out, rows, report_frame, report_file)


def manifest_from_caps(caps_dir: str | Path, out: str | Path, tsv: str | Path | None = None,
                       tracer: str = "18FFDG", suvr: str | None = None, cropped: bool = False,
                       **options: object) -> SourceResult:
    """:func:`scan_caps`, then :func:`build_manifest` (``options`` are its keywords)."""
    images, ignored = scan_caps(caps_dir, tracer, suvr, cropped)
    return build_manifest(images, out, tsv, ignored, caps_ids=True, source=str(caps_dir),
                          **options)  # type: ignore[arg-type]


def manifest_from_pattern(root: str | Path, out: str | Path, mri: str, pet: str | None = None,
                          tsv: str | Path | None = None, **options: object) -> SourceResult:
    """:func:`scan_pattern`, then :func:`build_manifest` (``options`` are its keywords)."""
    images, ignored = scan_pattern(root, mri, pet)
    return build_manifest(images, out, tsv, ignored, source=str(root),
                          **options)  # type: ignore[arg-type]
