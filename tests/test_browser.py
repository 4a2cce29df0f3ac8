"""The notebooks' ipywidgets browsers: built and redrawn in Python, then in a real JupyterLab.

The first tests construct the widgets without a display. The browser test starts
JupyterLab the way ``make lab`` does (``gazimed_lab.notebook.lab_launch``; here on a
free port, without a token or a browser tab) and drives Debian's Chromium through
Selenium and chromedriver.
"""

from __future__ import annotations

import pandas as pd
import pytest

from gazimed_lab import viz
from gazimed_lab.data.manifest import read_manifest
from gazimed_lab.data.qa import run_qa


# --------------------------------------------------------------- widgets in Python
def test_qa_browser_filters_by_flag_and_redraws(tiny_cohort):
    table = run_qa(tiny_cohort, grid="demo_4mm").table  # sub-003 has no PET
    browser = viz.qa_browser(table)
    assert list(browser.flag.options) == ["all subjects", "flagged", "not flagged",
                                          "missing PET"]
    assert browser.flag.value == "flagged" and list(browser.subject.options) == ["sub-003"]
    assert len(browser.figure.axes) == 3  # MRI (+ colour bar) and the empty PET panel
    assert "MRI · no flags" in browser.figure.axes[0].get_title()
    assert browser.figure.axes[1].texts[0].get_text() == "PET: no image\nmissing PET"
    browser.flag.value = "not flagged"
    assert len(browser.subject.options) == 15 and browser.subject.value == "sub-000"
    first = browser.figure
    browser.slice.value = 0.2
    assert browser.figure is not first and "slice 9/40" in browser.figure.axes[0].get_title()
    browser.axis.value = "x"
    assert "sagittal" in browser.figure.axes[0].get_title()
    browser.subject.value = "sub-001"
    assert browser.figure.get_suptitle() == "sub-001"
    browser.flag.value = "missing PET"
    assert browser.subject.value == "sub-003"


def test_qa_browser_without_matches_and_errors(tiny_cohort):
    table = run_qa(tiny_cohort, grid="demo_4mm").table
    clean = table[table["subject_id"] != "sub-003"]
    browser = viz.qa_browser(clean)
    assert list(browser.flag.options) == ["all subjects", "flagged", "not flagged"]
    browser.flag.value = "flagged"
    assert browser.subject.value is None and browser.figure is None
    with pytest.raises(ValueError, match=r"`qa` must be the QA table .* without \['flags'\]"):
        viz.qa_browser(table.drop(columns="flags"))
    with pytest.raises(ValueError, match="`qa` must have at least one row"):
        viz.qa_browser(table.iloc[:0])


def test_feature_browser_switches_feature_grouping_and_bins(tiny_cohort):
    cohort = read_manifest(tiny_cohort, check_images=False)
    browser = viz.feature_browser(cohort.table, [*cohort.clinical_columns, "not-a-column"])
    assert list(browser.feature.options) == cohort.clinical_columns
    assert list(browser.by.options) == ["diagnosis", "site", "sex", "(none)"]
    ax = browser.figure.axes[0]
    assert ax.get_title() == cohort.clinical_columns[0]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "AD (n=5)", "CN (n=6)", "MCI (n=5)"}
    browser.feature.value = "feat_2"
    assert browser.figure.axes[0].get_title() == "feat_2"
    browser.by.value = "(none)"
    assert [t.get_text() for t in browser.figure.axes[0].get_legend().get_texts()] == [
        "all (n=16)"]
    before = len(browser.figure.axes[0].patches)
    browser.bins.value = 7
    assert len(browser.figure.axes[0].patches) == 7 != before
    with pytest.raises(ValueError, match="`features` must name columns of `table`"):
        viz.feature_browser(pd.DataFrame({"a": [1]}), ["b"])


def test_slice_viewer_offers_maps_as_overlays(tiny_cohort):
    cohort = read_manifest(tiny_cohort, check_images=False)
    row = cohort.table.iloc[0]
    viewer = viz.slice_viewer({"sub-000": {"mri": row["mri"], "pet": row["pet"],
                                           "saliency": row["pet"], "empty": None}})
    assert list(viewer.modality.options) == ["mri", "pet", "saliency", "PET on MRI",
                                             "saliency on MRI"]
    assert viewer.opacity.disabled
    viewer.modality.value = "saliency on MRI"
    assert not viewer.opacity.disabled and len(viewer.figure.axes[0].images) == 2
    assert "saliency (a.u.)" in [a.get_ylabel() for a in viewer.figure.axes]
