from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import write_nifti
from matplotlib.figure import Figure

from gazimed_lab import evaluation as ev
from gazimed_lab import viz
from gazimed_lab.data.grid import get_grid, template_on_grid
from gazimed_lab.data.images import ImageError
from gazimed_lab.viz import slices

PNG_MAGIC = b"\x89PNG"
GRID = get_grid("demo_4mm")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def predictions() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 48
    dx = np.array(["CN", "MCI", "AD"])[np.arange(n) % 3]
    target = np.select([dx == "CN", dx == "MCI"], [0.15, 0.45], 0.85) + rng.normal(0, 0.08, n)
    target = np.clip(target, 0, 1)
    score = np.clip(target + rng.normal(0, 0.2, n), 0, 1)
    return pd.DataFrame({"subject_id": [f"sub-{i:03d}" for i in range(n)], "target": target,
                         "score": score, "label": (score >= 0.5).astype(int), "split": "test",
                         "diagnosis": dx, "sex": np.where(np.arange(n) % 2, "F", "M"),
                         "age": 58 + np.arange(n) % 30, "site": "site0"})


METRICS_CSV = """epoch,step,lr-AdamW,train/loss_step,train/loss_epoch,val/loss,val/auroc,train/auroc
,0,0.001,,,,,
0,1,,0.50,,,,
0,1,,,,0.45,0.61,
0,1,,,0.46,,,0.6
,2,0.002,,,,,
1,3,,0.30,,,,
1,3,,,,0.35,0.72,
1,3,,,0.26,,,0.75
,4,0.0015,,,,,
2,5,,0.20,,,,
2,5,,,,0.37,0.70,
2,5,,,0.2,,,0.8
"""


@pytest.fixture
def run_dir(tmp_path: Path, predictions: pd.DataFrame) -> Path:
    run = tmp_path / "runs" / "demo"
    (run / "predictions").mkdir(parents=True)
    predictions.to_csv(run / "predictions" / "test.csv", index=False)
    (run / "logs" / "csv").mkdir(parents=True)
    (run / "logs" / "csv" / "metrics.csv").write_text(METRICS_CSV)
    return run


def _check_png(path: Path) -> None:
    assert path.exists() and path.read_bytes()[:4] == PNG_MAGIC
    assert path.stat().st_size > 5000


# ------------------------------------------------------------------ cohort
def _bar_heights(ax) -> list[float]:
    return [round(float(patch.get_height()), 6) for patch in ax.patches]


def test_split_balance_counts_each_subject_once_at_its_earliest_session(tmp_path):
    # sub-a has four visits (MCI at baseline, then AD): one subject, counted at baseline.
    table = pd.DataFrame({
        "subject_id": ["sub-a"] * 4 + ["sub-b", "sub-c", "sub-d"],
        "session_id": ["ses-M24", "ses-M6", "ses-M12", "ses-M0", "ses-M0", "ses-M0", "ses-M0"],
        "diagnosis": ["AD", "AD", "AD", "MCI", "CN", "CN", "AD"],
        "age": [72.0, 70.5, 71.0, 70.0, 60.0, 65.0, 80.0],
        "split": ["train"] * 5 + ["val", "val"],
    })
    fig = viz.plot_split_balance(table, columns=("diagnosis",),
                                 output_file=tmp_path / "balance.png")
    _check_png(tmp_path / "balance.png")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["n=2\n(5 sessions)", "n=2\n(2 sessions)"]
    # stacked per diagnosis value (AD, CN, MCI), one bar per split (train, val)
    assert _bar_heights(ax) == [0.0, 0.5, 0.5, 0.5, 0.5, 0.0]
    # the age boxes: train from the baseline ages 70 and 60 (median 65, range 60-70),
    # not from sub-a's later visits (median 70.5, up to 72)
    levels = {float(y[0]) for y in (line.get_ydata() for line in fig.axes[1].lines)
              if len(y) == 2 and y[0] == y[1]}
    assert 65.0 in levels and 72.0 not in levels and 70.5 not in levels

    one_row_each = table.drop(columns="session_id").drop_duplicates("subject_id", keep="last")
    plain = viz.plot_split_balance(one_row_each, columns=("diagnosis",))
    assert [t.get_text() for t in plain.axes[0].texts] == ["n=2", "n=2"]


