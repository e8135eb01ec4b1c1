"""Errors keep their evidence: an SftlibError is one `error: ... Fix: ...` line; any other error is one
line too, naming the file that holds its full traceback (output_dir/error.log, or a temporary file
before output_dir exists)."""

import re
from pathlib import Path

import pytest

from sftlib import cli
from sftlib.errors import SftlibError


def fail_deep_inside():
    raise ValueError("expected 4 dims, got 3\nsecond line of the library's message")


def test_an_unexpected_error_names_its_traceback_file_in_output_dir(tmp_path, capsys):
    assert cli.report(fail_deep_inside, output_dir=lambda: tmp_path) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: ValueError: expected 4 dims, got 3 (traceback in {tmp_path / 'error.log'})"
    trace = (tmp_path / "error.log").read_text()
    assert trace.startswith("Traceback") and "fail_deep_inside" in trace and "second line" in trace


def test_before_output_dir_exists_the_traceback_goes_to_a_temporary_file(tmp_path, capsys):
    assert cli.report(fail_deep_inside, output_dir=lambda: tmp_path / "not yet") == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    named = Path(re.search(r"\(traceback in (.+)\)$", line).group(1))
    assert named.parent != tmp_path and named.name.endswith("error.log")
    assert "fail_deep_inside" in named.read_text()
    named.unlink()


def test_another_rank_keeps_its_own_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    cli.report(fail_deep_inside, output_dir=lambda: tmp_path)
    assert (tmp_path / "error-rank-1.log").is_file() and not (tmp_path / "error.log").exists()
    assert "error-rank-1.log" in capsys.readouterr().err


def test_an_sftlib_error_stays_one_line_and_writes_no_file(tmp_path, capsys):
    def refused():
        raise SftlibError("dataset.name is missing.", "set dataset.name.")

    assert cli.report(refused, output_dir=lambda: tmp_path) == 1
    assert capsys.readouterr().err == "error: dataset.name is missing. Fix: set dataset.name.\n"
    assert list(tmp_path.iterdir()) == []


def test_debug_raises_the_error_itself(tmp_path):
    with pytest.raises(ValueError, match="expected 4 dims"):
        cli.report(fail_deep_inside, debug=True, output_dir=lambda: tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_only_commands_that_write_a_run_keep_the_traceback_in_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{path: x}}\ndataset: {{name: y}}\ntraining: {{output_dir: {tmp_path / 'out'}}}\n"
    )
    parse = cli.build_parser().parse_args
    assert cli._output_dir(parse(["train", "--config", str(config)])) == tmp_path / "out"
    assert cli._output_dir(parse(["merge", "--config", str(config)])) == tmp_path / "out"
    assert cli._output_dir(parse(["check", "--config", str(config)])) is None  # a temporary file
    assert (
        cli._output_dir(parse(["pipeline", "--config", str(config), "--out", str(tmp_path / "p")]))
        == tmp_path / "p"
    )
    assert cli._output_dir(parse(["train", "--config", str(tmp_path / "missing.yaml")])) is None
