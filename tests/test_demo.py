"""The demo task (deterministic, disjoint splits, answers that are the ISO form of the prompt's date)
and its run: the shipped config and data from any working directory, and the report it prints."""

import datetime as dt
import re
from pathlib import Path

import pytest

from sftlib import shipped
from sftlib.config import load_config
from sftlib.errors import SftlibError
from sftlib.lessons import date_task, demo
from sftlib.models import modeling
from sftlib.suite import pipeline

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / demo.LESSONS["dates"].data


def test_build_demo_rows_is_deterministic_for_a_seed():
    assert date_task.build_demo_rows(50, 10, seed=3) == date_task.build_demo_rows(50, 10, seed=3)
    assert date_task.build_demo_rows(50, 10, seed=3) != date_task.build_demo_rows(50, 10, seed=4)


def test_test_split_never_shares_a_date_or_prompt_with_train():
    train, test = date_task.build_demo_rows()
    assert len(train) == date_task.N_TRAIN and len(test) == date_task.N_EVAL >= 50
    train_answers = {r["messages"][1]["content"] for r in train}
    train_prompts = {r["messages"][0]["content"] for r in train}
    assert not train_answers & {r["messages"][1]["content"] for r in test}
    assert not train_prompts & {r["messages"][0]["content"] for r in test}


def test_rows_are_user_then_assistant_with_an_iso_answer():
    train, test = date_task.build_demo_rows(200, 64)
    for row in train + test:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].startswith(date_task.INSTRUCTION)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", assistant["content"])
        dt.date.fromisoformat(assistant["content"])


def test_every_style_appears_in_the_test_split():
    _, test = date_task.build_demo_rows()
    prompts = [r["messages"][0]["content"] for r in test]
    assert any("(US)" in p for p in prompts) and any("(UK)" in p for p in prompts)
    assert any(p.split(": ", 1)[1].startswith("the ") for p in prompts)
    assert len(test) >= len(date_task.STYLES)


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("month_ordinal_year", "March 5th, 2021"),
        ("day_mon_year", "5 Mar 2021"),
        ("words_of_month", "the fifth of March, 2021"),
        ("us_slashes", "03/05/2021 (US)"),
        ("uk_slashes", "05/03/2021 (UK)"),
        ("weekday_month_day_year", "Friday, March 5, 2021"),
        ("european_dots", "5.3.2021"),
    ],
)
def test_make_row_writes_the_date_in_its_style(style, expected):
    row = date_task.make_row(dt.date(2021, 3, 5), style)
    assert row["messages"][0]["content"] == f"{date_task.INSTRUCTION} {expected}"
    assert row["messages"][1]["content"] == "2021-03-05"


@pytest.mark.parametrize(
    ("day", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (11, "11th"), (12, "12th"), (22, "22nd"), (31, "31st")],
)
def test_ordinal_suffix(day, text):
    assert date_task.ordinal_suffix(day) == text


def test_committed_files_are_what_the_generator_writes(tmp_path):
    paths = demo.write_demo_dataset(tmp_path)
    for split in ("train", "test"):
        assert paths[split].read_bytes() == (COMMITTED / f"{split}.jsonl").read_bytes(), (
            f"{COMMITTED / split}.jsonl is stale: regenerate it with `python -c 'from sftlib.lessons import demo; "
            "demo.write_demo_dataset()'`"
        )


def test_too_many_rows_is_a_clear_error():
    with pytest.raises(SftlibError, match="distinct dates"):
        date_task.build_demo_rows(10**6, 1)


# --------------------------------------------------------------------------- the run (no notebooks)


@pytest.fixture
def pipeline_calls(monkeypatch):
    """run_pipeline replaced by a recorder returning a scored summary: what the demo would run."""
    calls = []

    def fake(config, out, overrides, params, progress=True, resume=False, overwrite=False):
        calls.append(
            {
                "config": Path(config),
                "out": out,
                "overrides": overrides,
                "params": params,
                "resume": resume,
                "overwrite": overwrite,
            }
        )
        scores = {"exact_match": 50.0, "token_f1": 75.0, "n": 2}
        return {"base": scores, "tuned": scores, "eval_examples": 2}

    monkeypatch.setattr(pipeline, "run_pipeline", fake)
    return calls