# --------------------------------------------------------------- dashboards
DASHBOARDS = {
    "roc": lambda df, **kw: viz.plot_roc(df, n_boot=40, **kw),
    "pr": lambda df, **kw: viz.plot_pr(df, n_boot=40, **kw),
    "pred_vs_true": lambda df, **kw: viz.plot_pred_vs_true(df, **kw),
    "confusion": lambda df, **kw: viz.plot_confusion(df, threshold=0.4, **kw),
    "subgroups": lambda df, **kw: viz.plot_subgroups(ev.subgroup_metrics(df, n_boot=20), **kw),
}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_plots_return_figure_save_png_and_use_given_axes(name, predictions, tmp_path):
    plot = DASHBOARDS[name]
    out = tmp_path / "figures" / f"{name}.png"
    fig = plot(predictions, output_file=out)
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_title() and fig.axes[0].get_xlabel()
    _check_png(out)
    own_fig, ax = plt.subplots()
    assert plot(predictions, ax=ax) is own_fig
    assert ax.lines or ax.images or ax.collections
    assert ax.get_xlabel() and ax.get_ylabel()


def test_roc_legend_shows_auroc_interval_and_overlays_splits(predictions):
    fig = viz.plot_roc({"val": predictions, "test": predictions.assign(split="test")},
                       n_boot=40)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    res = ev.roc_curve_ci(predictions, n_boot=40)
    assert any(f"AUROC {res['auroc']:.3f} [{res['auroc_low']:.3f}, "
               f"{res['auroc_high']:.3f}]" in t for t in labels)
    assert sum(t.startswith(("val:", "test:")) for t in labels) == 4
    assert len(fig.axes[0].collections) >= 2  # one band per curve


def test_calibration_plot_two_panels_or_one_axes(predictions, tmp_path):
    fig = viz.plot_calibration(predictions, output_file=tmp_path / "cal.png")
    assert len(fig.axes) == 2
    assert "Brier" in fig.axes[0].get_title()
    assert sum(p.get_height() for p in fig.axes[1].patches) == len(predictions)
    _check_png(tmp_path / "cal.png")
    own, ax = plt.subplots()
    assert viz.plot_calibration(predictions, axes=ax) is own
    assert len(own.axes) == 2  # counts on a twin axis


def test_confusion_plot_writes_the_counts(predictions):
    fig = viz.plot_confusion(predictions, threshold=0.5)
    texts = [t.get_text().split("\n")[0] for t in fig.axes[0].texts]
    assert sorted(int(t) for t in texts) == sorted(ev.confusion(predictions, 0.5).ravel())
    assert fig.axes[-1].get_ylabel() == "subjects"  # colour bar


def test_learning_curves_from_a_run_folder(run_dir, tmp_path):
    out = tmp_path / "lc.png"
    fig = viz.plot_learning_curves(run_dir, output_file=out)
    _check_png(out)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "AUROC", "learning rate (end of epoch)"]
    loss_ax = fig.axes[0]
    labels = [line.get_label() for line in loss_ax.lines]
    assert labels[:2] == ["train", "val"]
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), [0.45, 0.35, 0.37])
    assert "best val 0.350 (epoch 1)" in labels[2]
    own, axes = plt.subplots(1, 3)
    assert viz.plot_learning_curves(ev.read_training_log(run_dir), axes=axes) is own
    with pytest.raises(ValueError, match="training log must have columns"):
        viz.plot_learning_curves(pd.DataFrame({"epoch": [0], "step": [1]}), metrics=("dice",))


def test_run_comparison_plot(run_dir, tmp_path, predictions):
    other = tmp_path / "runs" / "other"
    (other / "predictions").mkdir(parents=True)
    predictions.assign(score=predictions["score"][::-1].to_numpy()).to_csv(
        other / "predictions" / "test.csv", index=False)
    table = ev.compare_runs([run_dir, other], n_boot=30)
    out = tmp_path / "cmp.png"
    fig = viz.plot_run_comparison(table, metrics=("auroc", "mae"), output_file=out)
    _check_png(out)
    assert len(fig.axes) == 2
    ticks = sorted(fig.axes[0].get_yticklabels(), key=lambda t: -t.get_position()[1])
    assert [t.get_text() for t in ticks] == ["demo", "other"]  # first run on top
    own, axes = plt.subplots(1, 2)
    assert viz.plot_run_comparison(table, metrics=("auroc", "mae"), axes=axes) is own


