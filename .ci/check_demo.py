"""Fail unless a demo run taught the task: the tuned model's exact match on the held-out prompts.

    python .ci/check_demo.py RUN_DIR

Reads RUN_DIR/summary.json (written by `sftlib demo --out RUN_DIR`). On the lock the demo reaches
87.5%; newer releases may move it a little, not down to chance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FLOOR = 75.0  # percent exact match, tuned


def main(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    base, tuned = summary["base"]["exact_match"], summary["tuned"]["exact_match"]
    line = f"demo: exact match base {base:.1f}% -> tuned {tuned:.1f}% (floor {FLOOR:.0f}%)"
    if tuned < FLOOR or tuned <= base:
        sys.exit(f"error: {line}")
    print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
