"""The docs stay true to the repository: README.md, CHANGELOG.md and docs/*.md.

- Every relative link resolves to a file of the repository, and its `#anchor` to a heading there.
- Every repository path a page names (`sftlib/...`, `configs/...`, `notebooks/...`, `tests/...`,
  `docs/...`, `.ci/...`), in code or in prose, exists; a glob matches something.
- Every `sftlib.module[.name]` or `module:NAME` a page names is a module of sftlib (or a package
  `pyproject.toml` maps), and the name is defined at the module's top level.
- Every `sftlib` command in a bash block parses with sftlib's own argument parser; one in inline code
  names a subcommand and only options that subcommand takes; every `make` target exists.
- No page names an issue number.
- Every YAML block holding config sections loads as a run config.
- Every table row has as many cells as its header (a pipe inside code is escaped, as GitHub needs).
- Every module of sftlib/ is in the module map of docs/architecture.md; every row of docs/benchmarks.md
  names its command, machine and date; the version ranges on docs/install.md are pyproject.toml's, and
  the tested versions the lock's.
- README.md and docs/ name no commit of this repository: they describe what is, not its history
  (CHANGELOG.md keeps that).

Each checker is first run on a snippet it must refuse, so a checker that stopped seeing anything
fails here too.
"""

import ast
import contextlib
import functools
import glob
import io
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from sftlib import cli
from sftlib.config import config_from_dict
from sftlib.errors import SftlibError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```+|~~~+)([^\n]*)\n(.*?)^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w./~$-])((?:sftlib|configs|notebooks|tests|docs|\.ci)/[\w.*/-]*)")
MODULE_REF = re.compile(r"(?<![\w./-])sftlib\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::([A-Za-z_]\w*))?")
ISSUE = re.compile(r"#[0-9]|\bissues?\s+(?:no\.?\s*)?[0-9]", re.I)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return [(m.group(2).strip(), m.group(3)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """`text` without fenced blocks and code spans: what a reader sees as running text."""
    return CODE_SPAN.sub(" ", FENCE.sub("\n", text))


def code_spans(text: str) -> list[str]:
    return [m.group(2).strip() for m in CODE_SPAN.finditer(FENCE.sub("\n", text))]


# --------------------------------------------------------------------------- links and anchors


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lowercased, punctuation removed, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found, seen = set(), {}
    for line in FENCE.sub("\n", text).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def link_problems(text: str, page: Path) -> list[str]:
    problems = []
    for m in LINK.finditer(prose(text)):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or ROOT not in (file, *file.parents):
            problems.append(f"{page.name}: link {target!r}: no file {path!r}")
            continue
        if anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            problems.append(f"{page.name}: link {target!r}: no heading #{anchor} in {file.name}")
    return problems


# --------------------------------------------------------------------------- paths and modules


def path_problems(text: str, page: Path) -> list[str]:
    problems = []
    for m in REPO_PATH.finditer(text):
        path = m.group(1).rstrip(".,:;")
        if "*" in path:
            exists = bool(glob.glob(str(ROOT / path)))
        else:
            exists = (ROOT / path).exists() and (not path.endswith("/") or (ROOT / path).is_dir())
        if not exists:
            problems.append(f"{page.name}: names {path!r}, which is not in the repository")
    return problems


def mapped_packages() -> set[str]:
    """Packages pyproject.toml maps into sftlib from elsewhere (sftlib.notebooks, sftlib.configs, ...)."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(setup["packages"])


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def module_problems(text: str, page: Path) -> list[str]:
    problems, mapped = [], mapped_packages()
    for m in MODULE_REF.finditer(text):
        dotted, name = m.group(1), m.group(2)
        parts, where = dotted.split("."), ROOT / "sftlib"
        while parts and (where / parts[0]).is_dir() and (where / parts[0] / "__init__.py").is_file():
            where = where / parts.pop(0)
        if parts and (where / f"{parts[0]}.py").is_file():
            module, attrs = where / f"{parts.pop(0)}.py", parts[:1] + ([name] if name else [])
        elif not parts or (where != ROOT / "sftlib" and (where / "__init__.py").is_file()):
            # a package, or a name its __init__ defines (sftlib.data.IGNORE_INDEX)
            module, attrs = where / "__init__.py", parts[:1] + ([name] if name else [])
        elif "sftlib." + dotted in mapped or any(p.startswith(f"sftlib.{dotted}.") for p in mapped):
            continue
        else:
            problems.append(f"{page.name}: names sftlib.{dotted}, which is no module of sftlib")
            continue
        missing = [a for a in attrs if a not in top_level_names(module)]
        if missing:
            problems.append(f"{page.name}: sftlib.{dotted}: {module.name} defines no {missing[0]}")
    return problems


# --------------------------------------------------------------------------- commands


@functools.cache
def makefile_names() -> tuple[set[str], set[str]]:
    """(targets, variables) the Makefile defines."""
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, re.M)), set(re.findall(r"^([A-Z_]+)\s*[:?]?=", text, re.M))


def make_problems(args: list[str], page: Path) -> list[str]:
    """A make command's arguments: each a target, or `NAME=value` for a variable the Makefile sets."""
    targets, variables = makefile_names()
    return [
        f"{page.name}: no make {'variable' if '=' in arg else 'target'} {arg!r}"
        for arg in args
        if (arg.split("=", 1)[0] not in variables if "=" in arg else arg not in targets)
    ]


def shell_commands(body: str) -> list[list[str]]:
    """The simple commands of a bash block (continuations joined, comments and heredoc bodies dropped)."""
    commands, heredoc = [], None
    for line in body.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m:
            heredoc, line = m.group(1), line[: m.start()]
        tokens, current = shlex.split(line, comments=True), []
        for token in tokens:
            if token in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def sftlib_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `sftlib` (`sftlib`, `.venv/bin/sftlib`, `python -m sftlib`, `VAR=x sftlib`), or None."""
    for i, token in enumerate(tokens):
        if token == "sftlib" or token.endswith("/sftlib"):
            before = tokens[i - 1] if i else ""
            if before in ("", "-m") or all("=" in t or t == "time" for t in tokens[:i]):
                return tokens[i + 1 :]
            return None
    return None


def parse_problem(args: list[str]) -> str | None:
    """sftlib's own parser on `args`: None when they parse (or ask for --help), else what it said."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


def help_text(args: list[str]) -> str:
    out = io.StringIO()
    with (
        contextlib.suppress(SystemExit),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        cli.build_parser().parse_args([*args, "--help"])
    return out.getvalue()


SUBCOMMANDS = re.compile(r"\{([\w,]+)\}")


def inline_sftlib_problem(span: str) -> str | None:
    """An inline `sftlib ...` names a real subcommand and only options it takes (placeholders allowed)."""
    tokens = span.replace("[", " ").replace("]", " ").split()
    args = sftlib_args(tokens)
    if args is None:
        return None
    top = set(SUBCOMMANDS.search(help_text([])).group(1).split(","))
    words = [t for t in args if not t.startswith("-")]
    sub = next((w for w in words if w in top), None)
    if words and words[0].isupper():  # a placeholder such as COMMAND
        return None
    if sub is None:
        return f"`{span}`: no sftlib subcommand in it" if words and words[0] != "..." else None
    known = set(re.findall(r"(?<![\w-])(--?[\w-]+)", help_text([sub]) + help_text([])))
    unknown = [t.split("=")[0] for t in args if t.startswith("-") and t.split("=")[0] not in known]
    return f"`{span}`: sftlib {sub} takes no {unknown[0]}" if unknown else None


def command_problems(text: str, page: Path) -> list[str]:
    problems = []
    for lang, body in code_blocks(text):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        for tokens in shell_commands(body):
            args = sftlib_args(tokens)
            if args is not None and (said := parse_problem(args)):
                problems.append(f"{page.name}: `{' '.join(tokens)}`: {said}")
            if tokens[0] == "make":
                problems += make_problems(tokens[1:], page)
    for span in code_spans(text):
        if (said := inline_sftlib_problem(span)) is not None:
            problems.append(f"{page.name}: {said}")
        if span.startswith("make "):
            problems += make_problems(span.split()[1:], page)
    return problems


def table_cells(line: str) -> list[str]:
    """A table row's cells; a pipe inside a cell (code included) must be escaped as `\\|`, as GitHub reads it."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def table_problems(text: str, page: Path) -> list[str]:
    """Every row of a table has as many cells as its header."""
    problems, width = [], None
    for line in FENCE.sub("\n", text).splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = table_cells(line)
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            problems.append(
                f"{page.name}: a table row has {len(cells)} cells, its header {width}: {line[:80]}"
            )
    return problems


MINIMAL = {"model": {"path": "embedded:tiny-random-llama"}, "dataset": {"name": "data.jsonl"}}


def config_problems(text: str, page: Path) -> list[str]:
    """Every YAML block holding config sections loads as a run config (missing sections filled minimally)."""
    problems = []
    for lang, body in code_blocks(text):
        raw = yaml.safe_load(body) if lang == "yaml" else None
        if not isinstance(raw, dict) or not {"model", "dataset", "training"} & set(raw):
            continue
        try:
            config_from_dict({**MINIMAL, **raw})
        except SftlibError as exc:
            problems.append(f"{page.name}: a config block does not load: {exc}")
    return problems


def issue_problems(text: str, page: Path) -> list[str]:
    return [f"{page.name}: names an issue ({m.group(0)!r})" for m in ISSUE.finditer(text)]


HEX = re.compile(r"(?<![\w./-])[0-9a-f]{7,40}(?![\w-])")


def commit_problems(text: str, page: Path) -> list[str]:
    """A user page names no commit of this repository (the CHANGELOG may)."""
    if page.name == "CHANGELOG.md":
        return []
    return [f"{page.name}: names commit {m.group(0)}" for m in HEX.finditer(text) if is_commit(m.group(0))]


CHECKS = (
    link_problems,
    path_problems,
    module_problems,
    command_problems,
    table_problems,
    config_problems,
    issue_problems,
    commit_problems,
)


# --------------------------------------------------------------------------- each checker refuses a bad page


BAD = {
    link_problems: "See [masking](docs/no_such_page.md) and [here](docs/masking.md#no-such-heading).",
    path_problems: "The rule is in `sftlib/no_such_module.py`, run with configs/no_such.yaml.",
    module_problems: "Call `sftlib.data.masking.no_such_function`, or `sftlib.no_such_module`.",
    command_problems: "```bash\nsftlib train --no-such-option\nmake no-such-target\n```\nand `sftlib masks --nope`.",
    table_problems: "| a | b |\n| --- | --- |\n| `<|im_end|>` | x |\n| one cell |\n",
    config_problems: "```yaml\ntraining:\n  learning_rat: 1\n```\n```yaml\ndataset: {name: x, fraction: 2}\n```",
    issue_problems: "Fixed in issue 16 (#16).",
    commit_problems: "Measured at a27eaf7, and again at cbc347f.",
}
GOOD = {
    link_problems: "See [masking](docs/masking.md#the-audit) and [the web](https://example.org/x.md).",
    path_problems: "The rule is in `sftlib/data/masking.py`, run with configs/demo.yaml and `configs/*.yaml`.",
    module_problems: "Use `sftlib.data.IGNORE_INDEX`, `sftlib.lessons.tool_task:TOOLS` or `sftlib.bench.side`.",
    command_problems: "```bash\nsftlib train --config configs/tiny.yaml --set training.max_steps=3\nmake test\n```",
    table_problems: "| a | b |\n| --- | --- |\n| `<\\|im_end\\|>` | x |\n",
    config_problems: "```yaml\ndataset:\n  - {name: a.jsonl, train_on: last_assistant}\n  - {name: b.jsonl, fraction: 0.5}\n```",
    issue_problems: "See [the GPU check](docs/scaling.md#gpu-check).",
    commit_problems: "A digest such as deadbeef00 names no commit; nor does `sha256:0123abc`.",
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_each_checker_refuses_a_bad_snippet_and_passes_a_good_one(check):
    page = ROOT / "README.md"
    assert len(check(BAD[check], page)) >= 2  # each bad snippet holds two faults
    assert check(GOOD[check], page) == []


def test_slugs_follow_githubs_anchor_rule():
    assert (
        slug("`not_rendered`: a field the template leaves out")
        == "not_rendered-a-field-the-template-leaves-out"
    )
    assert slug("One run, not N copies") == "one-run-not-n-copies"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


# --------------------------------------------------------------------------- the pages


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_every_page_passes_every_check(check, page):
    assert check(page.read_text(), page) == []


def test_the_docs_pages_are_each_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / m.group(1).partition("#")[0]).resolve() for m in LINK.finditer(readme)}
    assert [p.name for p in PAGES[2:] if p.resolve() not in linked] == []


def test_the_module_map_names_every_module():
    text = (ROOT / "docs/architecture.md").read_text()
    modules = sorted(ROOT.glob("sftlib/**/*.py"))
    missing = [
        str(p.relative_to(ROOT))
        for p in modules
        if p.name not in ("__init__.py", "__main__.py") and f"`{p.relative_to(ROOT)}`" not in text
    ]
    assert missing == []


