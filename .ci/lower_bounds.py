"""Print pip constraints that pin each of sftlib's dependencies to the lowest release its range allows.

    python .ci/lower_bounds.py [EXTRA ...] > oldest.txt

The dependencies of pyproject.toml, and of the named extras: `>=X` becomes `==X`, `==X` stays. The
oldest tier (`make test-oldest`) installs through these, so it tests exactly the lower bounds.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lowest(requirement: str) -> str:
    """`name>=X,<Y` -> `name==X`; a requirement without a lower bound is an error (its range has none)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    floor = re.search(r"(>=|==)\s*([^,;\s]+)", requirement)
    if floor is None:
        sys.exit(f"error: `{requirement}` in pyproject.toml has no lower bound. Fix: give it one (>=).")
    return f"{name}=={floor.group(2)}"


def lower_bounds(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return [lowest(r) for r in requirements]


if __name__ == "__main__":
    print("\n".join(lower_bounds(sys.argv[1:])))
