"""Chats: a Session's history, system prompt, reset and tool loop (with a scripted engine, then a real
model); the transformers engine's stream against the batch decoder; `sftlib chat` fed through stdin;
`sftlib generate` with a system prompt, sampling, multi-turn input and its cut-off warning; notebook 05's
chat widget driven by its buttons."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftlib.errors import SftlibError
from sftlib.inference import chat, tool_formats
from sftlib.lessons import tool_task

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {f.name: f for f in tool_formats.FORMATS}


class Scripted:
    """An Engine that replies with the given raw texts in turn, streamed in 3-character pieces, and keeps
    every chat it was asked to continue."""

    specials = ("<|im_end|>",)

    def __init__(self, *replies: str):
        self.replies, self.seen = list(replies), []

    def stream(self, messages, context, sampling):
        self.seen.append((list(messages), context))
        raw = self.replies.pop(0)
        for k in range(0, len(raw), 3):
            yield raw[k : k + 3]
        return raw.endswith("...")  # a reply ending in "..." plays one cut off by max_new_tokens


def test_a_session_keeps_the_history_puts_the_system_first_and_forgets_on_reset():
    engine = Scripted("2021-03-05<|im_end|>", "2021-03-06<|im_end|>", "hello<|im_end|>")
    session = chat.Session(engine, system="Be brief.")
    pieces = []
    assert session.send("Write 5 March 2021 as YYYY-MM-DD", pieces.append) == [
        chat.Part("answer", "2021-03-05")
    ]
    assert "".join(pieces) == "2021-03-05<|im_end|>"  # streamed as decoded
    session.send("And the sixth?")
    asked, _ = engine.seen[1]
    assert [m["role"] for m in asked] == ["system", "user", "assistant", "user"]
    assert asked[0]["content"] == "Be brief." and asked[2]["content"] == "2021-03-05"
    session.reset()
    session.send("hi")
    assert [m["role"] for m in engine.seen[2][0]] == ["system", "user"]
    with pytest.raises(SftlibError, match="empty"):
        session.send("  ")


def test_reasoning_is_shown_apart_and_a_cut_off_reply_says_so():
    engine = Scripted("<think>March is 03.</think>2021-03-05<|im_end|>", "2021-03-...")
    session = chat.Session(engine)
    assert session.send("date?") == [
        chat.Part("reasoning", "March is 03."),
        chat.Part("answer", "2021-03-05"),
    ]
    kinds = [p.kind for p in session.send("again?")]
    assert kinds == ["answer", "error"]


def test_a_session_with_tools_runs_the_loop_and_shows_call_result_and_answer():
    call = '<tool_call>\n{"name": "weekday", "arguments": {"date": "2021-03-05"}}\n</tool_call><|im_end|>'
    engine = Scripted(call, "Friday<|im_end|>")
    session = chat.Session(engine, tool_task.SYSTEM, None, tool_task.TOOLS, FORMATS["hermes"])
    parts = session.send("What day of the week was March 5, 2021?")
    assert parts == [
        chat.Part("call", 'weekday({"date": "2021-03-05"})'),
        chat.Part("result", "Friday"),
        chat.Part("answer", "Friday"),
    ]
    second, context = engine.seen[1]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
    assert second[3]["content"] == "Friday"
    assert context["tools"] == tool_task.TOOL_SCHEMAS  # the schema from the function is the one trained
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"]


def test_the_lesson_tools_schema_from_its_docstring_is_the_trained_one():
    assert chat.tool_schemas(tool_task.TOOLS) == tool_task.TOOL_SCHEMAS


def test_a_tool_without_a_documented_argument_is_refused_with_the_fix():
    def f(x: int) -> int:
        """No Args section."""
        return x

    with pytest.raises(SftlibError, match="Args: section"):
        chat.tool_schemas({"f": f})


def test_sampling_settings_are_checked():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(SftlibError):
            chat.Sampling(**bad)


# --------------------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def tiny():
    from sftlib.config import ModelConfig
    from sftlib.inference import loading

    return loading.load_for_generation(ModelConfig(path="embedded:tiny-random-llama", dtype="float32"))


def test_the_transformers_stream_is_the_batch_decoders_greedy_answer(tiny):
    from sftlib.inference import generate

    model, tokenizer = tiny
    engine = chat.TransformersEngine(model, tokenizer)
    prompts = [[{"role": "user", "content": text}] for text in ("Hello", "Write 5 March 2021 as YYYY-MM-DD")]
    batch = generate.generations(model, tokenizer, prompts, 10, progress=False)
    for prompt, expected in zip(prompts, batch, strict=True):
        raw, cut_off = chat.drain(
            engine.stream(prompt, None, chat.Sampling(max_new_tokens=10)), lambda p: None
        )
        assert (raw, cut_off) == (expected.raw, expected.cut_off)


def test_a_fixed_seed_samples_the_same_reply_twice(tiny):
    engine = chat.TransformersEngine(*tiny)
    sampling = chat.Sampling(temperature=1.0, top_p=0.9, seed=3, max_new_tokens=12)
    prompt = [{"role": "user", "content": "Hello"}]
    first, second = (chat.drain(engine.stream(prompt, None, sampling), lambda p: None) for _ in range(2))
    assert first == second


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sftlib", *args], cwd=ROOT, capture_output=True, text=True, input=stdin
    )


def test_sftlib_chat_reads_stdin_resets_and_exits_zero():
    proc = run_cli(
        "chat",
        "--model",
        "embedded:tiny-random-llama",
        "--max-new-tokens",
        "4",
        stdin="hi\n/reset\nhello\n/exit\nnot read\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2 and "(conversation reset)" in proc.stdout


def test_sftlib_generate_takes_a_system_prompt_multi_turn_input_and_warns_when_cut_off(tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        json.dumps(
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ]
        )
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Hi"}]})
        + "\n"
    )
    proc = run_cli(
        "generate",
        "--model",
        "embedded:tiny-random-llama",
        "--input",
        str(chats),
        "--system",
        "Be brief.",
        "--max-new-tokens",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [len(r["prompt"]) for r in rows] == [4, 2] and rows[0]["prompt"][0] == {
        "role": "system",
        "content": "Be brief.",
    }
    assert all(r["cut_off"] for r in rows)  # 2 new tokens: a random model does not stop that soon
    assert "warning: 2 of 2 answers hit --max-new-tokens 2" in proc.stderr


def test_bad_generate_input_is_one_error_line_naming_the_line(tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]) + "\n"
    )
    proc = run_cli("generate", "--model", "embedded:tiny-random-llama", "--input", str(chats))
    assert proc.returncode == 1 and f"{chats} line 1 ends with an assistant turn" in proc.stderr
    proc = run_cli("generate", "--model", "embedded:tiny-random-llama")
    assert proc.returncode == 1 and "give prompts or --input" in proc.stderr


# --------------------------------------------------------------------------- the widget


def test_the_chat_widget_answers_on_both_sides_keeps_the_system_prompt_and_resets():
    from sftlib.views import chat_widget

    base, tuned = (
        Scripted("no idea<|im_end|>", "hm<|im_end|>"),
        Scripted("2021-03-05<|im_end|>", "2021-03-06<|im_end|>"),
    )
    sides = [chat_widget.Side("base", chat.Session(base)), chat_widget.Side("tuned", chat.Session(tuned))]
    box = chat_widget.chat_box(sides, system="Be brief.")
    system, columns, row, status = box.children
    message, send, reset = row.children
    message.value = "Write 5 March 2021 as YYYY-MM-DD"
    send.click()
    assert "no idea" in sides[0].view.value and "2021-03-05" in sides[1].view.value
    assert base.seen[0][0][0] == {"role": "system", "content": "Be brief."}
    system.value = ""
    message.value = "And the sixth?"
    send.click()
    assert [m["role"] for m in tuned.seen[1][0]] == [
        "user",
        "assistant",
        "user",
    ]  # history kept, no system now
    assert sides[1].view.value.count("sftlib-chat-user") == 2
    reset.click()
    assert sides[0].view.value == sides[1].view.value == "" and status.value == "<i>conversation reset</i>"
