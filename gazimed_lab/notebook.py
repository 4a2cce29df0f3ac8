"""The notebooks' shared setup cell, and JupyterLab started the way ``make lab`` does.

:func:`setup_notebook` is the one call behind every study notebook's parameters:
it seeds, creates the figures folder and builds the config from a preset plus
the notebook's parameters (``None`` keeps the preset's value).

:func:`lab_launch` / :func:`main` start JupyterLab from the project's
environment (``make lab``; the browser test starts it through the same
function): bound to 127.0.0.1, with a token, ``--allow-root`` when run as root,
announcements, update checks and extension installs off, the notebooks folder as
root and the project's kernel ``gazimed-lab`` as the default kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gazimed_lab.pipeline import KERNEL_NAME, notebooks_dir

__all__ = ["LabLaunch", "NotebookSetup", "free_port", "lab_launch", "main", "setup_notebook"]

@dataclass(frozen=True)
class NotebookSetup:
    """What a notebook's setup cell gives the rest of the notebook.

    Attributes
    ----------
    cfg
        The config built from the preset and the notebook's parameters, or
        ``None`` when the notebook names no preset (it reads a finished run).
    run_dir
        The run folder (README: Run folder).
    figures
        ``run_dir/figures``, created.
    seed
        The seed numpy, torch and Python were seeded with.
    """

    cfg: DictConfig | None
    run_dir: Path
    figures: Path
    seed: int


def _check_overrides(overrides: Any) -> list[str]:
    if isinstance(overrides, str) or not isinstance(overrides, Sequence) or not all(
        isinstance(item, str) for item in overrides
    ):
        raise ValueError(
            '`overrides` must be a list of "section.key=value" strings, got '
            f"{overrides!r} (notebook parameters cell)"
        )
    return list(overrides)


def setup_notebook(
    run_dir: str | Path,
    preset: str | Path | None = None,
    manifest: str | Path | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 42,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> NotebookSetup:
    """Seed, create ``run_dir/figures`` and build the notebook's config.

    Parameters
    ----------
    run_dir
        The run folder shared by the notebooks.
    preset
        Config preset name or YAML path; ``None``: no config (``cfg`` is ``None``;
        then ``manifest``, ``cache_dir``, ``overrides`` and ``values`` must be empty).
    manifest, cache_dir
        ``data.manifest`` / ``data.cache_dir``; ``None`` keeps the preset's value.
    seed
        Seeds Python, numpy and torch (``seed_everything``) and sets ``system.seed``.
    overrides
        Extra ``"section.key=value"`` overrides (README: Configuration), applied
        before ``values``.
    values
        Dotted config keys to notebook parameters, e.g.
        ``{"trainer.max_epochs": max_epochs}``; ``None`` values keep the preset's.

    Returns
    -------
    NotebookSetup
        ``cfg``, ``run_dir`` (a Path), ``figures`` (created) and ``seed``.

    Raises
    ------
    ValueError
        If ``overrides`` is not a list of strings, ``seed`` not an int, or config
        values are given without a preset.
    gazimed_lab.config.ConfigError
        If the preset, an override or a value is not valid.
    """
    from pytorch_lightning import seed_everything

    from gazimed_lab.config import load_config, overrides_from

    extra = _check_overrides(overrides)
    values = dict(values or {})
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {seed!r} (notebook parameters cell)")
    if str(run_dir).strip() == "":
        raise ValueError("`run_dir` must be a folder path, got an empty string "
                         "(notebook parameters cell)")
    given = {"manifest": manifest, "cache_dir": cache_dir, "overrides": extra or None,
             **{k: v for k, v in values.items() if v is not None}}
    given = {k: v for k, v in given.items() if v is not None}
    if preset is None and given:
        raise ValueError(
            f"`preset` must be given when config values are, got None with {sorted(given)} "
            "(notebook parameters cell)"
        )
    seed_everything(seed, verbose=False)
    run = Path(run_dir)
    figures = run / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    cfg = None
    if preset is not None:
        base = {"data.manifest": None if manifest is None else str(manifest),
                "data.cache_dir": None if cache_dir is None else str(cache_dir),
                "system.run_dir": str(run), "system.seed": seed}
        cfg = load_config(preset, overrides=[*overrides_from(base), *extra,
                                             *overrides_from(values)])
    return NotebookSetup(cfg=cfg, run_dir=run, figures=figures, seed=seed)


# ------------------------------------------------------------------- JupyterLab
@dataclass(frozen=True)
class LabLaunch:
    """A JupyterLab command line: ``argv``, its environment, URL, port and root folder."""

    argv: list[str]
    env: dict[str, str]
    url: str
    port: int
    root: Path


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens on it at 127.0.0.1, else a free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")  # pragma: no cover


def lab_launch(
    notebook_dir: str | Path | None = None,
    port: int | None = None,
    token: str | None = None,
    open_browser: bool = True,
    python: str = sys.executable,
) -> LabLaunch:
    """Build the JupyterLab command ``make lab`` runs (the browser test starts it too).

    Parameters
    ----------
    notebook_dir
        Root folder of the lab; default: the repository's ``notebooks/``.
    port
        Port on 127.0.0.1; ``None``: a free one.
    token
        Login token; ``None``: a new random token; ``""``: no token (tests only:
        anyone on this machine can then run code in the kernel).
    open_browser
        Let Jupyter open a browser tab.
    python
        The Python of the environment to run JupyterLab from.

    Returns
    -------
    LabLaunch
        ``argv``, ``env`` (the token travels in ``JUPYTER_TOKEN``, not on the
        command line), ``url`` (with the token), ``port`` and ``root``.
    """
    root = Path(notebook_dir or notebooks_dir()).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"`notebook_dir` must be a folder, got a missing path ({root})")
    port = free_port() if port is None else int(port)
    token = secrets.token_hex(24) if token is None else token
    argv = [
        python, "-m", "jupyterlab",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # the lock file pins the environment
    ]
    env = dict(os.environ)
    # Kernels inherit this: figures show as images even where MPLBACKEND=Agg is exported.
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        p for p in (str(_quiet_lab_config()), env.get("JUPYTER_CONFIG_PATH", "")) if p)
    env.pop("JUPYTER_TOKEN", None)
    if token:
        env["JUPYTER_TOKEN"] = token
    else:
        argv.append("--IdentityProvider.token=")
    if not open_browser:
        argv.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # containers and GPU servers often run as root
    url = f"http://127.0.0.1:{port}/lab" + (f"?token={token}" if token else "")
    return LabLaunch(argv=argv, env=env, url=url, port=port, root=root)


#: JupyterLab's announcements plugin asks "Would you like to get notified about official
#: Jupyter news?" even with ``news_url=None``; disabling the plugin is the only way.
_QUIET_PAGE_CONFIG = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}


def _quiet_lab_config() -> Path:
    """Write (once) and return a Jupyter config folder that disables the announcements."""
    from jupyter_core.paths import jupyter_runtime_dir

    folder = Path(jupyter_runtime_dir()) / "gazimed-lab-config"
    page = folder / "labconfig" / "page_config.json"
    text = json.dumps(_QUIET_PAGE_CONFIG, indent=2) + "\n"
    if not page.is_file() or page.read_text() != text:
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(text)
    return folder


def _kernel_registered() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL_NAME in KernelSpecManager().find_kernel_specs()


def main(argv: list[str] | None = None) -> int:
    """``python -m gazimed_lab.notebook``: start JupyterLab as ``make lab`` does."""
    parser = argparse.ArgumentParser(
        prog="python -m gazimed_lab.notebook",
        description="JupyterLab on 127.0.0.1 with a token, on the notebooks folder, with the "
                    f"`{KERNEL_NAME}` kernel as default.")
    parser.add_argument("--notebook-dir", default=None, help="default: the notebooks folder")
    parser.add_argument("--port", type=int, default=8888,
                        help="preferred port (a free one when taken; default 8888)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    args = parser.parse_args(argv)
    if not _kernel_registered():
        print(f"warning: Jupyter kernel `{KERNEL_NAME}` is not registered (run `make setup`)",
              file=sys.stderr)
    launch = lab_launch(args.notebook_dir, port=free_port(args.port),
                        open_browser=not args.no_browser)
    print(f"JupyterLab (kernel {KERNEL_NAME}) on {launch.root}\n"
          f"  open: {launch.url}\n"
          f"  from another machine: ssh -L {launch.port}:127.0.0.1:{launch.port} HOST, "
          "then open the same URL", flush=True)
    os.execve(launch.argv[0], launch.argv, launch.env)
    return 0  # pragma: no cover (execve does not return)


if __name__ == "__main__":
    raise SystemExit(main())
