"""A user error in a worker ends as the CLI's one `error: ... Fix: ...` line, however training was launched."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch_two(overrides: list[str], debug: bool = False) -> subprocess.CompletedProcess:
    """`train.launch(num_processes=2)` in a fresh interpreter, as a notebook kernel is, through the CLI's
    error handling (`sftlib.cli.report`)."""
    code = (
        "import sys, json\n"
        "from sftlib import cli\n"
        "from sftlib.training.launch import launch\n"
        f"sys.exit(cli.report(lambda: launch(sys.argv[1], json.loads(sys.argv[2]), num_processes=2), debug={debug}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "configs/tiny.yaml"), json.dumps(overrides)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_finished_output_dir_is_refused_before_any_worker_starts(tmp_path):
    (tmp_path / "run_info.json").write_text("{}")
    proc = launch_two([f"training.output_dir={tmp_path}"])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path} already holds a finished run (run_info.json). Fix: set OVERWRITE = True to replace "
        "it, RESUME = True to continue it, or choose another training.output_dir."  # notebook 03's parameters
    ]


@pytest.mark.slow
def test_a_workers_error_is_one_line_and_its_trace_is_there_under_debug(tmp_path):
    # Both workers fail inside training (the data is not there); the user sees one line, not two dumps.
    overrides = [f"training.output_dir={tmp_path / 'out'}", f"dataset.name={tmp_path / 'missing.jsonl'}"]
    proc = launch_two(overrides)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1
    assert errors[-1].startswith("error: dataset file") and "does not exist" in errors[-1]
    assert not any("Traceback" in line or "ChildFailedError" in line for line in errors), proc.stderr[-2000:]
    assert sum(line.startswith("error:") for line in errors) == 1
    debug = launch_two(overrides, debug=True)
    assert "WorkerTraceback" in debug.stderr and "load_raw" in debug.stderr
