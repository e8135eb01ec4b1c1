"""Install torch into a venv, a CPU build wherever one can be had, and say where it came from.

In order: PyTorch's CPU wheel index (named explicitly: the default registry's Linux torch is a CUDA
build of several GB); a local CPU wheel offered by pip's find-links (this project's machines keep one
for Python 3.11); else the registry's build, after one line naming both sources that were missing. The
registry's Linux build is a CUDA one: it runs on the CPU too, and the line that ends the install says
which build it is.

    python .ci/cpu_torch.py VENV/bin/python (--version 2.13.0 | --newest) [--record FILE]

Prints one line, `torch 2.13.0+cpu (CPU build) from ...`, and writes it to FILE too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Only the probe of the index is short: an unreachable index fails in this time, once. The download
# itself (about 200 MB) runs with pip's own timeout and retries.
PROBE_TIMEOUT_S = 10


def index_unreachable(index: str) -> str | None:
    """None if `index` answers for torch within the probe's timeout, else why not."""
    try:
        with urllib.request.urlopen(f"{index}/torch/", timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        return str(getattr(exc, "reason", exc))


def pip_install(python: str, args: list[str], report: Path | None = None, quiet: bool = False) -> bool:
    """pip install `args`; `quiet` keeps pip's own errors off the terminal (a probe whose failure is said
    in other words)."""
    cmd = [python, "-m", "pip", "install", "--quiet", *(["--report", str(report)] if report else []), *args]
    return subprocess.run(cmd, capture_output=quiet).returncode == 0


def install(python: str, requirement: str, index: str, unreachable: str | None, upgrade: bool):
    """(pip's installation report, where torch came from): PyTorch's CPU index when reachable; else a
    local CPU wheel (pip's find-links, `--no-index`), then its dependencies from pip's usual sources;
    else the registry."""
    upgrade_flag = ["--upgrade"] if upgrade else []
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        if unreachable is None:
            if not pip_install(python, ["--index-url", index, *upgrade_flag, requirement], report):
                sys.exit(
                    f"error: pip could not install {requirement} from PyTorch's CPU index ({index}). "
                    "Fix: see pip's error above; run `make` again to retry."
                )
            return json.loads(report.read_text()), "cpu-index"
        local = ["--no-index", "--no-deps", *upgrade_flag, requirement]
        if pip_install(python, local, report, quiet=True):
            if not pip_install(python, [f"torch=={installed_version(python)}"]):
                sys.exit("error: torch's dependencies did not install. Fix: see pip's error above.")
            return json.loads(report.read_text()), "local"
        print(
            f"torch: PyTorch's CPU index ({index}) is unreachable ({unreachable}) and pip's find-links hold "
            f"no CPU wheel of {requirement} for Python {sys.version_info.major}.{sys.version_info.minor}: "
            "installing the registry's build (on Linux a CUDA build, about 3 GB, which runs on the CPU too)",
            flush=True,
        )
        if not pip_install(python, [*upgrade_flag, requirement], report):
            sys.exit(
                f"error: no {requirement} from PyTorch's CPU index, a local wheel or the registry. "
                "Fix: install torch into the venv yourself (docs/install.md), then run `make` again."
            )
        return json.loads(report.read_text()), "registry"


def installed_version(python: str) -> str:
    probe = "from importlib.metadata import version; print(version('torch'))"
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def source(report: dict, how: str, index: str, unreachable: str | None) -> str:
    url = next(
        (i["download_info"]["url"] for i in report["install"] if i["metadata"]["name"] == "torch"), None
    )
    if url is None:
        return "the venv (already installed)"
    if how == "cpu-index":
        return f"PyTorch's CPU index ({index})"
    where = urllib.parse.unquote(url.removeprefix("file://"))
    why = f"PyTorch's CPU index {index} unreachable: {unreachable}"
    return f"{'a local CPU wheel' if how == 'local' else 'the registry'}, {where} ({why})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("python", help="the venv's python")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="the exact torch release (the lock's)")
    which.add_argument("--newest", action="store_true", help="the newest build on offer")
    parser.add_argument("--index", default=CPU_INDEX)
    parser.add_argument("--record", type=Path, help="also write the line to this file")
    args = parser.parse_args()

    unreachable = index_unreachable(args.index)
    requirement = "torch" if args.newest else f"torch=={args.version}"
    report, how = install(args.python, requirement, args.index, unreachable, upgrade=args.newest)
    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    version, cuda = subprocess.run(
        [args.python, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    if cuda != "None" and how != "registry":
        sys.exit(
            f"error: torch {version} from {how} is a CUDA {cuda} build, not a CPU one. "
            "Fix: install a CPU torch yourself (docs/install.md)."
        )
    build = "CPU build" if cuda == "None" else f"CUDA {cuda} build"
    line = f"torch {version} ({build}) from {source(report, how, args.index, unreachable)}"
    print(line)
    if args.record:
        args.record.write_text(line + "\n")


if __name__ == "__main__":
    main()
