"""The notebooks' ipywidgets browsers: built and redrawn in Python, then in a real JupyterLab.

The first tests construct the widgets without a display. The browser test starts
JupyterLab the way ``make lab`` does (``gazimed_lab.notebook.lab_launch``; here on a
free port, without a token or a browser tab) and drives Debian's Chromium through
Selenium and chromedriver.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import DATA_SAMPLES, GUARD, guard_module
from test_notebooks import quick_pipeline_run

from gazimed_lab import viz
from gazimed_lab.data.manifest import read_manifest
from gazimed_lab.data.qa import run_qa
from gazimed_lab.notebook import lab_launch
from gazimed_lab.pipeline import KERNEL_NAME, notebooks_dir


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


def test_qa_browser_without_matches_and_errors(tiny_cohort, capsys):
    table = run_qa(tiny_cohort, grid="demo_4mm").table
    clean = table[table["subject_id"] != "sub-003"]
    browser = viz.qa_browser(clean)
    assert list(browser.flag.options) == ["all subjects", "flagged", "not flagged"]
    capsys.readouterr()
    browser.flag.value = "flagged"
    assert browser.subject.value is None and browser.figure is None
    assert "no subject is flagged" in capsys.readouterr().out  # the Output widget, no kernel
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


# ------------------------------------------------------------- JupyterLab in Chromium
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
# A widget displayed by a cell (not one inside another widget's Output).
TOP_LEVEL_WIDGETS = (".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output > "
                     ".jupyter-widgets")
REDRAW_SECONDS = 30.0  # generous: 2 shared cores; the measured times are printed
# notebook -> (parameters besides run_dir and interactive, per widget it shows: the
# dropdown to change and the option to pick; its first enabled slider is moved too)
BROWSED: dict[str, tuple[dict[str, Any], list[tuple[str, str]]]] = {
    "01_data_qa": ({"n_features_shown": 4}, [("show", "not flagged"), ("colour by", "sex")]),
    "03_metrics_dashboard": ({"n_boot": 100}, [("metric", "calibration")]),
    "04_slice_viewer": ({"occlusion_mask_size": 10, "smoothgrad_samples": 2,
                         "max_per_group": 2, "group_smoothgrad_samples": 1},
                        [("modality", "saliency on MRI")]),
}
SLIDER_MOVE_PX = 25  # to the right, from the handle's centre


def prepare_notebooks(root: Path, run_dir: Path, cache_dir: Path,
                      source: Path | None = None) -> None:
    """Copies of the browsed notebooks with papermill's injected parameters cell."""
    from papermill.iorw import load_notebook_node, write_ipynb
    from papermill.parameterize import parameterize_notebook

    source = source or notebooks_dir()
    for name, (params, _) in BROWSED.items():
        nb = load_notebook_node(str(source / f"{name}.ipynb"))
        given = {"run_dir": str(run_dir), "interactive": True,
                 "manifest": str(DATA_SAMPLES / "manifest.csv"), "cache_dir": str(cache_dir),
                 **params}
        declared = {k for k in given if re.search(rf"^{k} = ", nb.cells[1].source, re.M)}
        nb = parameterize_notebook(nb, {k: v for k, v in given.items() if k in declared},
                                   kernel_name=KERNEL_NAME)
        write_ipynb(nb, str(root / f"{name}.ipynb"))


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the quick pipeline's run folder (trained once per session) and its cache."""
    run, _, _ = quick_pipeline_run(tmp_path_factory)
    copy = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(run, copy)
    return copy, run.parent / "cache"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, browser_run: tuple[Path, Path]) -> Iterator[Lab]:
    """JupyterLab started as ``make lab`` starts it, on a free port, without a token.

    The server and every kernel run with the network blocked (tests/guard); the
    fixture fails if anything tried to reach beyond 127.0.0.1.
    """
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver")
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    prepare_notebooks(root, *browser_run)
    with pytest.MonkeyPatch.context() as mp:  # lab_launch writes its labconfig here
        mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))
        launch = lab_launch(root, token="", open_browser=False)
    env = {**launch.env, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(GUARD), os.environ.get("PYTHONPATH"))
                                         if p),
           "GAZIMED_GUARD_NETWORK": "1", "GAZIMED_GUARD_LOG": str(tmp / "guard")}
    log = (tmp / "lab.log").open("w")
    proc = subprocess.Popen(launch.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{launch.port}/api/status",
                                            timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp / "lab.log").read_text()[-3000:]
                    raise RuntimeError(f"JupyterLab did not start: {log_text}") from None
                time.sleep(0.5)
        yield Lab(launch.port, f"http://127.0.0.1:{launch.port}", root, tmp)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the lab and its kernels: our process group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    blocked = [r for r in guard_module().read_records(tmp / "guard") if r["event"] == "network"]
    assert blocked == [], f"JupyterLab or a kernel tried to reach the network: {blocked}"


