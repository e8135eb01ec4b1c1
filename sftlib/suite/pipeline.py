"""Run the notebook suite in order with papermill, and gather what each notebook recorded.

`run_pipeline` discovers the notebooks (`NN_name.ipynb` in the shipped suite, sftlib/shipped.py),
executes them in the caller's working directory (so the relative paths of the user's config mean
what they mean to the user) on the running interpreter, writes the executed copies and their HTML
exports into the output folder, and merges what each notebook recorded (`RUN_DIR/<notebook>.json`)
into `summary.json`. A notebook lifts values to the top of the summary by naming them in its own
metadata (`sftlib.summary`), so the pipeline knows no notebook by name. It stops at the first
failing cell and raises SftlibError naming the notebook, the cell and the error.
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sftlib.errors import SftlibError
from sftlib.suite import kernels
from sftlib.suite.notebook import export_to_html

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"


# --------------------------------------------------------------------------- parameters


def notebooks(only: list[str] | tuple[str, ...] = (), suite: Path | None = None) -> list[Path]:
    """The notebooks of `suite` (default: the shipped one) in order; `only` keeps those whose name
    starts with one of its prefixes."""
    from sftlib import shipped

    everything = sorted(Path(suite or shipped.notebooks_dir()).glob(NOTEBOOK_PATTERN))
    if not everything:
        raise SftlibError(f"no notebooks named {NOTEBOOK_PATTERN} in {suite or shipped.notebooks_dir()}.")
    found = (
        [p for p in everything if any(p.name.startswith(prefix) for prefix in only)] if only else everything
    )
    if not found:
        names = ", ".join(p.stem for p in everything)
        raise SftlibError(f"--only {' '.join(only)} matches no notebook.", f"use a prefix of: {names}.")
    return found


def summary_keys(paths: list[Path]) -> dict[str, list[str]]:
    """{notebook: the keys of its record it lifts into summary.json}, from each notebook's metadata
    (`"sftlib": {"summary": [...]}`). Two notebooks lifting the same key would overwrite each other."""
    import nbformat

    keys, owner = {}, {}
    for path in paths:
        declared = nbformat.read(path, as_version=4).metadata.get("sftlib", {}).get("summary", [])
        for key in declared:
            if key in owner:
                raise SftlibError(
                    f"notebooks {owner[key]} and {path.stem} both lift {key!r} into summary.json.",
                    "remove it from the metadata (sftlib.summary) of one of them.",
                )
            owner[key] = path.stem
        keys[path.stem] = list(declared)
    return keys


def declared_parameters(path: Path) -> dict[str, dict]:
    """{name: {inferred_type_name, default, help}} from the notebook's `parameters` cell."""
    import papermill

    logging.getLogger("papermill").setLevel(logging.WARNING)  # not one "Input Notebook" line per call
    return papermill.inspect_notebook(str(path))


def parse_value(name: str, text: str, type_name: str, notebook: str) -> Any:
    """The value of `-p NAME TEXT` for a parameter declared as `type_name`; SftlibError if it isn't one."""
    if type_name in ("str", "None"):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
    }.get(type_name, True)
    if not ok:
        example = {"int": "2", "float": "0.5", "bool": "true", "list": "'[a, b]'", "dict": "'{a: 1}'"}[
            type_name
        ]
        raise SftlibError(
            f"-p {name} {text!r}: {notebook} declares {name} as {type_name}, and {text!r} is not one.",
            f"give {'an' if type_name == 'int' else 'a'} {type_name}, e.g. -p {name} {example}.",
        )
    return float(value) if type_name == "float" else value


def resolve_parameters(paths: list[Path], given: dict[str, Any], raw: dict[str, str]) -> dict[Path, dict]:
    """Per notebook, the parameters it declares: `given` (already typed) and `raw` (-p text, checked
    against each notebook's declared type). A -p name that no selected notebook declares is an error."""
    out, used = {}, set()
    for path in paths:
        declared = declared_parameters(path)
        params = {k: v for k, v in given.items() if k in declared}
        for name, text in raw.items():
            if name in declared:
                params[name] = parse_value(name, text, declared[name]["inferred_type_name"], path.stem)
                used.add(name)
        out[path] = params
    unknown = sorted(set(raw) - used)
    if unknown:
        names = sorted({n for p in paths for n in declared_parameters(p)})
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise SftlibError(
            f"no selected notebook declares parameter {', '.join(unknown)}.",
            f"{hint}declared: {', '.join(names)}.",
        )
    return out