# --------------------------------------------------------------- slices
@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    t1 = template_on_grid("t1", GRID)
    gm = template_on_grid("gm", GRID)
    mri = write_nifti(tmp_path / "mri.nii.gz", t1 + rng.normal(0, 0.01, GRID.shape), GRID.affine)
    pet = write_nifti(tmp_path / "pet.nii.gz", 2 * gm + 0.2 * t1, GRID.affine)
    sal = np.zeros(GRID.shape)
    sal[12:18, 20:26, 16:22] = 1.0
    smap = write_nifti(tmp_path / "sal.nii.gz", sal, GRID.affine)
    return {"mri": mri, "pet": pet, "map": smap}


SLICE_PLOTS = {
    "orthogonal": lambda im, **kw: viz.plot_orthogonal(im["mri"], title="T1", **kw),
    "orthogonal_img": lambda im, **kw: viz.plot_orthogonal(im["pet"], kind="img", cmap="hot",
                                                           display_mode="z", cut_coords=3, **kw),
    "pet_on_mri": lambda im, **kw: viz.plot_pet_on_mri(im["mri"], im["pet"], alpha=0.4, **kw),
    "outline": lambda im, **kw: viz.plot_brain_outline_on_template(
        nib.load(str(im["mri"])), GRID, title="outline", **kw),
    "map": lambda im, **kw: viz.plot_map_on_template(im["map"], GRID, title="saliency", **kw),
}


@pytest.mark.parametrize("name", sorted(SLICE_PLOTS))
def test_nilearn_views_return_figure_save_png_and_use_given_axes(name, images, tmp_path):
    plot = SLICE_PLOTS[name]
    out = tmp_path / f"{name}.png"
    fig = plot(images, output_file=out)
    assert isinstance(fig, Figure)
    _check_png(out)
    own, ax = plt.subplots(figsize=(6, 3))
    assert plot(images, axes=ax) is own
    assert len(own.axes) > 1  # nilearn added its slice axes inside ours


def test_nilearn_views_have_labelled_colour_bars(images):
    fig = viz.plot_map_on_template(images["map"], GRID, cbar_label="occlusion (Δ score)")
    assert "occlusion (Δ score)" in [ax.get_ylabel() for ax in fig.axes]
    fig = viz.plot_pet_on_mri(images["mri"], images["pet"])
    assert "PET (a.u.)" in [ax.get_ylabel() for ax in fig.axes]


def test_plot_mosaic_rows_and_columns(images, tmp_path):
    out = tmp_path / "mosaic.png"
    fig = viz.plot_mosaic({"sub-0 MRI": images["mri"], "sub-0 PET": nib.load(str(images["pet"]))},
                          axis="z", n_slices=4, output_file=out)
    _check_png(out)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 8
    assert [ax.get_ylabel() for ax in panels if ax.get_ylabel()] == ["sub-0 MRI", "sub-0 PET"]
    assert all(ax.get_title().startswith("z = ") for ax in panels[:4])
    assert sum(1 for ax in fig.axes if ax.get_ylabel() == "intensity (a.u.)") == 2
    with pytest.raises(ValueError, match="`axis` must be one of"):
        viz.plot_mosaic({"a": images["mri"]}, axis="w")


def test_plot_mosaic_needs_a_slice(images):
    with pytest.raises(ValueError, match=r"`n_slices` must be >= 1, got 0"):
        viz.plot_mosaic({"a": images["mri"]}, n_slices=0)
    with pytest.raises(ValueError, match=r"`coords` must hold at least one MNI coordinate"):
        viz.plot_mosaic({"a": images["mri"]}, coords=[])


def test_axes_in_a_subfigure_return_and_save_the_root_figure(images, predictions, tmp_path):
    root = plt.figure(figsize=(10, 4))
    left, right = root.subfigures(1, 2)
    out = tmp_path / "slice.png"
    fig = viz.plot_slice(images["mri"], ax=left.subplots(), output_file=out)
    assert fig is root
    _check_png(out)
    assert viz.plot_roc(predictions, n_boot=20, ax=right.subplots(),
                        output_file=tmp_path / "roc.png") is root
    _check_png(tmp_path / "roc.png")


def test_slice_orientation_puts_subject_left_on_image_left(tmp_path):
    # A radiological (x-flipped) affine: voxel index 0 is the subject's right.
    data = np.zeros(GRID.shape)
    left_x = np.linalg.inv(GRID.affine) @ np.array([-40.0, 0, 0, 1])  # x = -40 mm: left
    data[round(left_x[0]), :, 20] = 1.0
    path = write_nifti(tmp_path / "left.nii.gz", data, GRID.affine)
    plane_data, affine = slices._canonical(path, "img")
    plane, extent = slices._plane(plane_data, affine, 2, 20)
    cols = np.flatnonzero(plane.max(axis=0))
    x_mm = extent[0] + (cols[0] + 0.5) * (extent[1] - extent[0]) / plane.shape[1]
    assert x_mm == pytest.approx(-40, abs=4)
    assert cols[0] < plane.shape[1] / 2  # drawn on the left half