@pytest.fixture(scope="module")
def driver(lab: Lab) -> Iterator[Any]:
    """Headless Debian Chromium through chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", "--hide-scrollbars"):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(lab.tmp / "driver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: port, base URL, root folder (the notebooks) and temp folder."""

    port: int
    base: str
    root: Path
    tmp: Path


class Page:
    """One notebook open in JupyterLab, driven as a user would: menus, dropdowns, handles."""

    def __init__(self, driver: Any, lab: Lab, name: str, shots: Path) -> None:
        self.driver, self.lab, self.name, self.shots = driver, lab, name, shots
        self.shots.mkdir(parents=True, exist_ok=True)
        self.n_shots = 0
        self.timings: dict[str, float] = {}

    def shot(self, label: str) -> Path:
        self.n_shots += 1
        path = self.shots / f"{self.name}-{self.n_shots:02d}-{label}.png"
        self.driver.save_screenshot(str(path))
        return path

    def _wait(self, what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                self.shot("timeout")
                raise AssertionError(f"{self.name}: {what} within {timeout:.0f} s "
                                     f"(screenshots in {self.shots})")
            time.sleep(every)

    def session(self) -> dict[str, Any] | None:
        with urllib.request.urlopen(f"{self.lab.base}/api/sessions", timeout=10) as reply:
            sessions = json.loads(reply.read())
        return next((s for s in sessions if s["path"] == f"{self.name}.ipynb"), None)

    def open(self) -> tuple[str, str]:
        """Open the notebook; return its kernel's name and the name the toolbar shows."""
        from selenium.webdriver.common.by import By

        self.driver.get(f"{self.lab.base}/lab/tree/{self.name}.ipynb?reset")
        cells = ".jp-NotebookPanel .jp-CodeCell"
        self._wait("the notebook must open",
                   lambda: self.driver.find_elements(By.CSS_SELECTOR, cells), 60)
        session = self._wait("its kernel must start and be idle", lambda: (
            (s := self.session()) and s["kernel"]["execution_state"] == "idle" and s), 120)
        shown = self._wait("the toolbar must name the kernel", lambda: self.driver.execute_script(
            "const e = document.querySelector('.jp-NotebookPanel-toolbar "
            ".jp-KernelName, .jp-NotebookPanel-toolbar [data-jp-item-name=kernelName]');"
            "return e ? e.textContent.trim() : '';"), 30)
        self.shot("opened")
        return session["kernel"]["name"], shown

    def prompts(self) -> list[str]:
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell "
            ".jp-InputArea-prompt')).map(e => e.textContent.trim());")

    def run_all(self, timeout: float) -> float:
        """Run > Run All Cells from the menu bar; wait until no cell is queued or running."""
        from selenium.webdriver.common.by import By

        start = time.monotonic()
        menu = next(e for e in self.driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
                    if e.text.strip() == "Run")
        menu.click()
        self._wait("the Run menu must offer Run All Cells", lambda: [
            e for e in self.driver.find_elements(By.CSS_SELECTOR, "#jp-mainmenu-run li")
            if e.text.strip().startswith("Run All Cells")], 10)[0].click()

        def finished() -> bool:
            prompts = self.prompts()
            return not any("*" in p for p in prompts) and any(re.search(r"\d", p) for p in prompts)

        self._wait("Run All must finish", lambda: finished() and (time.sleep(1.0) or finished()),
                   timeout, every=1.0)
        return time.monotonic() - start

    def save(self) -> Any:
        """Save from the toolbar; return the saved notebook read from disk."""
        import nbformat
        from selenium.webdriver.common.by import By

        path = self.lab.root / f"{self.name}.ipynb"
        before = path.stat().st_mtime_ns
        self.driver.find_element(
            By.CSS_SELECTOR, '.jp-NotebookPanel-toolbar jp-button[data-command="docmanager:save"]'
        ).click()
        self._wait("the notebook must be saved", lambda: path.stat().st_mtime_ns != before, 30)
        time.sleep(0.5)
        return nbformat.read(path, as_version=4)

    def widgets(self) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, TOP_LEVEL_WIDGETS)

    def shown_as_text(self) -> list[str]:
        """Outputs showing a widget or a figure as text, or a widget's error message."""
        texts = self.driver.execute_script(
            "return Array.from(document.querySelectorAll("
            "'.jp-NotebookPanel .jp-OutputArea-output')).map(e => e.innerText.trim());")
        bad = re.compile(r"^\w+\(children=|Error displaying widget|Failed to (load|create)|"
                         r"Loading widget|model not found|javascript error|^<Figure size", re.M)
        return [t[:200] for t in texts if bad.search(t)]

    def images(self, root: Any) -> str:
        """Digest of the images a widget shows now ("" when none)."""
        sources = self.driver.execute_script(
            "return Array.from(arguments[0].querySelectorAll('img')).map(e => e.src);", root)
        return hashlib.sha1("".join(sources).encode()).hexdigest() if sources else ""

    def _changed(self, root: Any, before: str, what: str) -> float:
        start = time.monotonic()
        self._wait(f"{what} must change the displayed image",
                   lambda: self.images(root) not in ("", before), REDRAW_SECONDS, every=0.1)
        return time.monotonic() - start

    def drive(self, root: Any, index: int, dropdown: str, option: str) -> None:
        """Move the widget's first enabled slider, then pick ``option`` in ``dropdown``."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", root)
        before = self.images(root)
        sliders = [s for s in root.find_elements(By.CSS_SELECTOR, ".widget-slider")
                   if s.find_elements(By.CSS_SELECTOR, ".noUi-handle")
                   and not s.find_elements(By.CSS_SELECTOR, "[disabled]")]
        selects = {s.find_element(By.XPATH, "./preceding-sibling::label").text: s
                   for s in root.find_elements(By.CSS_SELECTOR, ".widget-dropdown select")}
        self.widget_shot(root, f"widget{index}")
        assert before and sliders and dropdown in selects, (
            f"{self.name}: widget {index} must render as controls with an image, got "
            f"{len(sliders)} sliders, dropdowns {sorted(selects)}, image {bool(before)}: "
            f"{root.text[:300]!r} (screenshots in {self.shots})")
        label = sliders[0].text.split("\n")[0] or "slider"
        handle = sliders[0].find_element(By.CSS_SELECTOR, ".noUi-handle")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
        ActionChains(self.driver).click_and_hold(handle).move_by_offset(
            SLIDER_MOVE_PX, 0).release().perform()
        seconds = self._changed(root, before, f"moving the {label!r} slider of widget {index}")
        self.timings[f"widget{index} slider {label}"] = round(seconds, 2)
        self.widget_shot(root, f"widget{index}-slider")
        before = self.images(root)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});",
                                   selects[dropdown])
        Select(selects[dropdown]).select_by_visible_text(option)
        seconds = self._changed(root, before, f"picking {option!r} in the {dropdown!r} "
                                              f"dropdown of widget {index}")
        self.timings[f"widget{index} dropdown {dropdown}"] = round(seconds, 2)
        self.widget_shot(root, f"widget{index}-{option.replace(' ', '-')}")

    def widget_shot(self, root: Any, label: str) -> Path:
        """Screenshot of one widget: its controls, table and figure (the window is tall)."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", root)
        self.n_shots += 1
        path = self.shots / f"{self.name}-{self.n_shots:02d}-{label}.png"
        root.screenshot(str(path))
        return path

    def shutdown(self) -> None:
        """Shut the notebook's kernel down from the page (the server wants its XSRF cookie)."""
        session = self.session()
        if session:
            self.driver.set_script_timeout(30)
            self.driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';"
                "fetch('/api/sessions/' + arguments[0], {method: 'DELETE', headers: "
                "{'X-XSRFToken': decodeURIComponent(xsrf)}}).then(r => done(r.status), "
                "e => done(String(e)));", session["id"])