def table_rows(text: str) -> list[dict[str, str]]:
    """Every row of every table in `text`, as {header: cell} (pipes escaped in code stay in their cell)."""
    rows, header = [], None
    for line in FENCE.sub("\n", text).splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = table_cells(line)
        if header is None:
            header = [c.lower() for c in cells]
        elif not all(set(c) <= set("-: ") for c in cells):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def is_commit(ref: str) -> bool:
    out = subprocess.run(["git", "cat-file", "-e", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True)
    return re.fullmatch(r"[0-9a-f]{7,40}", ref) is not None and out.returncode == 0


def benchmark_problems(text: str) -> list[str]:
    """Rows of measured figures that don't name their command, machine and date (YYYY-MM-DD)."""
    rows, problems = table_rows(text), []
    if not rows:
        return ["no table of figures"]
    for row in rows:
        if not {"command", "machine", "date"} <= set(row):
            problems.append(f"a table without command, machine and date columns: {row}")
        elif not (row["command"] and row["machine"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["date"])):
            problems.append(f"a row without its command, machine or date: {row}")
    return problems


def test_every_benchmark_row_names_its_command_machine_and_date():
    assert benchmark_problems((ROOT / "docs/benchmarks.md").read_text()) == []


def test_the_benchmark_check_refuses_rows_without_a_date_a_machine_or_the_columns():
    head = "| what | command | machine | date |\n| --- | --- | --- | --- |\n"
    assert len(benchmark_problems(head + "| x | `sftlib check` | EPYC | yesterday |\n")) == 1
    assert len(benchmark_problems(head + "| x | `sftlib check` |  | 2026-11-29 |\n")) == 1
    assert len(benchmark_problems("| what | tok/s |\n| --- | --- |\n| x | 841 |\n")) == 1
    assert benchmark_problems(head + "| x | `sftlib check` | EPYC | 2026-11-29 |\n") == []


def test_the_install_page_shows_the_ranges_of_pyproject_and_the_versions_of_the_lock():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = dict(re.match(r"([\w.-]+)(.*)", d).groups() for d in dependencies)
    lock = dict(re.findall(r"^([\w.-]+)==(\S+)$", (ROOT / ".ci/constraints.txt").read_text(), re.M))
    rows = [r for r in table_rows((ROOT / "docs/install.md").read_text()) if "library" in r]
    assert len(rows) >= 5
    for row in rows:
        name = row["library"]
        assert row["range (pyproject.toml)"].strip("`") == ranges[name], name
        assert row["tested set (the lock)"].split()[0] == lock[name], name