# --------------------------------------------------------------------------- running


def check_before_running(config, overrides, per_notebook: dict[Path, dict]):
    """Check what the notebooks will need before the first kernel starts, so a run fails only on what
    can't be known up front: the config; the tokenizer and chat template; the data, its masks and the
    drop gate (the prepare pass, which datasets caches for the notebooks); an output_dir training may
    write into, or a checkpoint to resume from (when a notebook declares OVERWRITE and RESUME); prompts
    to generate for, or tool chats, the tools to run them with and a tool-call format the chat template
    writes that sftlib reads (when one declares PROMPTS, and TOOLS).
    Keyed by the parameters the notebooks declare, so the pipeline still names no notebook. Returns the
    RunConfig."""
    import ast

    from sftlib.config import load_config
    from sftlib.data import dataset
    from sftlib.inference import evaluate
    from sftlib.models import modeling
    from sftlib.outputs import layout
    from sftlib.training import checkpoints

    cfg = load_config(config, list(overrides))
    values = {}
    for path, given in per_notebook.items():
        for name, info in declared_parameters(path).items():
            values.setdefault(name, given[name] if name in given else ast.literal_eval(info["default"]))
    dataset.prepare(cfg, modeling.load_tokenizer(cfg.model))
    if "OVERWRITE" in values:
        resume = bool(values.get("RESUME"))
        layout.check_output_dir(cfg.output_dir, resume=resume, overwrite=bool(values["OVERWRITE"]))
        if resume:
            checkpoints.resume_checkpoint(cfg.output_dir)
    if "PROMPTS" in values:
        tools, rounds = values.get("TOOLS") or "", values.get("MAX_TOOL_ROUNDS", 3)
        evaluate.for_notebook(cfg, 1, values["PROMPTS"] or None, tools, rounds)
    return cfg


