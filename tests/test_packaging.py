"""Packaging: pyproject and environment.yml agree; both entry points exist."""

import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    for sep in ("==", ">=", "<=", "~=", "<", ">", "["):
        req = req.split(sep)[0]
    return req.strip().lower()


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {r for r in pip if not r.startswith("-e")}
    assert {_name(r): r for r in listed} == {_name(r): r for r in wanted}


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
