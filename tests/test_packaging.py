"""The install story: pyproject, lock, environment.yml and Makefile agree."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _runtime_dependencies() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [_name(r) for r in project["dependencies"]]


def test_every_runtime_dependency_is_in_environment_yml():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    named: set[str] = set()
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        named.update(_name(item) for item in items)
    missing = [d for d in _runtime_dependencies() if d not in named]
    assert not missing, f"environment.yml lacks {missing}"


def test_every_runtime_dependency_is_pinned_in_the_lock():
    lock = {}
    for line in (REPO / "requirements-lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[_name(name)] = version.strip()
    missing = [d for d in _runtime_dependencies() if d not in lock]
    assert not missing, f"requirements-lock.txt lacks {missing}"
    assert lock["torch"] == "2.13.0", "torch must stay pinned to 2.13.0 (see README)"


def test_makefile_has_the_readme_commands_and_ci_calls_make_test():
    makefile = (REPO / "Makefile").read_text()
    for target in ("setup:", "demo:", "test:", "lab:"):
        assert re.search(rf"^{target}", makefile, re.M), f"Makefile lacks `{target}`"
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_dev_tools_are_pinned_and_ci_lints_and_type_checks_first():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = [_name(r) for r in project["optional-dependencies"]["dev"]]
    assert {"pytest", "ruff", "mypy"} <= set(dev)
    lock = {_name(line.split("==")[0]) for line in
            (REPO / "requirements-lock.txt").read_text().splitlines() if "==" in line}
    assert not [d for d in dev if d not in lock], "the lock must pin the dev tools"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^lint: setup\n\t\$\(BIN\)/ruff check gazimed_lab", makefile, re.M)
    assert re.search(r"^typecheck: setup\n\t\$\(BIN\)/mypy gazimed_lab", makefile, re.M)
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if "make " in line and not line.lstrip().startswith("#")]
    assert [s.split("make ")[1] for s in steps][:3] == ["lint", "typecheck", "test"], steps
    mypy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["python_version"] == "3.11" and mypy["ignore_missing_imports"] is True


def test_presets_and_type_marker_ship_as_package_data():
    assert (REPO / "gazimed_lab" / "py.typed").exists()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "presets/*.yaml" in data["package-data"]["gazimed_lab"]
