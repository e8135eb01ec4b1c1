"""The tool loop at inference, and its score: generate, parse the tool calls, run the Python tools,
append their results as `tool` messages, generate the answer.

The parser reads the format of the Hermes / Qwen2.5 family of templates (TRL's bundled `qwen2_5`,
the Qwen3 family, the tool lesson's `configs/templates/chatml_tools.jinja`): each call is a JSON
object `{"name": ..., "arguments": {...}}` between `<tool_call>` and `</tool_call>`. Whatever the model writes, a malformed call (not JSON, no name,
an unknown tool, arguments the tool does not take) is kept in the transcript with its error and
scored as a miss; it never stops the loop.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import re
from collections.abc import Callable

from sftlib.data import chat
from sftlib.errors import BadToolCall

TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


def parse_tool_calls(text: str) -> list[dict]:
    """The tool calls in generated `text`, in the templates' shape (sftlib.data.chat.tool_call); [] when
    there is none. Raises BadToolCall naming what is wrong with the first malformed one."""
    calls = []
    for body in TOOL_CALL.findall(text):
        try:
            call = json.loads(body.strip())
        except json.JSONDecodeError as exc:
            raise BadToolCall(f"not JSON ({exc.msg}): {body.strip()[:80]!r}") from None
        try:
            calls.append(chat.tool_call(call))
        except BadToolCall:
            raise
    return calls


def run_call(call: dict, tools: dict[str, Callable]) -> str:
    """Run one parsed call; BadToolCall for an unknown tool or arguments the tool does not take. Whatever
    the tool itself raises becomes its result, `error: Type: message`, as a tool-calling runtime tells
    the model: the loop goes on, for every prompt."""
    name, arguments = call["function"]["name"], call["function"]["arguments"]
    if name not in tools:
        raise BadToolCall(f"unknown tool {name!r} (tools: {', '.join(tools)})")
    try:
        inspect.signature(tools[name]).bind(**arguments)
    except TypeError as exc:
        raise BadToolCall(f"{name}: {exc}") from None
    try:
        return str(tools[name](**arguments))
    except Exception as exc:  # a user's tool may raise anything; the error is its result
        return f"error: {type(exc).__name__}: {exc}"


@dataclasses.dataclass
class Transcript:
    """One prompt through the loop: the first generation, its calls and their results, the answer."""

    first: str
    calls: list[dict] = dataclasses.field(default_factory=list)
    results: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None  # a malformed call: shown, scored as a miss
    answer: str = ""

    @property
    def called(self) -> bool:
        return bool(self.calls) or self.error is not None

    def shown(self) -> str:
        """One line: each call and its result, then the answer ("weekday({...}) -> Friday -> Friday")."""
        if self.error is not None:
            return f"malformed call: {self.error}"
        steps = [
            f"{c['function']['name']}({json.dumps(c['function']['arguments'])}) -> {r}"
            for c, r in zip(self.calls, self.results, strict=True)
        ]
        return " -> ".join([*steps, self.answer]) if steps else f"(no call) {self.answer}"


def expected(call: dict | None, answer: str, tools: dict[str, Callable]) -> Transcript:
    """The transcript a perfect model writes: the expected call, the tool's result, the answer."""
    calls = [call] if call else []
    return Transcript(first="", calls=calls, results=[run_call(c, tools) for c in calls], answer=answer)


