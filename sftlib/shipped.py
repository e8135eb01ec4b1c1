"""Where the notebooks and configs that ship with sftlib lie, in a checkout and when installed.

They stay at the top of the repository (`notebooks/`, `configs/`), where JupyterLab and the README's
commands find them; pyproject.toml maps them into the package as `sftlib.notebooks` and
`sftlib.configs`, so an editable install and a wheel both reach them through importlib.resources,
from any working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from sftlib.errors import SftlibError


def notebooks_dir() -> Path:
    """The folder holding the notebook suite (`NN_name.ipynb`)."""
    return _folder("sftlib.notebooks")


def configs_dir() -> Path:
    """The folder holding the shipped run configs, `accelerate/`, `slurm/` and `data/`."""
    return _folder("sftlib.configs")


def config(name: str) -> Path:
    """A shipped file under configs/, e.g. config("demo.yaml") or config("data/iso_dates")."""
    path = configs_dir() / name
    if not path.exists():
        raise SftlibError(f"sftlib ships no configs/{name}.", f"see {configs_dir()} for what it ships.")
    return path


def _folder(package: str) -> Path:
    # papermill and the config loader need real files; a package imported from a zip has none.
    found = files(package)
    if not isinstance(found, Path) or not found.is_dir():
        raise SftlibError(
            f"sftlib's {package} is not a folder on disk ({found}), so its files can't be read.",
            "install sftlib as files (pip install sftlib, or pip install -e . in a checkout), not as a zip.",
        )
    return found
