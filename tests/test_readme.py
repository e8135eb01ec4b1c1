"""README.md is a script that works: its shell blocks, run in order in a fresh clone, each command succeeds.

The slow test clones this repository's HEAD into a temporary folder and runs every command of every
bash block of README.md in order, in one shell (so `source .venv/bin/activate` holds for the commands
after it), as a newcomer would, and fails on the first that exits non-zero, naming it. The Quick
start's `make demo` builds the clone's own `.venv` and runs the demo there.

Not run, each with its reason shown as a warning: `make test` (this test runs inside it), and commands
the README marks as needing a GPU or several machines (a `# needs a GPU` / `# needs GPUs` / `# needs
several machines` comment). A server (`jupyter lab`) is started, must answer on its address, then is
stopped. Only the environment is the test's: a Jupyter config that lets the server run as root (as CI
does) and not open a browser.
"""

import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.test_docs import FENCE

ROOT = Path(__file__).resolve().parents[1]
SHELLS = ("bash", "sh", "shell")
NEEDS = re.compile(r"#.*\bneeds (a GPU|GPUs|several machines)\b")
SERVERS = ("jupyter lab",)
NOT_RUN = {"make test": "the test suite itself: this test runs inside it"}


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each command of README's shell blocks, in order: continuation lines
    joined, comment-only and blank lines dropped; a command keeps its trailing comment."""
    commands = []
    for block in FENCE.finditer(text):
        if block.group(2).strip() not in SHELLS:
            continue
        first = text[: block.start(3)].count("\n") + 1
        pending, start = "", None
        for offset, line in enumerate(block.group(3).splitlines()):
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            start = first + offset if not pending else start
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            commands.append((start, pending + line.strip()))
            pending = ""
    return commands


def without_comment(command: str) -> str:
    """The command without its trailing comment (a `#` after whitespace)."""
    return re.split(r"\s#", command, maxsplit=1)[0].strip()


def plan(commands: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], list[str]]:
    """(the commands to run, why each of the others is not run)."""
    run, skipped = [], []
    for line, command in commands:
        bare = without_comment(command)
        reason = NOT_RUN.get(bare) or (f"needs {m.group(1)}" if (m := NEEDS.search(command)) else None)
        if reason:
            skipped.append(f"README.md line {line}: `{bare}` not run ({reason})")
        else:
            run.append((line, command))
    return run, skipped


PREAMBLE = r"""
set -o pipefail
serve() {  # a server: started, must print its address within 180 s, then stopped
    log=$(mktemp)
    "$@" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 180); do
        if grep -qE 'https?://[^ ]+/lab' "$log"; then kill "$pid"; wait "$pid"; return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; return 1; fi
        sleep 1
    done
    cat "$log"; kill "$pid"; return 1
}
"""


def script(commands: list[tuple[int, str]]) -> str:
    """A bash script that runs `commands` in order and stops at the first that fails, naming it."""
    lines = [PREAMBLE]
    for line, command in commands:
        shown = without_comment(command)
        run = f"serve {shown}" if shown.startswith(SERVERS) else command
        lines.append(f"echo {shlex.quote(f'=== README.md line {line}: {shown}')}")
        lines.append(run)  # as written, its trailing comment included: the check is on the next line
        lines.append(
            f"[ $? = 0 ] || {{ echo {shlex.quote(f'FAILED: README.md line {line}: {shown}')}; exit 1; }}"
        )
    return "\n".join(lines) + "\n"


def test_the_commands_are_found_in_order_with_their_lines_and_the_markers_skip():
    text = (
        "# T\n\n```bash\nmake demo    # the demo\nmake test\n```\n\nprose `sftlib x`\n\n```bash\n"
        "# a comment\nsource .venv/bin/activate\nsftlib train --config a.yaml \\\n    --set b=1   # two lines\n"
        "accelerate launch -m sftlib train   # needs GPUs\n```\n```yaml\nmodel: {}\n```\n"
    )
    commands = readme_commands(text)
    assert commands == [
        (4, "make demo    # the demo"),
        (5, "make test"),
        (12, "source .venv/bin/activate"),
        (13, "sftlib train --config a.yaml  --set b=1   # two lines"),
        (15, "accelerate launch -m sftlib train   # needs GPUs"),
    ]
    run, skipped = plan(commands)
    assert [line for line, _ in run] == [4, 12, 13]
    assert skipped == [
        "README.md line 5: `make test` not run (the test suite itself: this test runs inside it)",
        "README.md line 15: `accelerate launch -m sftlib train` not run (needs GPUs)",
    ]


def test_a_failing_command_stops_the_script_and_is_named(tmp_path):
    body = script([(3, "true"), (4, "false   # fails"), (5, "touch ran-after")])
    proc = subprocess.run(["bash", "-c", body], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "FAILED: README.md line 4: false" in proc.stdout
    assert not (tmp_path / "ran-after").exists()


def test_the_readme_runs_the_quick_start_and_every_later_block():
    """Its two Quick start commands are the first; a newcomer reaches everything else after them."""
    commands = [c for _, c in readme_commands((ROOT / "README.md").read_text())]
    assert [without_comment(c) for c in commands[:2]] == ["make demo", "make test"]
    run, _ = plan(readme_commands((ROOT / "README.md").read_text()))
    assert any(c.startswith("source .venv/bin/activate") for _, c in run)
    assert any(c.startswith("jupyter lab") for _, c in run)


@pytest.mark.slow
def test_the_readme_runs_as_written_in_a_fresh_clone(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to clone")
    clone = tmp_path / "sftlib"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    run, skipped = plan(readme_commands((clone / "README.md").read_text()))
    for reason in skipped:
        warnings.warn(reason, stacklevel=1)
    jupyter = tmp_path / "jupyter"
    jupyter.mkdir()
    (jupyter / "jupyter_server_config.py").write_text(
        "c.ServerApp.allow_root = True\nc.ServerApp.open_browser = False\n"
    )
    env = {**_clean_env(), "JUPYTER_CONFIG_DIR": str(jupyter)}
    log = tmp_path / "readme.log"
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", "-c", script(run)],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=5400,
        )
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert text.count("=== README.md line") == len(run)


def _clean_env() -> dict[str, str]:
    """This process's environment without the test venv on PATH: the clone makes and uses its own."""
    here = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != here)
    return env