def run_overrides(out: str | Path, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`overrides` with the run trained into OUT/model, so that everything a pipeline makes lies under
    OUT; an override of training.output_dir among them wins."""
    if any(item.partition("=")[0].strip() == "training.output_dir" for item in overrides):
        return list(overrides)
    return [f"training.output_dir={Path(out) / 'model'}", *overrides]


class _ProgressLines:
    """A file for papermill's kernel stdout: passes each whole progress line (sftlib.progress) on to
    stderr, indented under the notebook's own line, and drops the rest (it stays in the notebook)."""

    def __init__(self):
        self.pending = ""

    def write(self, text: str) -> None:
        from sftlib.progress import is_progress

        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if is_progress(line):
                print(line, file=sys.stderr, flush=True)

    def flush(self) -> None:
        pass


def run_pipeline(
    config: str | Path,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    params: dict[str, str] | None = None,
    only: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    export_html: bool = True,
    suite: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Execute the notebooks in order; returns (and writes to OUT/summary.json) the merged summary.

    `params` maps names to `-p` text, typed by each notebook's declaration. CONFIG, OVERRIDES and
    RUN_DIR are filled from `config`, `overrides` and `out` for every notebook that declares them, and
    OVERWRITE and RESUME from `overwrite` and `resume`. The run trains into OUT/model unless
    `overrides` set training.output_dir. The kernels run in this process's working directory, the one
    relative paths in `config`, `overrides` and `out` are relative to. `progress`: the notebooks'
    progress lines (training steps, generation) are passed on to stderr as they come.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if resume and overwrite:
        raise SftlibError("--resume and --overwrite are both given.", "pass one of them.")
    overrides = run_overrides(out, overrides)
    out = Path(out).resolve()
    paths = notebooks(only, suite)
    lifted = summary_keys(paths)
    given = {"CONFIG": str(Path(config).resolve()), "OVERRIDES": list(overrides), "RUN_DIR": str(out)}
    given |= {name: True for name, on in (("OVERWRITE", overwrite), ("RESUME", resume)) if on}
    per_notebook = resolve_parameters(paths, given, dict(params or {}))
    for name in given.keys() & {"OVERWRITE", "RESUME"}:
        if not any(name in declared for declared in per_notebook.values()):
            raise SftlibError(
                f"--{name.lower()} applies to the notebook that trains, and no selected notebook trains.",
                f"drop --{name.lower()}, or select the training notebook too (--only).",
            )
    cfg = check_before_running(config, overrides, per_notebook)  # before any kernel starts
    out.mkdir(parents=True, exist_ok=True)

    summary: dict[str, Any] = {"config": str(config), "overrides": list(overrides), "notebooks": {}}
    start = time.perf_counter()
    with (
        kernels.kernel_spec() as kernel_name,
        kernels.headless(),
        kernels.InterruptsReachTheKernel() as interrupts,
    ):
        for i, path in enumerate(paths, 1):
            if interrupts.requested:  # Ctrl-C while the last notebook finished: start no other
                raise _stopped(paths[i - 2].stem, "", cfg.output_dir)
            executed = out / path.name
            print(f"[{i}/{len(paths)}] {path.stem}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(path),
                    str(executed),
                    parameters=per_notebook[path],
                    kernel_name=kernel_name,
                    progress_bar=False,
                    stdout_file=_ProgressLines() if progress else None,
                    language="python",
                    config=kernels.transport(),
                )
            except PapermillExecutionError as exc:
                summary["failed"] = {
                    "notebook": path.stem,
                    "cell": exc.exec_count,
                    "error": f"{exc.ename}: {exc.evalue}",
                }
                _finish(summary, out, start, export_html and executed)
                evalue = " ".join(str(exc.evalue).split())
                if exc.ename in ("Interrupted", "KeyboardInterrupt"):
                    raise _stopped(path.stem, evalue, cfg.output_dir) from None
                raise SftlibError(
                    f"notebook {path.stem} failed in cell [{exc.exec_count}] ({_first_line(exc.source)}): "
                    f"{exc.ename}: {evalue} (traceback in {executed})"
                ) from None
            results = _read_record(out, path.stem)
            summary["notebooks"][path.stem] = {
                "wall_seconds": round(time.perf_counter() - t0, 2),
                "executed": str(executed),
                "results": results,
            }
            if export_html:
                summary["notebooks"][path.stem]["html"] = str(export_to_html(executed))
            for key in lifted[path.stem]:
                if key not in results:
                    raise SftlibError(
                        f"notebook {path.stem} lifts {key!r} into summary.json (its metadata, sftlib.summary), "
                        f"but its record {out / (path.stem + '.json')} has no {key!r}.",
                        f"record {key!r} in its last cell, or remove it from sftlib.summary.",
                    )
                summary[key] = results[key]
            _finish(summary, out, start)
    return summary


def _stopped(notebook: str, evalue: str, output_dir: Path) -> SftlibError:
    """The error for a notebook stopped by Ctrl-C: how to go on, from the run's newest checkpoint if any."""
    from sftlib.training.checkpoints import latest_complete

    saved = latest_complete(output_dir)
    error = SftlibError(
        f"notebook {notebook} stopped on Ctrl-C" + (f": {evalue.split(' Fix: ')[0]}" if evalue else "."),
        f"run the same command again with --resume, which continues from {saved}."
        if saved
        else "run the same command again; no checkpoint was saved to continue from.",
    )
    error.exit_code = 130  # as a shell reports SIGINT
    return error


def _finish(summary: dict, out: Path, start: float, failed_notebook: Path | None = None) -> None:
    """Write summary.json (after every notebook, so a failed run keeps what the others recorded)."""
    if failed_notebook and failed_notebook.exists():
        export_to_html(failed_notebook)
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def _read_record(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    if not path.is_file():
        raise SftlibError(f"notebook {name} ran but recorded no results ({path} is missing).")
    return json.loads(path.read_text())


def _first_line(source: str) -> str:
    lines = [line for line in str(source).splitlines() if line.strip()]
    return (
        (lines[0][:60] + (" ..." if len(lines) > 1 or len(lines[0]) > 60 else "")) if lines else "empty cell"
    )