def test_image_inputs_are_checked(tmp_path, images):
    # One loader (gazimed_lab.data.images.read_nifti): its ImageError names what and where.
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(ImageError, match=r"`image` must be an existing NIfTI file, got a "
                       r"missing path \(.*missing\.nii\.gz\)"):
        viz.plot_orthogonal(missing)
    with pytest.raises(ImageError, match=r"`pet` must be an existing NIfTI file.*missing\.nii"):
        viz.plot_pet_on_mri(images["mri"], missing)
    not_nifti = tmp_path / "notes.nii.gz"
    not_nifti.write_text("not an image")
    with pytest.raises(ImageError, match=r"`overlay` must be a NIfTI file .*notes\.nii\.gz"):
        viz.plot_slice(images["mri"], overlay=not_nifti)
    four_d = nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4))
    with pytest.raises(ImageError, match=r"`image` must be a 3D volume \(or 4D with a single "
                       r"frame\), got a 4D volume of shape \(4, 4, 4, 2\) \(in-memory image\)"):
        viz.plot_slice(four_d)
    with pytest.raises(ImageError, match=r"`image` must be a NIfTI path or a nibabel image, "
                       r"got ndarray"):
        slices.slice_count(np.zeros((4, 4, 4)))
    fig = viz.plot_slice(images["mri"], axis="coronal", coord=-20.0, overlay=images["pet"])
    assert "y = -18 mm" in fig.axes[0].get_title() or "y = -22 mm" in fig.axes[0].get_title()
    assert len(fig.axes[0].images) == 2


def test_as_image_reads_through_the_data_loader(tmp_path, images):
    # int16 with a scale factor on disk: the voxels come back scaled, as float32.
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, 1)
    scaled = nib.Nifti1Image(raw, GRID.affine)
    scaled.header.set_slope_inter(0.5, 1.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(scaled, str(path))
    img = slices.as_image(path)
    assert isinstance(img, nib.Nifti1Image) and img.shape == (4, 5, 6)  # one frame squeezed
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.get_fdata(), raw[..., 0] * 0.5 + 1.0)
    np.testing.assert_allclose(img.affine, GRID.affine)
    # Values are not judged (NaN can be drawn), and an in-memory image is not aliased.
    data = np.full((3, 3, 3), np.nan, np.float32)
    source = nib.Nifti1Image(data, np.eye(4))
    out = slices.as_image(source)
    assert np.isnan(out.get_fdata()).all()
    np.asarray(out.dataobj)[0, 0, 0] = 7.0
    assert np.isnan(data[0, 0, 0])


# --------------------------------------------------------------- widgets
def test_slice_viewer_constructs_and_redraws(images):
    viewer = viz.slice_viewer({
        "sub-000": {"MRI": images["mri"], "PET": images["pet"]},
        "sub-001": {"MRI": images["mri"], "PET": ""},
    })
    assert isinstance(viewer.figure, Figure)
    assert list(viewer.modality.options) == ["MRI", "PET", "PET on MRI"]
    assert viewer.slice.max == GRID.shape[2] - 1
    viewer.modality.value = "PET on MRI"
    assert len(viewer.figure.axes[0].images) == 2 and not viewer.opacity.disabled
    viewer.axis.value = "y"
    assert viewer.slice.max == GRID.shape[1] - 1
    assert "coronal" in viewer.figure.axes[0].get_title()
    viewer.subject.value = "sub-001"
    assert list(viewer.modality.options) == ["MRI"]
    fig = viewer.update()
    assert fig is viewer.figure and "sub-001" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no images"):
        viz.slice_viewer({"sub-x": {"MRI": None}})


def test_metrics_explorer_constructs_and_switches_views(run_dir):
    explorer = viz.metrics_explorer([run_dir], n_boot=20)
    assert isinstance(explorer.figure, Figure)
    assert explorer.summary is not None and "auroc" in set(explorer.summary["metric"])
    for view in ("calibration", "confusion", "learning curves"):
        explorer.view.value = view
        assert isinstance(explorer.figure, Figure)
    explorer.view.value = "ROC"
    explorer.split.value = "val"  # no val predictions in this run: a message, no crash
    assert explorer.figure is None