@needs_chromium
@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("name", list(BROWSED))
def test_notebook_runs_in_jupyterlab_and_its_widgets_redraw(name, lab, driver, tmp_path):
    page = Page(driver, lab, name, tmp_path / "screenshots")
    where = f"(screenshots in {page.shots})"
    try:
        kernel, shown = page.open()
        assert (kernel, shown) == (KERNEL_NAME, "Python (gazimed-lab)"), where
        with urllib.request.urlopen(f"{lab.base}/api/kernelspecs", timeout=10) as reply:
            assert json.loads(reply.read())["default"] == KERNEL_NAME  # new notebooks too
        page.timings["run all"] = round(page.run_all(timeout=600), 1)
        page.shot("ran")
        saved = page.save()
        assert saved.metadata.kernelspec.name == KERNEL_NAME
        errors = [f"{o.ename}: {o.evalue}" for c in saved.cells if c.cell_type == "code"
                  for o in c.outputs if o.output_type == "error"]
        assert errors == [], f"{name}: error outputs {errors} {where}"
        not_run = [i for i, c in enumerate(saved.cells)
                   if c.cell_type == "code" and c.execution_count is None]
        assert not_run == [], f"{name}: cells {not_run} did not run {where}"
        expected = BROWSED[name][1]
        roots = page.widgets()
        as_text = page.shown_as_text()
        assert len(roots) == len(expected) and not as_text, (
            f"{name}: {len(expected)} widgets must render as controls and figures as images, "
            f"got {len(roots)} widget outputs; not rendered: {as_text} {where}")
        for index, (root, (dropdown, option)) in enumerate(zip(roots, expected)):
            page.drive(root, index, dropdown, option)
    finally:
        (tmp_path / "timings.json").write_text(json.dumps(page.timings, indent=2))
        print(f"{name}: {page.timings} {where}")
        page.shutdown()
