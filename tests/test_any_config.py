"""The notebook suite with a user's own config, not only the demo's: checked up front, runs to the end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftlib.lessons import demo

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftlib", *args], cwd=cwd, capture_output=True, text=True)


def small_data(tmp: Path) -> Path:
    data = tmp / "data"
    demo.write_demo_dataset(data, n_train=32, n_eval=8)
    return data


def test_a_finished_output_dir_with_two_processes_ends_in_one_error_before_any_notebook(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "run_info.json").write_text("{}")
    out = tmp_path / "run"
    proc = run(
        "pipeline", "--config", "configs/tiny.yaml", "--out", str(out), "--set", f"training.output_dir={model}",
        "--set", f"dataset.name={small_data(tmp_path)}", "-p", "NUM_PROCESSES", "2",
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1
    assert errors[0] == (
        f"error: {model} already holds a finished run (run_info.json). Fix: pass --overwrite to replace it, "
        "--resume to continue it, or choose another training.output_dir."
    )
    assert "Traceback" not in proc.stderr and not out.exists()  # refused before notebook 01 ran


def test_a_text_dataset_without_prompts_for_notebook_05_is_refused_up_front(tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"line {i}"}) for i in range(8)))
    out = tmp_path / "run"
    proc = run("pipeline", "--config", "configs/tiny.yaml", "--out", str(out), "--set", f"dataset.name={data}",
               "--set", "dataset.eval_split=null")  # fmt: skip
    assert proc.returncode == 1 and "a `text` dataset has no prompts to answer" in proc.stderr
    assert "PROMPTS" in proc.stderr and not out.exists()


@pytest.mark.slow
def test_a_seed_style_config_without_an_eval_split_runs_all_five_notebooks(tmp_path):
    out = tmp_path / "run"
    proc = run(
        "pipeline", "--config", "configs/tiny.yaml", "--out", str(out), "--set", "dataset.eval_split=null",
        "--set", f"dataset.name={small_data(tmp_path)}", "--set", f"training.output_dir={tmp_path / 'model'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    generated = json.loads((out / "05_load_and_generate.json").read_text())
    assert generated["prompts"] == "seen in training" and generated["base"] is None
    assert generated["eval_examples"] == 0 and len(generated["examples"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["notebooks"]) == 5 and "failed" not in summary


@pytest.mark.slow
def test_a_two_source_mixture_runs_all_five_notebooks_with_per_source_figures(tmp_path):
    chats = small_data(tmp_path)
    completions = tmp_path / "completions.jsonl"
    completions.write_text(
        "\n".join(json.dumps({"prompt": f"Count to {i}:", "completion": f" {i}"}) for i in range(24))
    )
    mixture = f"[{{name: {chats}, split: train, eval_split: test}}, {{name: {completions}, fraction: 0.5}}]"
    out = tmp_path / "run"
    proc = run(
        "pipeline", "--config", "configs/tiny.yaml", "--out", str(out), "--set", f"dataset={mixture}",
        "--set", f"training.output_dir={tmp_path / 'model'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["sources"]
    assert (first["train"]["rows"], first["eval"]["rows"], second["train"]["rows"]) == (32, 8, 12)
    assert first["train"]["share_of_examples"] + second["train"]["share_of_examples"] == pytest.approx(
        1, abs=1e-3
    )
    assert summary["tuned"]["n"] == 8 and len(summary["notebooks"]) == 5
