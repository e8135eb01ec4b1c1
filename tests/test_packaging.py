"""Packaging: pyproject's ranges, the lock (.ci/constraints.txt), environment.yml and the Makefile agree;
both entry points exist; the notebooks and configs ship inside the package, and an installed wheel runs
from any folder."""

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


LOCK = ROOT / ".ci/constraints.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]


def requirements(*groups: str) -> list[Requirement]:
    """pyproject's dependencies ("runtime") and optional-dependency groups, parsed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = {"runtime": project["dependencies"], **project["optional-dependencies"]}
    return [Requirement(r) for group in groups for r in listed[group]]


def extras() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def locked() -> dict[str, Version]:
    pins = (line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#"))
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_each_dependency_is_a_range_from_a_tested_release_to_the_next_major_after_the_lock():
    lock = locked()
    for req in requirements("runtime", "trackio", "tensorboard"):
        bounds = {spec.operator: Version(spec.version) for spec in req.specifier}
        assert set(bounds) == {">=", "<"}, f"{req}: give it a lower bound and the next major as the upper"
        next_major = Version(str(lock[canonicalize_name(req.name)].major + 1))
        assert bounds["<"] == next_major, f"{req}: the upper bound is the next major, {next_major}"


def test_the_lock_pins_every_dependency_inside_its_range_and_torch_without_a_build_label():
    lock = locked()
    for req in requirements("runtime", *extras()):
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not in the lock: make lock"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"lock {name}=={lock[name]} is outside {req}"
        )
    assert not lock["torch"].local  # torch==2.13.0 matches the CPU build (2.13.0+cpu) and any other


def test_environment_yml_and_the_makefile_install_sftlib_with_every_extra_through_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    *options, editable = pip
    assert options == [f"--extra-index-url {CPU_INDEX}", "-c .ci/constraints.txt"]
    # The export extra builds llama.cpp from source (minutes): `make test` adds it, the others leave it.
    assert editable.startswith("-e .[") and sorted(editable[5:-1].split(",")) == sorted(
        set(extras()) - {"export"}
    )
    assert "python>=3.11,<3.14" in env["dependencies"]  # the Pythons the lock installs on

    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK   := .ci/constraints.txt\n" in makefile
    (line,) = (line for line in makefile.splitlines() if line.startswith("EXTRAS := "))
    assert sorted(line.removeprefix("EXTRAS := ").split(",")) == sorted(set(extras()) - {"export"})
    assert "-c $(LOCK) -e '.[$(EXTRAS),export]'" in makefile and "test: setup $(EXPORT)" in makefile
    assert (
        "$(call venv,$(VENV),--version $(shell sed -n 's/^torch==//p' $(LOCK)),-c $(LOCK),$(PYTHON))"
        in makefile
    )


def test_the_oldest_tier_pins_every_dependency_to_the_lower_bound_of_its_range():
    out = subprocess.run(
        [sys.executable, ROOT / ".ci/lower_bounds.py", *extras()], capture_output=True, text=True, check=True
    )
    pins = [Requirement(line) for line in out.stdout.splitlines()]
    reqs = requirements("runtime", *extras())
    assert [p.name for p in pins] == [r.name for r in reqs]
    for pin, req in zip(pins, reqs, strict=True):
        (spec,) = pin.specifier
        assert spec.operator == "==" and req.specifier.contains(spec.version, prereleases=True)
        assert not any(
            Version(spec.version) > Version(s.version) for s in req.specifier if s.operator == ">="
        )


def test_an_unreachable_cpu_index_is_reported_at_once_not_retried():
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("cpu_torch", ROOT / ".ci/cpu_torch.py")
    cpu_torch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_torch)
    with socket.socket() as closed:  # a port nothing listens on: bound, never accepting
        closed.bind(("127.0.0.1", 0))
        start = time.monotonic()
        why = cpu_torch.index_unreachable(f"http://127.0.0.1:{closed.getsockname()[1]}/whl/cpu")
    assert why and time.monotonic() - start < cpu_torch.PROBE_TIMEOUT_S + 1
    assert cpu_torch.CPU_INDEX == CPU_INDEX


def test_without_the_cpu_index_or_a_local_wheel_one_line_names_both_before_the_registry(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        index = f"http://127.0.0.1:{closed.getsockname()[1]}/whl/cpu"
        # torch 0.0.1 exists nowhere: the local wheels and the registry are both asked, and both refuse
        out = subprocess.run(
            [sys.executable, ROOT / ".ci/cpu_torch.py", sys.executable, "--version", "0.0.1", "--index", index],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip
    assert out.returncode != 0
    (said,) = [line for line in out.stdout.splitlines() if line.startswith("torch:")]
    assert index in said and "find-links hold no CPU wheel of torch==0.0.1" in said and "registry" in said
    assert out.stderr.strip().splitlines()[-1].startswith("error: no torch==0.0.1 from PyTorch's CPU index")


def test_python_dash_m_sftlib_prints_help():
    out = subprocess.run([sys.executable, "-m", "sftlib", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for command in ("train", "check", "masks", "merge", "generate"):
        assert command in out.stdout


def test_bad_config_key_fails_in_one_error_line_without_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  path: x\ndataset:\n  name: y\ntraining:\n  learning_rat: 0.1\n")
    out = subprocess.run(
        [sys.executable, "-m", "sftlib", "train", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unknown config key `training.learning_rat`")
    assert "learning_rate" in last
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------- notebooks and configs ship


def shipped_files() -> list[Path]:
    """Every file under notebooks/ and configs/ that a user of an installed sftlib needs."""
    skip = ("__pycache__", ".ipynb_checkpoints")
    return sorted(
        p
        for folder in ("notebooks", "configs")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and not any(part in skip for part in p.parts) and p.suffix != ".pyc"
    )


def test_every_notebook_and_config_is_package_data():
    from fnmatch import fnmatch

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {folder: package for package, folder in setuptools["package-dir"].items()}
    for path in shipped_files():
        rel = path.relative_to(ROOT)
        package = ".".join([roots[rel.parts[0]], *rel.parts[1:-1]])
        assert package in setuptools["packages"], f"{rel}: add {package} to [tool.setuptools] packages"
        globs = setuptools["package-data"].get(package, []) + ["__init__.py"]
        assert any(fnmatch(rel.name, g) for g in globs), f"{rel}: no package-data glob of {package} matches"


def test_every_python_package_of_sftlib_is_listed():
    # An editable install finds an unlisted package; only the wheel drops it (sftlib.export did once).
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "sftlib").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found - set(setuptools["packages"]) == set(), "add these to [tool.setuptools] packages"


def test_an_editable_install_finds_the_checkouts_notebooks_and_configs_from_any_folder(tmp_path):
    code = "from sftlib import shipped; print(shipped.notebooks_dir()); print(shipped.config('demo.yaml'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(ROOT / "notebooks"), str(ROOT / "configs/demo.yaml")]


def build_wheel(tmp: Path) -> Path:
    """sftlib's wheel, built without a network from a copy of the sources in tmp/src, into tmp/dist."""
    import shutil

    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ("sftlib", "notebooks", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("sftlib-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv holding sftlib from a wheel (built from a copy of the sources), whose dependencies
    are those of this environment: a .pth file adds this venv's site-packages after its own. Nothing
    is downloaded. Its nbconvert templates are data files of this environment too (JUPYTER_PATH)."""
    import sysconfig
    import venv

    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp)

    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [*PIP, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {**os.environ, "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}
    env.pop("PYTHONPATH", None)
    return {"bin": env_dir / "bin", "site": Path(site), "wheel": wheel, "env": env}


@pytest.mark.slow
def test_the_wheel_carries_every_notebook_and_config(wheel_venv):
    import zipfile

    names = set(zipfile.ZipFile(wheel_venv["wheel"]).namelist())
    for path in shipped_files():
        rel = path.relative_to(ROOT)
        assert f"sftlib/{rel}" in names, rel


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_help_and_a_pipeline_from_another_folder(wheel_venv, tmp_path):
    from sftlib.lessons import demo

    env, bin_dir = wheel_venv["env"], wheel_venv["bin"]
    where = subprocess.run(
        [bin_dir / "python", "-c", "import sftlib, sftlib.shipped as s; print(sftlib.__file__); print(s.config('data/iso_dates'))"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    module, data = (Path(line) for line in where.stdout.split())
    assert module.is_relative_to(wheel_venv["site"]) and (data / "train.jsonl").is_file()
    assert data.is_relative_to(wheel_venv["site"])  # the wheel's copy, not this checkout's

    helped = subprocess.run(
        [bin_dir / "sftlib", "demo", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert helped.returncode == 0 and "configs/demo.yaml as shipped with sftlib" in " ".join(
        helped.stdout.split()
    )

    # A user's own folder: their config and data, with paths relative to it.
    demo.write_demo_dataset(tmp_path / "data", n_train=16, n_eval=4)
    config = (ROOT / "configs/tiny.yaml").read_text()
    config = config.replace("name: configs/data/iso_dates", "name: data").replace(
        "output_dir: runs/tiny", "output_dir: runs/model"
    )
    (tmp_path / "my.yaml").write_text(config)
    cmd = [bin_dir / "sftlib", "pipeline", "--config", "my.yaml", "--out", "runs/suite", "--only", "01", "03"]
    ran = subprocess.run(
        [*cmd, "--set", "training.max_steps=2"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert "done: 2 notebooks" in ran.stdout
    summary = json.loads((tmp_path / "runs/suite/summary.json").read_text())
    assert list(summary["notebooks"]) == ["01_explore_dataset", "03_train"]
    assert summary["notebooks"]["01_explore_dataset"]["results"]["report"]["train"]["rows"] == 16
    info = json.loads(
        (tmp_path / "runs/suite/model/run_info.json").read_text()
    )  # OUT/model, relative to here
    assert info["global_step"] == 2 and summary["world_size"] == 1
    assert not (tmp_path / "runs/model").exists()  # the config's own output_dir gives way to --out
