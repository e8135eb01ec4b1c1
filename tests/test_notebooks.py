"""The notebook suite: committed clean and thin (static), and runnable end to end by the pipeline (slow)."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sftlib import cli, shipped
from sftlib.errors import SftlibError
from sftlib.suite import notebook, pipeline
from sftlib.views import browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
PARAMETER_LINE = re.compile(r"^[A-Z][A-Z0-9_]*: (str|int|float|bool|list|dict) = \S.*  # \S.*$")


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def parameters_cell(path: Path):
    (cell,) = [c for c in code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    return cell


# --------------------------------------------------------------------------- static


def test_the_suite_is_the_five_notebooks_in_order():
    assert NAMES == [
        "01_explore_dataset",
        "02_verify_masking",
        "03_train",
        "04_merge",
        "05_load_and_generate",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_is_valid_nbformat_json(path):
    json.loads(path.read_text())
    nbformat.validate(nbformat.read(path, as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_has_exactly_one_parameters_cell(path):
    tagged = [c for c in code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_is_committed_without_outputs(path):
    for cell in code_cells(path):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_defines_no_functions_or_classes(path):
    for cell in code_cells(path):
        tree = ast.parse(cell.source)
        defined = [
            n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]
        assert not defined, f"definitions belong in sftlib: {cell.source[:80]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_every_parameter_has_a_literal_a_type_hint_and_a_comment(path):
    import papermill

    lines = [line for line in parameters_cell(path).source.splitlines() if line.strip()]
    for line in lines:
        assert PARAMETER_LINE.match(line), f"want `NAME: type = literal  # why`, got {line!r}"
        ast.literal_eval(line.split("=", 1)[1].split("  #")[0].strip())
    inspected = papermill.inspect_notebook(str(path))  # what `papermill --help-notebook` shows
    assert len(inspected) == len(lines)
    for name, p in inspected.items():
        assert p["inferred_type_name"] != "None" and p["help"], name
    assert {"CONFIG", "OVERRIDES", "RUN_DIR"} <= set(inspected)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_moves_to_the_project_root_first_and_records_its_results_last(path):
    cells = code_cells(path)
    after_parameters = cells[cells.index(parameters_cell(path)) + 1]
    assert "notebook.go_to_project_root()" in after_parameters.source
    assert f'"{path.stem}"' in cells[-1].source and "notebook.record(" in cells[-1].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_every_step_is_explained_in_markdown(path):
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {path.stem[:2]}")
    assert sum(c.cell_type == "markdown" for c in cells) >= 4


def test_go_to_project_root_from_the_notebooks_folder(monkeypatch):
    monkeypatch.delenv(browser.HEADLESS_ENV, raising=False)
    monkeypatch.chdir(ROOT / "notebooks")
    assert notebook.go_to_project_root() == ROOT
    assert Path.cwd() == ROOT


def test_under_the_pipeline_the_notebook_stays_in_the_users_working_directory(monkeypatch):
    # the pipeline starts kernels where the user ran it: their config's relative paths mean that folder,
    # even when that folder lies inside a checkout
    monkeypatch.setenv(browser.HEADLESS_ENV, "1")
    monkeypatch.chdir(ROOT / "notebooks")
    assert notebook.go_to_project_root() == ROOT / "notebooks"
    assert Path.cwd() == ROOT / "notebooks"


def test_the_pipeline_discovers_the_shipped_suite_and_names_no_notebook():
    import inspect

    assert pipeline.notebooks() == NOTEBOOKS and shipped.notebooks_dir() == ROOT / "notebooks"
    assert not re.search(r"\d\d_[a-z]", inspect.getsource(pipeline))


def test_each_notebook_declares_what_it_lifts_into_the_summary():
    lifted = pipeline.summary_keys(NOTEBOOKS)
    assert lifted["03_train"] == ["world_size", "loss_history"]
    assert lifted["05_load_and_generate"] == ["base", "tuned", "eval_examples"]
    assert lifted["01_explore_dataset"] == ["sources"]  # a mixture's per-source figures


def test_two_notebooks_lifting_the_same_key_are_refused(tmp_path):
    for name in ("01_a", "02_b"):
        nb = nbformat.v4.new_notebook(metadata={"sftlib": {"summary": ["score"]}})
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    with pytest.raises(SftlibError, match="notebooks 01_a and 02_b both lift 'score'"):
        pipeline.summary_keys(pipeline.notebooks(suite=tmp_path))


def test_html_export_keeps_each_pictures_alt_text_and_still_warns_for_one_without(tmp_path, caplog):
    from IPython.display import Image
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    picture = notebook.save_figure(fig, tmp_path / "loss_curve.png")
    data, metadata = picture._repr_mimebundle_()
    bare, _ = Image(filename=str(tmp_path / "loss_curve.png"))._repr_mimebundle_()
    outputs = [
        nbformat.v4.new_output("display_data", data=data, metadata=metadata),
        nbformat.v4.new_output("display_data", data=bare),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=outputs)]), path)
    with caplog.at_level("WARNING"):
        page = notebook.export_to_html(path).read_text()
    assert '<img alt="loss curve" ' in page
    assert "Alternative text is missing on 1 image(s)" in caplog.text  # the picture without alt text


# --------------------------------------------------------------------------- -p validation (no kernel)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("NUM_PROCESSES", "two", "03_train declares NUM_PROCESSES as int, and 'two' is not one"),
        ("OVERWRITE", "maybe", "declares OVERWRITE as bool"),
        (
            "NUM_PROCESS",
            "2",
            "no selected notebook declares parameter NUM_PROCESS. Fix: did you mean NUM_PROCESSES?",
        ),
    ],
)
def test_a_bad_parameter_is_refused_with_one_clear_error_line(capsys, tmp_path, name, value, message):
    code = cli.main(["pipeline", "--config", "configs/tiny.yaml", "--out", str(tmp_path), "-p", name, value])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())  # refused before any notebook ran


def test_parameters_are_typed_by_each_notebooks_declaration():
    assert pipeline.parse_value("NUM_PROCESSES", "2", "int", "03_train") == 2
    assert pipeline.parse_value("OVERWRITE", "true", "bool", "03_train") is True
    assert pipeline.parse_value("CONFIG", "123", "str", "01") == "123"
    assert pipeline.parse_value("OVERRIDES", "[a=1, b=2]", "list", "01") == ["a=1", "b=2"]


def test_only_selects_notebooks_by_prefix():
    assert [p.stem for p in pipeline.notebooks(["03", "05"])] == ["03_train", "05_load_and_generate"]


# --------------------------------------------------------------------------- end to end (slow)


def tiny_data(tmp: Path) -> str:
    """A small copy of the demo task (the tiny config trains 4 steps of 4 examples on it)."""
    from sftlib.lessons import demo

    data = tmp / "data"
    if not (data / "train.jsonl").is_file():
        demo.write_demo_dataset(data, n_train=32, n_eval=8)
    return f"dataset.name={data}"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftlib", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One full run of all five notebooks, through `sftlib demo` on the tiny model (which calls the same
    run_pipeline as `sftlib pipeline`). One run serves every end-to-end assertion: each costs minutes.
    Returns (out, stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo"
    proc = run_cli(
        "demo",
        "--config",
        "configs/tiny.yaml",
        "--set",
        tiny_data(tmp),
        "--out",
        str(out),
        "-p",
        "NUM_EXAMPLES",
        "8",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stdout, proc.stderr


@pytest.mark.slow
def test_pipeline_runs_every_notebook_and_records_each_result(demo_run):
    out, _, _ = demo_run
    for name in NAMES:
        executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
        assert all(c.execution_count for c in executed.cells if c.cell_type == "code")
        assert (out / f"{name}.html").is_file() and (out / f"{name}.json").is_file()

    explored = json.loads((out / "01_explore_dataset.json").read_text())
    assert explored["format"] == "messages" and explored["report"]["train"]["rows"] == 32
    masks = json.loads((out / "02_verify_masking.json").read_text())
    assert (masks["report"]["train"]["kept"], masks["report"]["eval"]["kept"]) == (32, 8)
    assert masks["report"]["train"]["trained_tokens"] > 0 and masks["stop_tokens"] == ["<|im_end|>"]
    trained = json.loads((out / "03_train.json").read_text())
    assert trained["world_size"] == 1 and trained["global_step"] == 4
    assert len(trained["loss_history"]["train"]) == 4
    merged = json.loads((out / "04_merge.json").read_text())
    assert merged["merged_dir"] and merged["max_logit_difference"] <= merged["tolerance"]
    assert merged["adapter_mb"] < merged["merged_mb"]
    generated = json.loads((out / "05_load_and_generate.json").read_text())
    assert generated["eval_examples"] == 8 and generated["base"]["n"] == generated["tuned"]["n"] == 8

    for picture in ("length_histograms.png", "masking_view.html", "trained_fraction.png", "loss_curve.png"):
        assert (out / picture).stat().st_size > 0, picture
    assert (out / "before_after.png").is_file() and (out / "before_after.html").is_file()


@pytest.mark.slow
def test_summary_merges_what_each_notebook_recorded(demo_run):
    out, _, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["notebooks"]) == NAMES
    for name in NAMES:
        assert summary["notebooks"][name]["results"] == json.loads((out / f"{name}.json").read_text())
    assert isinstance(summary["base"]["exact_match"], float) and isinstance(
        summary["tuned"]["exact_match"], float
    )
    assert set(summary["base"]) >= {"exact_match", "token_f1", "n"}
    assert summary["eval_examples"] == 8 and summary["wall_seconds"] > 0
    assert [p["step"] for p in summary["loss_history"]["train"]] == [1, 2, 3, 4]
    assert "eval" in summary["loss_history"] and "failed" not in summary


@pytest.mark.slow
def test_demo_trains_into_out_and_says_where_everything_is(demo_run):
    out, printed, _ = demo_run
    assert (out / "model" / "lora_weights" / "adapter_config.json").is_file()
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert f"merged model: {out / 'model'}" in printed and "loss_curve.png" in printed
    assert "exact match on 8 held-out prompts: base" in printed


@pytest.mark.slow
def test_executed_notebooks_embed_their_pictures(demo_run):
    out, _, _ = demo_run
    for name in ("01_explore_dataset", "02_verify_masking", "03_train", "05_load_and_generate"):
        cells = nbformat.read(out / f"{name}.ipynb", as_version=4).cells
        pngs = [
            o for c in cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
        ]
        assert pngs, name
    assert "trained special token" in (out / "02_verify_masking.html").read_text()


@pytest.mark.slow
def test_a_run_prints_only_progress_and_results(demo_run):
    out, printed, errors = demo_run
    lines = [line for line in errors.replace("\r", "\n").splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("[")] == [
        f"[{i}/5] {name}" for i, name in enumerate(NAMES, 1)
    ]
    # the kernels' progress lines, under their notebook: every step of 4 (each a quarter), then each model
    trained = [line for line in lines if line.startswith("  [train] ") and "/4 steps" in line]
    assert [line.split()[1] for line in trained] == ["1/4", "2/4", "3/4", "4/4"]
    assert lines.index("[3/5] 03_train") < lines.index(trained[0]) < lines.index("[4/5] 04_merge")
    assert all(" · loss " in line and " tokens/s" in line for line in trained)
    generated = [line for line in lines if line.startswith("  [generate ")]
    assert [line.split("]")[0] for line in generated] == ["  [generate base", "  [generate tuned"]
    noise = ("gemm_4bit_forward", "kernels-community", "without encryption", "Alternative text is missing")
    for text in noise:
        assert text not in printed and text not in errors, text
    for name in NAMES:  # nor red in the notebooks themselves
        cells = nbformat.read(out / f"{name}.ipynb", as_version=4).cells
        stderr = "".join(
            o.get("text", "") for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr"
        )
        assert not any(text in stderr for text in noise), (name, stderr[:500])


@pytest.mark.slow
def test_only_03_with_two_processes_trains_with_world_size_two(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "pipeline", "--config", "configs/tiny.yaml", "--out", str(out), "--set", tiny_data(tmp_path),
        "--set", f"training.output_dir={tmp_path / 'model'}", "--only", "03", "-p", "NUM_PROCESSES", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["03_train.ipynb"]
    assert json.loads((out / "03_train.json").read_text())["world_size"] == 2
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_a_failing_cell_stops_the_pipeline_with_one_error_naming_notebook_and_cell(
    tmp_path, monkeypatch, capsys
):
    suite = tmp_path / "notebooks"
    suite.mkdir()
    for name, source in (
        ("01_fails", 'x = 1\nraise ValueError("boom\\non two lines")'),
        ("02_never", "y = 2"),
    ):
        nb = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell("pass"), nbformat.v4.new_code_cell(source)]
        )
        nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
        nbformat.write(nb, suite / f"{name}.ipynb")
    monkeypatch.setattr(shipped, "notebooks_dir", lambda: suite)
    out = tmp_path / "run"
    code = cli.main(["pipeline", "--config", "configs/tiny.yaml", "--out", str(out)])
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(error) == 1
    assert "notebook 01_fails failed in cell [2] (x = 1 ...): ValueError: boom on two lines" in error[0]
    assert (out / "01_fails.ipynb").is_file() and not (out / "02_never.ipynb").exists()
    assert json.loads((out / "summary.json").read_text())["failed"]["notebook"] == "01_fails"


@pytest.mark.slow
def test_a_notebook_that_does_not_record_what_it_lifts_stops_the_pipeline(tmp_path, monkeypatch):
    suite = tmp_path / "notebooks"
    suite.mkdir()
    params = nbformat.v4.new_code_cell(
        'RUN_DIR: str = ""  # where the record goes', metadata={"tags": ["parameters"]}
    )
    record = nbformat.v4.new_code_cell(
        'import pathlib\npathlib.Path(RUN_DIR, "01_scores.json").write_text("{}")'
    )
    nb = nbformat.v4.new_notebook(cells=[params, record], metadata={"sftlib": {"summary": ["score"]}})
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nbformat.write(nb, suite / "01_scores.ipynb")
    monkeypatch.setattr(shipped, "notebooks_dir", lambda: suite)
    with pytest.raises(SftlibError, match="01_scores lifts 'score' into summary.json.*has no 'score'"):
        pipeline.run_pipeline(ROOT / "configs/tiny.yaml", tmp_path / "run", progress=False, export_html=False)


def test_missing_html_templates_name_the_fix(tmp_path, monkeypatch):
    import nbconvert
    import nbformat

    path = tmp_path / "01.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "nowhere"))
    monkeypatch.setattr(nbconvert.HTMLExporter, "template_name", "no-such-template")
    with pytest.raises(SftlibError, match="HTML templates.*JUPYTER_PATH"):
        notebook.export_to_html(path)
    assert not path.with_suffix(".html").exists()


def test_a_pipeline_trains_into_out_model_unless_the_overrides_name_the_output_dir():
    assert pipeline.run_overrides("runs/x", ["training.max_steps=3"]) == [
        "training.output_dir=runs/x/model",
        "training.max_steps=3",
    ]
    assert pipeline.run_overrides("runs/x", [" training.output_dir = mine"]) == [
        " training.output_dir = mine"
    ]


def test_resume_or_overwrite_without_the_training_notebook_is_refused(tmp_path):
    with pytest.raises(SftlibError, match="--resume applies to the notebook that trains"):
        pipeline.run_pipeline(ROOT / "configs/tiny.yaml", tmp_path / "run", only=["01"], resume=True)
    with pytest.raises(SftlibError, match="are both given"):
        pipeline.run_pipeline(ROOT / "configs/tiny.yaml", tmp_path / "run", resume=True, overwrite=True)
    assert not (tmp_path / "run").exists()
