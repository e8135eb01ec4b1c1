"""Every `Fix:` names a flag that the command which printed it has.

Two halves. The commands are run into the errors whose Fix names a flag that depends on who asks
(replace or continue a run: `--overwrite`, `--resume`), and each flag their Fix names must be an option
of that command's parser. Every other Fix that names a flag is found in sftlib's source (the second
argument of each SftlibError), and `PRINTED_BY` says which commands can print it: each of them must
take the flag, and a Fix naming a flag that `PRINTED_BY` does not know fails here. A `sftlib ...`
command quoted in a Fix (between backticks) must parse with sftlib's own parser.
"""

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

from sftlib import cli
from tests.test_docs import help_text

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w`-])--[a-z][\w-]*")
QUOTED = re.compile(r"`([^`]*)`")
WITH_CONFIG = ("train", "check", "masks", "merge", "bench", "pipeline", "demo")
# (file, flag) -> the commands whose runs can raise that Fix.
PRINTED_BY = {
    ("sftlib/cli.py", "--limit"): ("masks",),
    ("sftlib/config/run_config.py", "--config"): WITH_CONFIG,
    ("sftlib/config/values.py", "--set"): WITH_CONFIG,
    ("sftlib/inference/prompts.py", "--chat-template-kwargs"): ("generate",),
    ("sftlib/training/guards.py", "--overwrite"): (
        "train",
        "pipeline",
        "demo",
    ),  # raised in training, notebook 03 too
    ("sftlib/suite/pipeline.py", "--only"): ("pipeline",),  # demo runs every notebook
    ("sftlib/export/gguf.py", "--outtype"): ("export",),
    ("sftlib/export/check.py", "--outtype"): ("export",),  # --check
    ("sftlib/export/commands.py", "--input"): ("generate",),
    ("sftlib/export/commands.py", "--adapter"): ("chat",),  # --adapter with a .gguf --model
    ("sftlib/suite/pipeline.py", "--resume"): (
        "pipeline",
        "demo",
    ),  # Ctrl-C: go on from the newest checkpoint
}
ERRORS = {"SftlibError", "Interrupted", "Diverged"}


def options(command: str) -> set[str]:
    """The options `sftlib COMMAND --help` and `sftlib --help` list."""
    return set(re.findall(r"(?<![\w-])(--[\w-]+)", help_text([command]) + help_text([])))


def bare_flags(fix: str) -> list[str]:
    """The flags a Fix names outside backticks (a backticked command carries its own program's flags)."""
    return FLAG.findall(QUOTED.sub(" ", fix))


def quoted_commands_problems(fix: str) -> list[str]:
    """Each backticked `sftlib ...` command in a Fix must parse; one with `...` (the rest left out) must
    name a subcommand and only options it takes."""
    problems = []
    for quoted in QUOTED.findall(fix):
        words = quoted.split()
        if words[:1] != ["sftlib"]:
            continue
        if "..." in words:
            unknown = [w for w in words[2:] if w.startswith("--") and w not in options(words[1])]
            problems += [f"`{quoted}`: sftlib {words[1]} takes no {w}" for w in unknown]
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                cli.build_parser().parse_args(words[1:])
        except SystemExit as exc:
            if exc.code:
                problems.append(f"`{quoted}`: {err.getvalue().strip().splitlines()[-1]}")
    return problems


# --------------------------------------------------------------------------- the source's Fix texts


def template(node) -> str:
    """A Fix expression as text; what only runs know (an f-string's values) becomes `\\0`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return template(node.left) + template(node.right)
    if isinstance(node, ast.IfExp):
        return template(node.body) + " " + template(node.orelse)
    return "\0"


def source_fixes() -> list[tuple[str, int, str]]:
    """(file, line, Fix text) of every SftlibError raised in sftlib with a fix."""
    found = []
    for path in sorted((ROOT / "sftlib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "func", None)
            if (
                not isinstance(node, ast.Call)
                or getattr(name, "id", getattr(name, "attr", None)) not in ERRORS
            ):
                continue
            fix = (
                node.args[1]
                if len(node.args) > 1
                else next((k.value for k in node.keywords if k.arg == "fix"), None)
            )
            if fix is not None:
                found.append((str(path.relative_to(ROOT)), node.lineno, template(fix)))
    return found


def test_every_flag_a_fix_names_in_the_source_is_an_option_of_each_command_that_prints_it():
    problems = []
    for file, line, fix in source_fixes():
        problems += [f"{file}:{line}: {p}" for p in quoted_commands_problems(fix.replace("\0", "X"))]
        for flag in bare_flags(fix):
            if flag.endswith("-") or "\0" in flag:
                continue
            commands = PRINTED_BY.get((file, flag))
            if commands is None:
                problems.append(
                    f"{file}:{line}: a Fix names {flag}: say in PRINTED_BY which commands print it"
                )
                continue
            problems += [
                f"{file}:{line}: sftlib {c} has no {flag}" for c in commands if flag not in options(c)
            ]
    assert problems == []


def test_the_source_check_sees_fixes_and_refuses_a_flag_a_command_lacks():
    fixes = source_fixes()
    assert any(flag == "--limit" for _, _, fix in fixes for flag in bare_flags(fix))
    assert "--limit" in options("masks") and "--limit" not in options("train")
    assert bare_flags("pass --overwrite, or run `accelerate launch --cpu`") == ["--overwrite"]
    assert quoted_commands_problems("continue with `sftlib train --config x.yaml --resume`") == []
    assert quoted_commands_problems("see `sftlib train --no-such-flag`") != []


# --------------------------------------------------------------------------- Fixes that depend on the command


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    from sftlib.lessons import demo

    data = tmp_path / "data"
    if not (data / "train.jsonl").is_file():
        demo.write_demo_dataset(data, n_train=8, n_eval=2)
    return ["--config", "configs/tiny.yaml", "--set", f"dataset.name={data}", *extra]


def finished(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "run_info.json").write_text("{}")


def unfinished(folder: Path) -> None:
    (folder / "checkpoint-2").mkdir(parents=True)  # no completeness marker: an interrupted save


CASES = {
    "train into a finished run": (finished, "train", lambda t, o: tiny(t, "--set", f"training.output_dir={o}")),
    "pipeline into a finished run": (finished, "pipeline", lambda t, o: tiny(t, "--out", str(o.parent))),
    "demo into a finished run": (finished, "demo", lambda t, o: tiny(t, "--out", str(o.parent))),
    "train into an unfinished run": (unfinished, "train", lambda t, o: tiny(t, "--set", f"training.output_dir={o}")),
    "demo into an unfinished run": (unfinished, "demo", lambda t, o: tiny(t, "--out", str(o.parent))),
    "train resumes nothing": (Path.mkdir, "train", lambda t, o: tiny(t, "--set", f"training.output_dir={o}", "--resume")),
    "pipeline resumes nothing": (Path.mkdir, "pipeline", lambda t, o: tiny(t, "--out", str(o.parent), "--resume")),
    "demo resumes an incomplete checkpoint": (unfinished, "demo", lambda t, o: tiny(t, "--out", str(o.parent), "--resume")),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_fix_about_replacing_or_continuing_a_run_names_the_printing_commands_own_flags(
    case, tmp_path, capsys
):
    make, command, args = CASES[case]
    out = tmp_path / "runs" / "model"  # pipeline and demo train into OUT/model
    out.parent.mkdir()
    make(out)
    assert cli.main([command, *args(tmp_path, out)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and " Fix: " in line, line
    fix = line.split(" Fix: ", 1)[1]
    flags = bare_flags(fix)
    assert flags and set(flags) <= options(command), (command, fix)
    assert quoted_commands_problems(fix) == []