def test_demo_runs_the_shipped_config_on_the_shipped_data_from_any_folder(
    pipeline_calls, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    demo.run_demo("out")
    (call,) = pipeline_calls
    assert call["config"] == shipped.config("demo.yaml")
    assert call["overrides"] == [
        "training.output_dir=out/model",
        f"dataset.name={shipped.configs_dir() / 'data' / demo.TASK_NAME}",
    ]
    assert call["params"] == {} and not call["resume"] and not call["overwrite"]  # a finished run is kept
    assert not (tmp_path / "configs").exists()


@pytest.mark.parametrize(
    ("lesson", "out"), [("dates", "runs/demo"), ("chat", "runs/demo-chat"), ("tools", "runs/demo-tools")]
)
def test_each_lesson_runs_into_its_own_folder_and_passes_resume_and_overwrite_on(
    pipeline_calls, tmp_path, monkeypatch, lesson, out
):
    monkeypatch.chdir(tmp_path)
    demo.run_demo(lesson=lesson, resume=True)
    demo.run_demo(lesson=lesson, overwrite=True)
    first, second = pipeline_calls
    assert first["out"] == second["out"] == Path(out) and demo.default_out(lesson) == out
    assert first["overrides"][0] == f"training.output_dir={Path(out) / 'model'}"
    assert (first["resume"], first["overwrite"], second["resume"], second["overwrite"]) == (
        True,
        False,
        False,
        True,
    )


def test_the_tool_lesson_reads_its_shipped_template_and_data_from_any_folder(
    pipeline_calls, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    demo.run_demo("out", lesson="tools")
    (call,) = pipeline_calls
    assert call["config"] == shipped.config("tool_lesson.yaml")
    template = shipped.config("templates/chatml_tools.jinja")
    assert call["overrides"][1:] == [
        f"dataset.name={shipped.configs_dir() / 'data' / 'weekday_tools'}",
        f"model.chat_template={template}",
    ]
    cfg = load_config(call["config"], call["overrides"])
    assert modeling.load_tokenizer(cfg.model).chat_template == template.read_text()


def test_demo_keeps_a_dataset_the_user_names(pipeline_calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo.write_demo_dataset(tmp_path / "mine", n_train=4, n_eval=2)
    demo.run_demo("out", overrides=["dataset.name=mine"], params={"NUM_EXAMPLES": "2"})
    (call,) = pipeline_calls
    assert call["overrides"] == ["training.output_dir=out/model", "dataset.name=mine"]  # relative to here
    assert call["params"] == {"NUM_EXAMPLES": "2"}


def test_demo_report_names_what_was_made_and_the_scores(tmp_path):
    (tmp_path / "loss_curve.png").write_bytes(b"")
    scores = {
        "base": {"exact_match": 0.0, "token_f1": 37.0},
        "tuned": {"exact_match": 87.5, "token_f1": 97.4},
    }
    report = demo.demo_report({**scores, "eval_examples": 64}, tmp_path, tmp_path / "model")
    assert f"plots: loss_curve.png in {tmp_path}" in report
    assert f"merged model: {tmp_path / 'model'} (adapter in {tmp_path / 'model' / 'lora_weights'})" in report
    assert "exact match on 64 held-out prompts: base 0.0% -> tuned 87.5% (token F1 37.0% -> 97.4%)" in report
    unscored = demo.demo_report({"base": None, "tuned": None}, tmp_path, tmp_path / "model")
    assert "nothing was scored" in unscored and "exact match" not in unscored


def test_committed_chat_lesson_files_are_what_the_generator_writes(tmp_path):
    paths = demo.write_demo_dataset(tmp_path, n_train=date_task.N_CHAT_TRAIN, lesson="chat")
    for split in ("train", "test"):
        committed = Path(demo.LESSONS["chat"].data) / f"{split}.jsonl"
        assert paths[split].read_bytes() == (ROOT / committed).read_bytes(), f"{committed} is stale"


def test_chat_lesson_turn_two_is_answered_by_turn_one_only():
    train, test = date_task.build_chat_rows(30, 9)
    for row in train + test:
        user, first, follow_up, second = row["messages"]
        answer = first["content"].rsplit("\n", 1)[-1]  # the ISO date after the reasoning block
        assert first["content"].startswith("<think>\n") and "</think>\n\n" in first["content"]
        year, month, day = answer.split("-")
        assert second["content"] in (f"{day}/{month}/{year}", year, date_task.MONTHS[int(month) - 1])
    assert {row["messages"][2]["content"] for row in test} == set(date_task.FOLLOW_UPS)
    held_out = {row["messages"][1]["content"] for row in test}
    assert not held_out & {row["messages"][1]["content"] for row in train}
