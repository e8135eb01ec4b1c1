"""The tool lesson's data and the tool loop: parsing the template's calls, running tools, scoring."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftlib.config import load_config
from sftlib.data import masking
from sftlib.errors import BadToolCall
from sftlib.inference import tool_formats, tool_loop
from sftlib.inference.generate import Generation
from sftlib.inference.tool_loop import Round, Transcript
from sftlib.lessons import date_task, demo, tool_task

FORMATS = {f.name: f for f in tool_formats.FORMATS}

ROOT = Path(__file__).resolve().parents[1]
CALL = {"type": "function", "function": {"name": "weekday", "arguments": {"date": "2021-03-05"}}}


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
    good = Transcript(rounds=[Round("...", [CALL], ["Friday"])], answer="Friday")
    wrong_date = Transcript(rounds=[Round("...", [{"type": "function", "function": {"name": "weekday", "arguments": {"date": "2021-05-03"}}}], ["Monday"])], answer="Monday")  # fmt: skip
    malformed = Transcript(error="not JSON")
    plain, needless_call = (
        Transcript(answer="2021-03-05"),
        Transcript(rounds=[Round("...", [CALL], ["Friday"])], answer="Friday"),
    )
    s = tool_loop.score(
        [good, wrong_date, malformed, plain, needless_call],
        [[[CALL]], [[CALL]], [[CALL]], [], []],
        ["Friday", "Friday", "Friday", "2021-03-05", "2021-03-05"],
    )
    assert s == {
        "call_exact": 1 / 3,
        "answer_exact": 1 / 3,
        "no_tool_correct": 0.5,
        "no_tool_answer_exact": 0.5,
        "tool_prompts": 3,
        "no_tool_prompts": 2,
        "malformed": 1,
        "cut_off": 0,
        "unfinished": 0,
    }
    silent_wrong = Transcript(answer="I don't know")  # no call, and a wrong answer
    s = tool_loop.score([plain, silent_wrong], [[], []], ["2021-03-05", "2021-03-05"])
    assert (s["no_tool_correct"], s["no_tool_answer_exact"]) == (1.0, 0.5)
    assert good.shown() == 'weekday({"date": "2021-03-05"}) -> Friday -> Friday'
    assert malformed.shown() == "malformed call: not JSON" and plain.shown() == "(no call) 2021-03-05"
    assert tool_loop.expected([[CALL]], "Friday", tool_task.TOOLS).shown() == good.shown()


def call(date: str, id_: str | None = None) -> dict:
    c = {"type": "function", "function": {"name": "weekday", "arguments": {"date": date}}}
    return {**c, "id": id_} if id_ else c


def test_parallel_calls_score_as_a_set_and_rounds_as_a_sequence():
    a, b = call("2021-03-05"), call("2021-03-06")
    expected = [[[a, b]], [[a], [b]]]

    def score(*rounds):
        t = Transcript(rounds=[Round("", r, ["x"] * len(r)) for r in rounds], answer="x")
        return tool_loop.score([t, t], expected, ["x", "x"])["call_exact"]

    assert score([b, a]) == 0.5  # the parallel pair in either order; not the two rounds
    assert score([a], [b]) == 0.5  # two rounds in order; not the parallel pair
    assert score([b], [a]) == 0.0  # rounds out of order
    assert score([a]) == 0.0 and score([a, b, b]) == 0.0  # one missing, one too many
    cut = Transcript(rounds=[Round("", [a, b], ["x", "x"])], cut_off=True)
    assert tool_loop.score([cut], expected[:1], ["x"])["call_exact"] == 0.0  # cut off before its answer


# The loop on a scripted model: the Hermes format, as the tool lesson's template writes it.
HERMES = FORMATS["hermes"]
MISTRAL = FORMATS["mistral"]
USER = {"role": "user", "content": "What day of the week was the fifth of March, 2021?"}


def hermes(*calls: dict) -> str:
    return (
        "".join(
            f"<tool_call>\n{json.dumps({'name': c['function']['name'], 'arguments': c['function']['arguments']})}\n</tool_call>"
            for c in calls
        )
        + "<|im_end|>"
    )


class Scripted:
    """A Generator that answers each chat with the next of its texts (by the chat's question), and
    records every chat it was given, as it was given, round by round."""

    def __init__(self, script: dict[str, list[str | Generation]]):
        self.script, self.given = {k: list(v) for k, v in script.items()}, []

    def __call__(self, chats, contexts, label):
        self.given.append([copy.deepcopy(c) for c in chats])
        out = []
        for chat in chats:
            text = self.script[chat[0]["content"]].pop(0)
            out.append(
                text
                if isinstance(text, Generation)
                else Generation(text.replace("<|im_end|>", ""), text, False)
            )
        return out


def loop(
    script: dict, tools=None, fmt=HERMES, specials=("<|im_end|>",), **kwargs
) -> tuple[list[Transcript], Scripted]:
    model = Scripted(script)
    prompts = [[{"role": "user", "content": q}] for q in script]
    transcripts = tool_loop.run_loop(
        prompts,
        [None] * len(prompts),
        tools or tool_task.TOOLS,
        fmt,
        model,
        specials=specials,
        **kwargs,
    )
    return transcripts, model


def tool(result: str, name: str = "weekday", id_: str | None = None) -> dict:
    message = {"role": "tool", "name": name, "content": result}
    return {**message, "tool_call_id": id_} if id_ else message


def test_one_call_then_the_answer_each_message_in_its_place():
    (t,), model = loop({USER["content"]: [hermes(call("2021-03-05")), "Friday<|im_end|>"]})
    turn = {"role": "assistant", "content": "", "tool_calls": [call("2021-03-05")]}
    assert model.given == [[[USER]], [[USER, turn, tool("Friday")]]]
    assert t.messages == [USER, turn, tool("Friday"), {"role": "assistant", "content": "Friday"}]
    assert (t.answer, t.shown()) == ("Friday", 'weekday({"date": "2021-03-05"}) -> Friday -> Friday')


def test_parallel_calls_append_one_result_each_in_order_with_their_ids():
    calls = [call("2021-03-05", "abcdefghi"), call("2021-03-06", "bcdefghij")]
    first = "[TOOL_CALLS]" + json.dumps([{"name": "weekday", "arguments": c["function"]["arguments"], "id": c["id"]} for c in calls]) + "</s>"  # fmt: skip
    (t,), model = loop({USER["content"]: [first, "Friday and Saturday</s>"]}, fmt=MISTRAL, specials=("</s>",))
    turn = {"role": "assistant", "content": "", "tool_calls": calls}
    assert model.given[1] == [
        [USER, turn, tool("Friday", id_="abcdefghi"), tool("Saturday", id_="bcdefghij")]
    ]
    assert t.answer == "Friday and Saturday"


def test_two_rounds_run_until_the_model_answers_without_a_call():
    def shift(date: str, days: int) -> str:
        return "2021-03-08"

    tools = {**tool_task.TOOLS, "shift": shift}
    moved = {
        "type": "function",
        "function": {"name": "shift", "arguments": {"date": "2021-03-05", "days": 3}},
    }
    (t,), model = loop(
        {USER["content"]: [hermes(moved), hermes(call("2021-03-08")), "Monday<|im_end|>"]}, tools
    )
    first = {"role": "assistant", "content": "", "tool_calls": [moved]}
    second = {"role": "assistant", "content": "", "tool_calls": [call("2021-03-08")]}
    assert model.given == [
        [[USER]],
        [[USER, first, tool("2021-03-08", "shift")]],
        [[USER, first, tool("2021-03-08", "shift"), second, tool("Monday")]],
    ]
    assert t.calls() == [[{"name": "shift", "arguments": {"date": "2021-03-05", "days": 3}}], [{"name": "weekday", "arguments": {"date": "2021-03-08"}}]]  # fmt: skip
    assert t.answer == "Monday"


def test_a_chat_without_a_call_is_generated_once_while_others_go_on():
    plain = "Write this date as YYYY-MM-DD: March 5th, 2021"
    (asked, direct), model = loop(
        {USER["content"]: [hermes(call("2021-03-05")), "Friday"], plain: ["2021-03-05"]}
    )
    assert [len(round_) for round_ in model.given] == [2, 1]  # the second round holds only the call
    assert (direct.called, direct.answer, asked.answer) == (False, "2021-03-05", "Friday")


def test_a_malformed_call_and_an_unknown_tool_end_that_chat_as_misses_and_a_raising_tool_is_a_result():
    def broken(date: str) -> str:
        raise KeyError(date)

    script = {
        "bad json": ["<tool_call>{name: weekday}</tool_call>"],
        "unknown": ['<tool_call>{"name": "calendar", "arguments": {}}</tool_call>'],
        "raises": [hermes(call("2021-03-05")), "I could not tell."],
    }
    (bad, unknown, raising), model = loop(script, {"weekday": broken})
    assert bad.error.startswith("a <tool_call> body is not JSON") and unknown.error.startswith(
        "unknown tool 'calendar'"
    )
    assert [len(r) for r in model.given] == [3, 1]  # the misses are not generated again
    assert model.given[1][0][-1] == tool("error: KeyError: '2021-03-05'")
    assert raising.answer == "I could not tell."


def test_a_generation_cut_off_by_max_new_tokens_is_reported_as_cut_off_not_malformed():
    cut = Generation("", '<tool_call>\n{"name": "weekday", "argu', cut_off=True)
    long_answer = Generation("It was a Fri", "It was a Fri", cut_off=True)
    (t, answered), _ = loop({"cut": [cut], "long": [long_answer]})
    assert (t.error, t.cut_off, t.shown()) == (None, True, "cut off at max_new_tokens")
    assert (answered.answer, answered.cut_off) == ("It was a Fri", True)
    s = tool_loop.score([t, answered], [[[call("2021-03-05")]], []], ["Friday", "x"])
    assert (s["malformed"], s["cut_off"]) == (0, 2)
    unclosed = Generation("", "<tool_call>\n{}", cut_off=False)  # not cut off: the model stopped there
    (t,), _ = loop({"stopped": [unclosed]})
    assert t.error.startswith("an unfinished call") and not t.cut_off


def test_a_model_that_keeps_calling_stops_after_max_rounds():
    (t,), model = loop({USER["content"]: [hermes(call("2021-03-05"))] * 5}, max_rounds=2)
    assert len(model.given) == 2 and t.unfinished and len(t.rounds) == 2
    assert t.shown().endswith("still calling after 2 rounds")


def test_held_out_rows_give_their_rounds_of_calls_and_final_answer():
    messages = [
        USER,
        {"role": "assistant", "content": "", "tool_calls": [call("2021-03-05", "abcdefghi")]},
        tool("Friday", id_="abcdefghi"),
        {"role": "assistant", "content": "", "tool_calls": [call("2021-03-06"), call("2021-03-07")]},
        tool("Saturday"),
        tool("Sunday"),
        {"role": "assistant", "content": "<think>\nok\n</think>\n\nFriday"},
    ]
    rounds, answer = tool_loop.expected_rounds(messages, 1)
    assert [[c["function"]["arguments"]["date"] for c in r] for r in rounds] == [["2021-03-05"], ["2021-03-06", "2021-03-07"]]  # fmt: skip
    assert answer == "Friday"


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
    assert tuned["no_tool_answer_exact"] >= 0.625 > base["no_tool_answer_exact"], (base, tuned)
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