def run_loop(
    model,
    tokenizer,
    prompts: list[list[dict]],
    contexts: list[dict],
    tools: dict[str, Callable],
    label: str = "",
    **generate_kwargs,
) -> list[Transcript]:
    """Each prompt through one round of tool calls: prompts whose first generation calls tools get the
    results appended as `tool` messages and are generated again for the answer. Batched per round;
    `label` names the model in the progress lines."""
    from sftlib.inference.generate import generate

    firsts = generate(
        model, tokenizer, prompts, contexts=contexts, label=f"{label} first turns".strip(), **generate_kwargs
    )
    transcripts, follow = [], []
    for k, text in enumerate(firsts):
        t = Transcript(first=text)
        try:
            t.calls = parse_tool_calls(text)
            t.results = [run_call(c, tools) for c in t.calls]
        except BadToolCall as exc:
            t.error = str(exc)
        if t.calls and t.error is None:
            call_turn = {"role": "assistant", "content": "", "tool_calls": t.calls}
            results = [{"role": "tool", "content": r} for r in t.results]
            follow.append((k, [*prompts[k], call_turn, *results]))
        else:
            t.answer = "" if t.called else chat.answer(TOOL_CALL.sub("", text))
        transcripts.append(t)
    if follow:
        answers = generate(
            model,
            tokenizer,
            [m for _, m in follow],
            contexts=[contexts[k] for k, _ in follow],
            label=f"{label} answers after tool results".strip(),
            **generate_kwargs,
        )
        for (k, _), text in zip(follow, answers, strict=True):
            transcripts[k].answer = chat.answer(text)
    return transcripts


def score(
    transcripts: list[Transcript], expected_calls: list[dict | None], expected_answers: list[str]
) -> dict:
    """Fractions over the prompts that need a tool (`call_exact`: the one expected call, name and
    arguments exactly, after parsing; `answer_exact`: the final answer) and over those that need none
    (`no_tool_correct`: answered without a call; `no_tool_answer_exact`: without a call, and exactly
    the expected answer: a model that never calls a tool scores the first, not the second)."""
    tool = [(t, c, a) for t, c, a in zip(transcripts, expected_calls, expected_answers, strict=True) if c]
    plain = [(t, a) for t, c, a in zip(transcripts, expected_calls, expected_answers, strict=True) if not c]

    def exact_call(t: Transcript, call: dict) -> bool:
        return (
            t.error is None
            and len(t.calls) == 1
            and t.calls[0]["function"]
            == {
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
            }
        )

    return {
        "call_exact": sum(exact_call(t, c) for t, c, _ in tool) / len(tool) if tool else None,
        "answer_exact": sum(t.answer == a for t, _, a in tool) / len(tool) if tool else None,
        "no_tool_correct": sum(not t.called for t, _ in plain) / len(plain) if plain else None,
        "no_tool_answer_exact": sum(not t.called and t.answer == a for t, a in plain) / len(plain)
        if plain
        else None,
        "tool_prompts": len(tool),
        "no_tool_prompts": len(plain),
    }


@dataclasses.dataclass
class Cases:
    """Held-out tool chats as loop inputs: the prompt before the first assistant turn, its template
    arguments (tools included), the call expected there (None: the turn answers without one) and the
    final answer expected."""

    prompts: list[list[dict]]
    contexts: list[dict]
    calls: list[dict | None]
    answers: list[str]


def held_out_cases(cfg, limit: int | None = None) -> Cases:
    """The held-out rows that carry tools, of every source with an eval split, as loop Cases: read
    through the loader as training reads them, a row of each source in turn, up to `limit`."""
    from sftlib.data import loader
    from sftlib.errors import SftlibError

    per_source = []
    for source in loader.load(cfg):
        tool_rows = (row for row in loader.read_rows(source, "eval") if row.context and row.context["tools"])
        per_source.append(list(itertools.islice(tool_rows, limit)))
    cases = Cases([], [], [], [])
    for row in loader.take_turns(per_source, limit):
        messages = row.conversation.messages
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        cases.prompts.append(messages[:first])
        cases.contexts.append(row.context)
        cases.calls.append((messages[first].get("tool_calls") or [None])[0])
        cases.answers.append(chat.answer(messages[-1]["content"]))
    if not cases.prompts:
        raise SftlibError(
            "no held-out row carries tools, so there is no tool loop to run.",
            "give the dataset an eval split (dataset.eval_split or eval_size) whose rows have a `tools` column.",
        )
    return cases
