"""sftlib installs beside the stack an environment already has.

A venv holds the CUDA build of torch 2.14.1 with its CUDA libraries (a GPU machine's torch, and not the
lock's 2.13.0) and transformers 5.24.0 (inside sftlib's range, not the lock's 5.23.0). Installing the
sftlib wheel with its dependencies adds what is missing and leaves both as they were. pip uses only the
sources it is configured with, plus WHEELS. torch 2.14.1 is a CUDA build that brings about 3 GB of CUDA
libraries and imports and runs on a CPU; the test runs only where pip finds that torch wheel on local disk
(this project's machines keep it there; `pip download` into WHEELS puts it there), and otherwise skips,
saying how to get it.
"""

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import require
from tests.test_packaging import PIP, build_wheel

FOREIGN = {"torch": "2.14.1", "transformers": "5.24.0"}
WHEELS = Path.home() / ".cache" / "sftlib" / "wheels"  # where `pip download` may put FOREIGN for this test


def find_links() -> list[str]:
    return ["--find-links", str(WHEELS)] if WHEELS.is_dir() else []


def local_wheel(requirement: str) -> str | None:
    """The local file pip would install `requirement` from, or None where it would download it."""
    proc = subprocess.run(
        [*PIP, "install", "--dry-run", "--no-deps", "--ignore-installed", "--report", "-", *find_links(), requirement],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    (item,) = json.loads(proc.stdout)["install"]
    url = item["download_info"]["url"]
    return url.removeprefix("file://") if url.startswith("file://") else None


def fingerprint(python: Path, name: str) -> tuple[str, str]:
    """The installed version of `name` and the text of its RECORD (every file with its hash)."""
    code = (
        "import sys; from importlib.metadata import distribution as d; "
        "dist = d(sys.argv[1]); print(dist.version); print(dist.read_text('RECORD'))"
    )
    out = subprocess.run([python, "-c", code, name], capture_output=True, text=True, check=True).stdout
    version, record = out.split("\n", 1)
    return version, record


@pytest.mark.slow
def test_installing_the_wheel_leaves_the_environments_cuda_torch_and_transformers_in_place(tmp_path):
    stack = [f"{name}=={version}" for name, version in FOREIGN.items()]
    require(
        local_wheel(stack[0]) is not None,
        f"the CUDA build of {stack[0]} on local disk (else pip downloads it, about 3 GB with its CUDA libraries)",
        f"pip download --dest {WHEELS} {' '.join(stack)}",
    )
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    install = [*PIP, "--python", str(python), "install", "--no-compile", *find_links()]
    try:
        proc = subprocess.run([*install, *stack], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        before = {name: fingerprint(python, name) for name in FOREIGN}
        assert before["torch"][0] == FOREIGN["torch"] and before["transformers"][0] == FOREIGN["transformers"]

        report = tmp_path / "report.json"
        proc = subprocess.run([*install, "--report", str(report), str(wheel)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]

        installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
        assert "sftlib" in installed and {"trl", "peft", "accelerate", "datasets"} <= installed
        assert not installed & {"torch", "transformers"}
        assert not any(name.startswith("nvidia") for name in installed)
        assert {name: fingerprint(python, name) for name in FOREIGN} == before
        ran = subprocess.run(
            [python, "-c", "import torch, transformers, trl, sftlib.cli; print(torch.version.cuda, transformers.__version__)"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        cuda, transformers = ran.stdout.split()
        assert cuda != "None" and transformers == FOREIGN["transformers"]  # the CUDA build still imports
    finally:
        shutil.rmtree(env_dir)  # 5 GB of CUDA libraries: not kept among pytest's last three runs
