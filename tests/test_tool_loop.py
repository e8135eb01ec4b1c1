"""The tool lesson's data and the tool loop: parsing the template's calls, running tools, scoring."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftlib.config import load_config
from sftlib.data import masking
from sftlib.errors import BadToolCall
from sftlib.inference import tool_loop
from sftlib.inference.tool_loop import Transcript
from sftlib.lessons import date_task, demo, tool_task

ROOT = Path(__file__).resolve().parents[1]
CALL = {"type": "function", "function": {"name": "weekday", "arguments": {"date": "2021-03-05"}}}


def test_parse_tool_calls_reads_the_qwen2_5_format_and_names_what_is_malformed():
    text = '<tool_call>\n{"name": "weekday", "arguments": {"date": "2021-03-05"}}\n</tool_call>'
    assert tool_loop.parse_tool_calls(text) == [CALL]
    as_string = '<tool_call>{"name": "weekday", "arguments": "{\\"date\\": \\"2021-03-05\\"}"}</tool_call>'
    assert tool_loop.parse_tool_calls(as_string) == [CALL]  # arguments as a JSON string, parsed
    assert tool_loop.parse_tool_calls("Friday") == []
    two = text + "\n" + text.replace("03-05", "03-06")
    assert [c["function"]["arguments"]["date"] for c in tool_loop.parse_tool_calls(two)] == [
        "2021-03-05",
        "2021-03-06",
    ]
    for bad, says in [
        ("<tool_call>\n{name: weekday}\n</tool_call>", "not JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', "no function name"),
        ('<tool_call>{"name": "weekday", "arguments": [1]}</tool_call>', "not a mapping"),
        ('<tool_call>{"name": "weekday", "arguments": {"date": "2021-03-0', "not JSON"),  # cut off
    ]:
        with pytest.raises(BadToolCall, match=says):
            tool_loop.parse_tool_calls(bad)


def test_run_call_refuses_unknown_tools_and_wrong_argument_names_and_reports_bad_values():
    assert tool_loop.run_call(CALL, tool_task.TOOLS) == "Friday"
    with pytest.raises(BadToolCall, match="unknown tool 'calendar'"):
        tool_loop.run_call({"function": {"name": "calendar", "arguments": {}}}, tool_task.TOOLS)
    with pytest.raises(BadToolCall, match="weekday: missing a required argument: 'date'"):
        tool_loop.run_call({"function": {"name": "weekday", "arguments": {"day": "x"}}}, tool_task.TOOLS)
    with pytest.raises(BadToolCall, match="unexpected keyword argument 'year'"):
        tool_loop.run_call(
            {"function": {"name": "weekday", "arguments": {"date": "x", "year": 1}}}, tool_task.TOOLS
        )
    bad_value = {"function": {"name": "weekday", "arguments": {"date": "5 March"}}}
    assert tool_loop.run_call(bad_value, tool_task.TOOLS).startswith(
        "error: ValueError: '5 March' is not a date"
    )

    def broken(date: str) -> str:
        raise KeyError(date)  # not a ValueError: a user's tool may raise anything

    assert tool_loop.run_call(CALL, {"weekday": broken}) == "error: KeyError: '2021-03-05'"


def test_score_counts_exact_calls_answers_and_tool_free_answers():
    good = Transcript(first="...", calls=[CALL], results=["Friday"], answer="Friday")
    wrong_date = Transcript(first="...", calls=[{"type": "function", "function": {"name": "weekday", "arguments": {"date": "2021-05-03"}}}], results=["Monday"], answer="Monday")  # fmt: skip
    malformed = Transcript(first="<tool_call>{", error="not JSON")
    plain, needless_call = (
        Transcript(first="2021-03-05", answer="2021-03-05"),
        Transcript(first="...", calls=[CALL]),
    )
    s = tool_loop.score(
        [good, wrong_date, malformed, plain, needless_call],
        [CALL, CALL, CALL, None, None],
        ["Friday", "Friday", "Friday", "2021-03-05", "2021-03-05"],
    )
    assert s == {
        "call_exact": 1 / 3,
        "answer_exact": 1 / 3,
        "no_tool_correct": 0.5,
        "no_tool_answer_exact": 0.5,
        "tool_prompts": 3,
        "no_tool_prompts": 2,
    }
    silent_wrong = Transcript(first="I don't know", answer="I don't know")  # no call, and a wrong answer
    s = tool_loop.score([plain, silent_wrong], [None, None], ["2021-03-05", "2021-03-05"])
    assert (s["no_tool_correct"], s["no_tool_answer_exact"]) == (1.0, 0.5)
    assert good.shown() == 'weekday({"date": "2021-03-05"}) -> Friday -> Friday'
    assert malformed.shown() == "malformed call: not JSON" and plain.shown() == "(no call) 2021-03-05"
    assert tool_loop.expected(CALL, "Friday", tool_task.TOOLS).shown() == good.shown()


def test_committed_tool_lesson_files_are_what_the_generator_writes(tmp_path):
    paths = demo.write_demo_dataset(tmp_path, n_train=tool_task.N_TRAIN, lesson="tools")
    for split in ("train", "test"):
        committed = Path(demo.LESSONS["tools"].data) / f"{split}.jsonl"
        assert paths[split].read_bytes() == (ROOT / committed).read_bytes(), f"{committed} is stale"


def test_tool_lesson_rows_call_the_tool_on_held_out_dates_and_a_quarter_need_none():
    train, test = tool_task.build_tool_rows(40, 12)
    for row in train + test:
        roles = [m["role"] for m in row["messages"]]
        if roles == ["system", "user", "assistant"]:
            assert row["messages"][1]["content"].startswith(date_task.INSTRUCTION)
            continue
        assert roles == ["system", "user", "assistant", "tool", "assistant"]
        (call,) = row["messages"][2]["tool_calls"]
        assert (
            row["messages"][3]["content"]
            == row["messages"][4]["content"]
            == tool_task.weekday(call["function"]["arguments"]["date"])
        )
    assert sum(len(r["messages"]) == 3 for r in test) == 3

    def date_of(row: dict) -> str:  # the date a row is about: its call's argument, or its ISO answer
        calls = row["messages"][2].get("tool_calls")
        return calls[0]["function"]["arguments"]["date"] if calls else row["messages"][2]["content"]

    assert all(len(date_of(r)) == len("2021-03-05") for r in train + test)
    assert not {date_of(r) for r in test} & {date_of(r) for r in train}  # held-out dates never trained


def test_the_tool_lesson_trains_the_call_and_the_answer_not_the_schema_or_the_result(tmp_path):
    from sftlib.data import dataset
    from sftlib.models import modeling

    cfg = load_config(
        ROOT / "configs/tool_lesson.yaml",
        [f"dataset.name={ROOT / demo.LESSONS['tools'].data}", "dataset.max_samples=8"],
    )
    tokenizer = modeling.load_tokenizer(cfg.model)
    prepared = dataset.prepare(cfg, tokenizer, splits=("train",), limit=8)
    row = next(r for r in prepared.train if len(masking.trained_runs(r["labels"])) == 2)
    call, answer = (tokenizer.decode(row["input_ids"][a:b]) for a, b in masking.trained_runs(row["labels"]))
    assert call.startswith('<tool_call>\n{"name": "weekday", "arguments": {"date": ') and call.endswith(
        "</tool_call><|im_end|>"
    )
    assert answer.endswith("day<|im_end|>")
    untrained = tokenizer.decode(
        [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
    )
    assert "<tools>" in untrained and "<tool_response>" in untrained and tool_task.SYSTEM in untrained


def test_the_demo_report_shows_the_tool_loop_scores(tmp_path):
    score = {"call_exact": 0.0, "answer_exact": 0.0, "no_tool_correct": 1.0, "no_tool_answer_exact": 0.0}
    tuned = {
        "call_exact": 0.9375,
        "answer_exact": 0.9375,
        "no_tool_correct": 1.0,
        "no_tool_answer_exact": 0.875,
    }
    report = demo.demo_report({"base": score, "tuned": tuned, "eval_examples": 64}, tmp_path, tmp_path / "m")
    assert "tool loop on 64 held-out prompts, base -> tuned: exact call 0.0% -> 93.8%" in report
    assert "(answered exactly: 0.0% -> 87.5%)" in report


@pytest.mark.slow
def test_the_tool_lesson_teaches_the_call_and_the_answer_on_held_out_dates(tmp_path):
    """`sftlib demo --lesson tools` end to end on the embedded SmolLM2, scored against the issue's floors
    (docs/lessons.md records the measured figures): the base model never calls the tool; the tuned one
    calls it with the exact date and answers with its result, and calls nothing where nothing is needed."""
    out = tmp_path / "tools"
    proc = subprocess.run(
        [sys.executable, "-m", "sftlib", "demo", "--lesson", "tools", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    base, tuned = summary["base"], summary["tuned"]
    assert summary["eval_examples"] == 64
    assert (tuned["tool_prompts"], tuned["no_tool_prompts"]) == (48, 16)
    assert tuned["call_exact"] >= base["call_exact"] + 0.80, (base, tuned)
    assert tuned["answer_exact"] >= 0.80 and tuned["no_tool_correct"] >= 0.90, tuned
    assert tuned["no_tool_answer_exact"] >= 0.75 > base["no_tool_answer_exact"], (base, tuned)
    assert "tool loop on 64 held-out prompts, base -> tuned" in proc.stdout


def test_held_out_tool_cases_are_read_as_training_reads_them_and_take_turns_between_sources(tmp_path):
    """A mixture of two sources: the cases alternate between them (the first does not fill the limit),
    and each case's prompt, tools and call are those of its row as masking reads it."""
    from sftlib.lessons.demo import write_jsonl

    train, test = tool_task.build_tool_rows(24, 16, 0)
    for name, rows in (("a", test[:8]), ("b", test[8:])):
        write_jsonl(train, tmp_path / name / "train.jsonl")
        write_jsonl(rows, tmp_path / name / "test.jsonl")
    sources = [f"{{name: {tmp_path / n}, eval_split: test}}" for n in ("a", "b")]
    cfg = load_config(ROOT / "configs/tool_lesson.yaml", [f"dataset=[{', '.join(sources)}]"])
    cases = tool_loop.held_out_cases(cfg, limit=4)
    with_tools = [r for r in test if r.get("tools")]
    a, b = [r for r in with_tools if r in test[:8]], [r for r in with_tools if r in test[8:]]
    expected = [a[0], b[0], a[1], b[1]]
    assert [p[-1]["content"] for p in cases.prompts] == [r["messages"][1]["content"] for r in expected]
    assert all(c["tools"] == r["tools"] for c, r in zip(cases.contexts, expected, strict=True))
