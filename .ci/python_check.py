"""Say which Python `make` builds a venv with, and refuse one that sftlib does not support.

    PYTHON .ci/python_check.py

Prints `Python 3.13.0 (/usr/bin/python3.13)`. Below 3.11 (the lock needs 3.11) it exits with one
`error:` line; above 3.13 it warns that the lock was not tested there, and goes on.
"""

from __future__ import annotations

import sys

OLDEST, NEWEST = (3, 11), (3, 13)


def main() -> None:
    here = sys.version_info[:2]
    name = f"Python {sys.version.split()[0]} ({sys.executable})"
    if here < OLDEST:
        sys.exit(
            f"error: {name} is older than sftlib supports (3.11 to 3.13). "
            "Fix: install Python 3.11, 3.12 or 3.13 and pass PYTHON=python3.13 (or its path)."
        )
    print(name)
    if here > NEWEST:
        print(f"warning: sftlib is tested on Python 3.11 to 3.13; the lock may not install on {name}.")


if __name__ == "__main__":
    main()
