"""Install a CPU build of torch into a venv, and say where it came from.

From PyTorch's CPU wheel index (named explicitly: the default registry's Linux torch is a CUDA build of
several GB); where that index is unreachable, from a local CPU wheel offered by pip's find-links (this
project's machines keep one), and from nowhere else. A build that turns out not to be a CPU one fails.

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
TIMEOUT_S = 5  # an unreachable index fails in this time, once: no retries


def index_unreachable(index: str) -> str | None:
    """None if `index` answers for torch within the timeout, else why not."""
    try:
        with urllib.request.urlopen(f"{index}/torch/", timeout=TIMEOUT_S):
            return None
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        return str(getattr(exc, "reason", exc))


def install(python: str, requirement: str, index: str, reachable: bool, upgrade: bool) -> dict:
    """pip's installation report of torch: from `index`, or else torch itself from local wheels only
    (pip's find-links) and then its dependencies (filelock, sympy, ...) from pip's usual sources."""
    pip = [python, "-m", "pip", "install", "--quiet"]
    where = f"PyTorch's CPU index ({index})" if reachable else "a local CPU wheel (pip's find-links)"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        source = ["--timeout", str(TIMEOUT_S), "--retries", "0", "--index-url", index]
        cmd = [*pip, "--report", str(report), *(source if reachable else ["--no-index", "--no-deps"])]
        if subprocess.run([*cmd, *(["--upgrade"] if upgrade else []), requirement]).returncode != 0:
            sys.exit(
                f"error: no {requirement} from {where}. Fix: install a CPU torch yourself first (docs/install.md)."
            )
        if not reachable and subprocess.run([*pip, f"torch=={installed_version(python)}"]).returncode != 0:
            sys.exit("error: torch's dependencies did not install. Fix: see pip's error above.")
        return json.loads(report.read_text())


def installed_version(python: str) -> str:
    probe = "from importlib.metadata import version; print(version('torch'))"
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def source(report: dict, index: str, unreachable: str | None) -> str:
    url = next(
        (i["download_info"]["url"] for i in report["install"] if i["metadata"]["name"] == "torch"), None
    )
    if url is None:
        return "the venv (already installed)"
    if url.startswith(index):
        return f"PyTorch's CPU index ({index})"
    where = urllib.parse.unquote(url.removeprefix("file://"))
    why = f"PyTorch's CPU index {index} unreachable: {unreachable}" if unreachable else "pip preferred it"
    return f"a local CPU wheel, {where} ({why})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("python", help="the venv's python")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="the exact torch release (the lock's)")
    which.add_argument("--newest", action="store_true", help="the newest CPU build on offer")
    parser.add_argument("--index", default=CPU_INDEX)
    parser.add_argument("--record", type=Path, help="also write the line to this file")
    args = parser.parse_args()

    unreachable = index_unreachable(args.index)
    requirement = "torch" if args.newest else f"torch=={args.version}"
    report = install(args.python, requirement, args.index, unreachable is None, upgrade=args.newest)
    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    version, cuda = subprocess.run(
        [args.python, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    if cuda != "None":
        sys.exit(
            f"error: torch {version} is a CUDA {cuda} build, not a CPU one. Fix: install a CPU torch yourself."
        )
    line = f"torch {version} (CPU build) from {source(report, args.index, unreachable)}"
    print(line)
    if args.record:
        args.record.write_text(line + "\n")


if __name__ == "__main__":
    main()
