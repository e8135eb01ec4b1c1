"""One line naming the installed releases of the libraries sftlib tracks, each against the lock.

    VENV/bin/python .ci/versions.py

`Python 3.13.0, transformers 5.24.0 (lock 5.23.0), trl 1.16.0, ...`: the Python, then the libraries,
those that differ from .ci/constraints.txt first, so a failure on newer releases names its likely cause
at the start of its first line. Run it with the venv's own python (stdlib only).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LOCK = Path(__file__).resolve().parent / "constraints.txt"
TRACKED = ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "torch")


def locked() -> dict[str, str]:
    pins = (re.match(r"([A-Za-z0-9._-]+)==(\S+)", line) for line in LOCK.read_text().splitlines())
    return {m.group(1).lower(): m.group(2) for m in pins if m}


def installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def versions_line() -> str:
    lock = locked()
    changed, same = [], []
    for name in TRACKED:
        have, want = installed(name), lock.get(name)
        if have.split("+")[0] == want:  # 2.13.0+cpu is the lock's torch==2.13.0
            same.append(f"{name} {have}")
        else:
            changed.append(f"{name} {have} (lock {want})")
    return ", ".join([f"Python {sys.version.split()[0]}", *changed, *same])


if __name__ == "__main__":
    print(versions_line())
