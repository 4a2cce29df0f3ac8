"""The ``gazimed-lab`` command: synth, manifest, qa, train, predict, evaluate, cv, ablate, ..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gazimed_lab.config import DEMO_SUBJECTS, PET_REFERENCES, DataConfig

__all__ = ["main"]


def _cmd_synth(args: argparse.Namespace) -> int:
    from gazimed_lab.data.synthetic import make_synthetic_cohort

    manifest = make_synthetic_cohort(
        args.out_dir, n_subjects=args.n_subjects, seed=args.seed, grid=args.grid
    )
    print(f"wrote {args.n_subjects} subjects: {manifest}")
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    from gazimed_lab.data.source_table import parse_target_map
    from gazimed_lab.data.sources import manifest_from_caps, manifest_from_pattern

    if (args.caps is None) == (args.root is None):
        raise ValueError("`manifest` must be given one of --caps CAPS_DIR or --root DIR (with "
                         "--mri and --pet patterns), got "
                         f"{'both' if args.caps is not None else 'neither'}")
    options = {"target": args.target, "target_map": parse_target_map(args.target_map),
               "session": args.session, "overwrite": args.overwrite}
    if args.caps is not None:
        if args.mri or args.pet:
            raise ValueError("`--mri` / `--pet` patterns must go with --root, got them with "
                             "--caps (a CAPS folder has its own file names)")
        result = manifest_from_caps(args.caps, args.out, args.tsv, tracer=args.tracer,
                                    suvr=args.suvr, cropped=args.cropped, **options)
    else:
        if args.suvr or args.cropped or args.tracer != "18FFDG":
            raise ValueError("`--tracer` / `--suvr` / `--cropped` must go with --caps, got "
                             "them with --root (put the tracer or region in the --pet pattern)")
        if not args.mri:
            raise ValueError("`--mri` must give the T1 pattern with --root, got none; e.g. "
                             "--mri '{subject}/anat/{subject}_T1_mni.nii.gz'")
        result = manifest_from_pattern(args.root, args.out, args.mri, args.pet, args.tsv,
                                       **options)
    print(result.summary())
    print(f"next: gazimed-lab qa {args.out}")
    return 0


def _cmd_qa(args: argparse.Namespace) -> int:
    from gazimed_lab.data.qa import qa_main

    return qa_main(args.manifest, grid=args.grid, out_dir=args.out_dir,
                   pet_reference=args.pet_reference,
                   session_order_column=args.session_order_column)


def _cmd_train(args: argparse.Namespace) -> int:
    from gazimed_lab.config import load_config
    from gazimed_lab.runner import train_and_evaluate

    cfg = load_config(args.config, args.overrides)
    result = train_and_evaluate(cfg, resume=args.resume)
    if result.global_rank != 0:
        return 0  # rank 0 reports
    print(f"run folder: {result.run_dir}")
    for key, value in sorted(result.test_metrics.items()):
        print(f"  {key:<20} {value:.4f}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from gazimed_lab.runner import predict_manifest

    table = predict_manifest(args.ckpt, args.manifest, args.out,
                             accept_flagged=args.accept_flagged_images)
    print(f"scored {len(table)} subjects: {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from gazimed_lab.evaluation.external import evaluate_external

    result = evaluate_external(
        args.manifest, checkpoints=args.ckpt, predictions=args.predictions, out_dir=args.out,
        n_boot=args.n_boot, seed=args.seed, threshold=args.threshold,
        figures=not args.no_figures,
    )
    columns = ["model", "kind", "auroc", "auroc_low", "auroc_high"]
    print(result.summary[columns].round(3).to_string(index=False))
    if len(result.differences):
        print("paired AUROC differences (a - b):")
        diff = result.differences[["model_a", "model_b", "difference", "low", "high"]]
        print(diff.round(3).to_string(index=False))
    if args.maps:
        from gazimed_lab.checkpoints import load_checkpoint
        from gazimed_lab.evaluation.external import named_models
        from gazimed_lab.evaluation.maps import group_maps, reads_images, write_group_maps
        from gazimed_lab.paths import output_path, safe_name

        for name, ckpt in named_models(args.ckpt):
            if not reads_images(load_checkpoint(ckpt)):
                print(f"{name}: no image input, no group maps")
                continue
            maps = group_maps(ckpt, args.manifest, group=args.maps,
                              max_subjects=args.maps_subjects)
            folder = write_group_maps(maps, output_path(args.out, "maps", safe_name(name)))
            print(f"{name}: {args.maps} group maps ({maps.n_subjects} subjects) in {folder}")
            if maps.localization is not None:
                print(maps.localization.round(3).to_string(index=False))
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from gazimed_lab.config import available_presets, load_config
    from gazimed_lab.cv import run_cv

    fixed = [o for o in args.overrides if o.split("=", 1)[0].strip() in ("data.n_folds",
                                                                         "data.fold")]
    if fixed:
        raise ValueError(f"`cv` sets data.n_folds and data.fold itself, got {fixed}; use "
                         "--folds K and drop the override")
    overrides = list(args.overrides)
    manifest = args.manifest
    named = any(o.split("=", 1)[0].strip() == "data.manifest" for o in overrides)
    if manifest is None and not named and args.config in available_presets():
        from gazimed_lab.data.synthetic import demo_cohort

        manifest = demo_cohort(n_subjects=DEMO_SUBJECTS)  # as `ablate`: the demo cohort
        print(f"cohort: the demo cohort {manifest} (--manifest to choose another)")
    if manifest is not None:
        overrides.append(f"data.manifest={manifest}")
    cfg = load_config(args.config, overrides)
    print(f"{args.folds}-fold cross-validation of {cfg.data.manifest} into {args.run_dir}",
          flush=True)
    result = run_cv(cfg, args.folds, run_dir=args.run_dir, n_boot=args.n_boot, seed=args.seed,
                    overwrite=args.overwrite)
    if result.summary is None:  # another process of a multi-process run: rank 0 reports
        return 0
    folds = result.summary.folds
    columns = ["fold", "split", "n", "auroc", "balanced_accuracy", "mae", "epochs"]
    print(folds[columns].round(3).to_string(index=False))
    print(result.summary.text())
    print(f"cv run folder: {result.run_dir} ({result.seconds:.0f} s for this call)")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from gazimed_lab.ablation import run_ablations
    from gazimed_lab.data.synthetic import demo_cohort

    manifest = args.manifest or demo_cohort(n_subjects=args.n_subjects)
    table = run_ablations(manifest, args.out_dir, preset=args.preset, overrides=args.overrides)
    if table.empty:  # another process of a multi-process run: rank 0 reports
        return 0
    columns = ["run", "auroc", "auroc_low", "auroc_high", "pearson", "mae", "n"]
    print(table[[c for c in columns if c in table.columns]].round(3).to_string(index=False))
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from gazimed_lab.pipeline import run_pipeline

    run_pipeline(
        run_dir=args.run_dir,
        preset=args.preset,
        parameters=args.parameters,
        manifest=args.manifest,
        overwrite=args.overwrite,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gazimed_lab.pipeline import run_demo

    run_demo(run_dir=args.run_dir, n_subjects=args.n_subjects)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gazimed-lab",
        description="Alzheimer's disease score from MNI-space MRI, FDG-PET and clinical data.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic cohort on MNI152 anatomy")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n-subjects", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default="demo_4mm")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "manifest", help="build a manifest from a Clinica CAPS folder or a file-name pattern",
        description="Pair each subject's (and session's) T1 and PET found in a Clinica CAPS "
        "folder (t1-linear, pet-linear) or under a folder through file-name patterns, join a "
        "participants/sessions TSV (target and clinical columns) and write the manifest. What "
        "could not be paired is printed and listed in <manifest stem>_report.csv.")
    p.add_argument("--caps", type=Path, default=None, help="a Clinica CAPS folder")
    p.add_argument("--root", type=Path, default=None, help="folder the --mri/--pet patterns "
                   "start from (FSL, SPM or any layout)")
    p.add_argument("--mri", default=None, help="T1 pattern with {subject} [and {session}], "
                   "e.g. '{subject}/anat/{subject}_T1_mni.nii.gz'; * and ? are wildcards")
    p.add_argument("--pet", default=None, help="PET pattern, same placeholders as --mri")
    p.add_argument("--tsv", type=Path, default=None, help="participants/sessions TSV: "
                   "participant_id (or subject_id) [, session_id], target and clinical columns")
    p.add_argument("--out", type=Path, required=True, help="the manifest CSV to write")
    p.add_argument("--target", default=None, help="TSV column that becomes `target` "
                   "(default: `target`)")
    p.add_argument("--target-map", default=None, metavar="TEXT=NUMBER,...",
                   help="map the target column's text values, e.g. CN=0,MCI=0.5,AD=1")
    p.add_argument("--session", default=None, help="keep only this session, e.g. ses-M000")
    p.add_argument("--tracer", default="18FFDG", help="CAPS: PET tracer (trc-<label>)")
    p.add_argument("--suvr", default=None, help="CAPS: SUVR reference region (suvr-<label>) "
                   "when a session has several")
    p.add_argument("--cropped", action="store_true", help="CAPS: use the desc-Crop images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    p.set_defaults(func=_cmd_manifest)

    p = sub.add_parser("qa", help="validate a manifest and write a QA table")
    p.add_argument("manifest", type=Path)
    p.add_argument("--grid", default="demo_4mm")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--pet-reference", default=DataConfig().pet_reference, choices=PET_REFERENCES,
                   help="data.pet_reference of the training config (PET normalization)")
    p.add_argument("--session-order-column", default=None,
                   help="data.session_order_column of the training config (sessions ordered "
                        "by this numeric column, not by their ids)")
    p.set_defaults(func=_cmd_qa)

    p = sub.add_parser("train", help="fit, test the best checkpoint, write predictions")
    p.add_argument("--config", default="cpu-demo", help="preset name or YAML path")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--resume", default=None, help="`last` or a checkpoint path")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="score a manifest with a checkpoint")
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--accept-flagged-images", action="store_true",
                   help="score images flagged as probably not in MNI space (each one warned "
                        "about) instead of refusing the manifest")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "evaluate", help="score an external cohort: metrics with CIs, paired differences, "
        "oracle rows when truth.csv lies beside the manifest, figures")
    p.add_argument("--ckpt", action="append", default=[], metavar="[NAME=]CKPT",
                   help="checkpoint to score the cohort with (repeatable)")
    p.add_argument("--predictions", action="append", default=[], metavar="NAME=CSV",
                   help="precomputed predictions on the same subjects, e.g. a baseline "
                        "(repeatable)")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"))
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="decision threshold of the threshold metrics")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    p.add_argument("--maps", metavar="GROUP", default=None,
                   help="also write each checkpoint's integrated-gradients maps averaged over "
                        "this diagnosis group (e.g. AD), scored against truth/ when present")
    p.add_argument("--maps-subjects", type=int, default=60,
                   help="at most this many subjects of the group")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "cv", help="k-fold cross-validation: every fold trained, per-fold, pooled out-of-fold "
        "and test-ensemble metrics",
        description="Hold the test split out once, train one run per fold of the rest "
        "(RUN_DIR/folds/<k>/), then write per-fold metrics, mean +- sd across folds, pooled "
        "out-of-fold metrics and the test-split ensemble (mean of the fold models' scores) with "
        "bootstrap CIs. Rerunning the same command continues an interrupted run.")
    p.add_argument("--config", default="cpu-demo", help="preset name or YAML path")
    p.add_argument("--folds", type=int, required=True, help="number of folds K (>= 2)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--manifest", type=Path, default=None,
                   help="cohort (default: the config's data.manifest; with a preset name and "
                        "no data.manifest override, the generated demo cohort)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/cv"))
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--overwrite", action="store_true", help="restart a cv run in --run-dir")
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser("ablate", help="clinical / MRI / PET / MRI+PET / all on one split")
    p.add_argument("--manifest", type=Path, default=None,
                   help="cohort (default: the generated demo cohort)")
    p.add_argument("--n-subjects", type=int, default=DEMO_SUBJECTS, help="demo cohort size")
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--out-dir", type=Path, default=Path("runs/ablations"))
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("pipeline", help="run the notebooks 01-04 with papermill")
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--run-dir", type=Path, default=Path("runs/pipeline"))
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("-p", "--parameter", dest="parameters", action="append", default=[],
                   help="notebook parameter key=value (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run folder")
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser("demo", help="generate the demo cohort if absent, then run the pipeline")
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--n-subjects", type=int, default=DEMO_SUBJECTS)
    p.set_defaults(func=_cmd_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gazimed-lab`` command."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Input problems: print the message (it names the file / row / key), no traceback.
        print(f"gazimed-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only folder, full disk, a directory in the way: one line
        from gazimed_lab.paths import describe_os_error

        print(f"gazimed-lab {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
