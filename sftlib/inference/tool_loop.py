"""The tool loop at inference, and its score: generate, parse the tool calls, run the Python tools,
append the call turn and each result as a `tool` message, generate again, until the model answers
without a call or `max_rounds` rounds of calls are spent.

Calls are read in the format the chat template writes them (sftlib.inference.tool_formats), from the
generated text with its special tokens. Whatever the model writes, a malformed call (unreadable, no
name, an unknown tool, arguments the tool does not take) is kept in the transcript with its error and
scored as a miss; whatever a tool raises becomes its result, `error: Type: message`. A generation cut
off by `max_new_tokens` is reported as cut off, not as malformed. Neither stops the loop for the other
prompts.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import json
from collections.abc import Callable

from sftlib.data import chat
from sftlib.errors import BadToolCall
from sftlib.inference.generate import Generation
from sftlib.inference.tool_formats import ToolFormat, schemas_of

# Generates one turn for each chat (messages so far) with its template context; the label names the
# round in progress lines. ToolLoop builds it from a model (`model_generator`); tests pass their own.
Generator = Callable[[list[list[dict]], list[dict | None], str], list[Generation]]


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
class Round:
    """One round of calls: what the model wrote, the calls read from it, and each call's result."""

    raw: str
    calls: list[dict]
    results: list[str]


@dataclasses.dataclass
class Transcript:
    """One prompt through the loop: its rounds of calls, then the answer; or where it stopped.

    `error`: a malformed call (shown, scored as a miss); `cut_off`: a generation hit `max_new_tokens`
    (an unfinished call, or the answer's tail missing); `unfinished`: still calling after `max_rounds`.
    `messages`: the whole chat as the loop built it, prompt included."""

    rounds: list[Round] = dataclasses.field(default_factory=list)
    answer: str = ""
    error: str | None = None
    cut_off: bool = False
    unfinished: bool = False
    messages: list[dict] = dataclasses.field(default_factory=list)

    @property
    def called(self) -> bool:
        return bool(self.rounds) or self.error is not None

    def calls(self) -> list[list[dict]]:
        """The calls of each round, as (name, arguments) mappings."""
        return [[_signature(c) for c in r.calls] for r in self.rounds]

    def shown(self) -> str:
        """One line: each round's calls and results, then the answer ("weekday({...}) -> Friday -> Friday")."""
        steps = [
            "; ".join(f"{shown_call(c)} -> {r}" for c, r in zip(rnd.calls, rnd.results, strict=True))
            for rnd in self.rounds
        ]
        if self.error is not None:
            steps.append(f"malformed call: {self.error}")
        elif self.cut_off and not self.answer:
            steps.append("cut off at max_new_tokens")
        elif self.unfinished:
            steps.append(f"still calling after {len(self.rounds)} rounds")
        else:
            steps.append(self.answer + (" (cut off at max_new_tokens)" if self.cut_off else ""))
        if self.rounds or self.error is not None or (self.cut_off and not self.answer):
            return " -> ".join(steps)
        return f"(no call) {steps[0]}"


def shown_call(call: dict) -> str:
    """A call as one line: `weekday({"date": "2021-03-05"})`."""
    return f"{call['function']['name']}({json.dumps(call['function']['arguments'])})"


def _signature(call: dict) -> dict:
    return {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}


def expected(rounds: list[list[dict]], answer: str, tools: dict[str, Callable]) -> Transcript:
    """The transcript a perfect model writes: the expected rounds of calls, their results, the answer."""
    done = [Round("", calls, [run_call(c, tools) for c in calls]) for calls in rounds]
    return Transcript(rounds=done, answer=answer)


def without_specials(text: str, specials: tuple[str, ...]) -> str:
    """`text` without the tokenizer's special tokens."""
    for token in sorted(specials, key=len, reverse=True):
        text = text.replace(token, "")
    return text


def visible(text: str, specials: tuple[str, ...]) -> str:
    """`text` without the tokenizer's special tokens, stripped."""
    return without_specials(text, specials).strip()


def run_loop(
    prompts: list[list[dict]],
    contexts: list[dict | None],
    tools: dict[str, Callable],
    fmt: ToolFormat,
    generator: Generator,
    specials: tuple[str, ...] = (),
    max_rounds: int = 3,
    label: str = "",
) -> list[Transcript]:
    """Each prompt through the loop, all prompts of a round in one `generator` call. A round whose
    generation holds calls appends the assistant turn (its text beside the calls as content, the calls
    as `tool_calls`) and one `tool` message per call, in order, with the call's `tool_call_id` when the
    call has an id; the chat is then generated again. A generation without a call is the answer.
    `specials`: the tokenizer's special tokens, removed from answers."""
    transcripts = [Transcript(messages=list(p)) for p in prompts]
    active = list(range(len(prompts)))
    for number in itertools.count(1):
        if not active:
            break
        step = "first turns" if number == 1 else f"round {number}"
        made = generator(
            [transcripts[k].messages for k in active],
            [contexts[k] for k in active],
            f"{label} {step}".strip(),
        )
        going = []
        for k, generation in zip(active, made, strict=True):
            if _step(
                transcripts[k], generation, fmt, tools, specials, schemas_of((contexts[k] or {}).get("tools"))
            ):
                going.append(k)
        active = []
        for k in going:
            if len(transcripts[k].rounds) >= max_rounds:
                transcripts[k].unfinished = True
            else:
                active.append(k)
    return transcripts


def _step(t: Transcript, g: Generation, fmt: ToolFormat, tools, specials, schemas) -> bool:
    """Read one generation into `t`; True when it called tools and the chat goes on."""
    try:
        calls = fmt.calls(g.raw, schemas)
    except BadToolCall as exc:
        t.cut_off, t.error = g.cut_off, None if g.cut_off else str(exc)
        return False
    content = visible(fmt.outside(g.raw), specials)
    if not calls:
        t.answer, t.cut_off = chat.answer(content), g.cut_off
        t.messages.append({"role": "assistant", "content": content})
        return False
    if g.cut_off:  # more calls may have followed: none is run
        t.cut_off = True
        return False
    try:
        results = [run_call(c, tools) for c in calls]
    except BadToolCall as exc:
        t.error = str(exc)
        return False
    t.rounds.append(Round(g.raw, calls, results))
    t.messages.append({"role": "assistant", "content": content, "tool_calls": calls})
    for call, result in zip(calls, results, strict=True):
        message = {"role": "tool", "name": call["function"]["name"], "content": result}
        t.messages.append({**message, "tool_call_id": call["id"]} if call.get("id") else message)
    return True


def model_generator(model, tokenizer, max_new_tokens: int, batch_size: int) -> Generator:
    """A Generator over a model: greedy, through the chat template, as `generate` renders prompts."""
    from sftlib.inference import generate

    def generator(chats: list[list[dict]], contexts: list[dict | None], label: str) -> list[Generation]:
        return generate.generations(
            model, tokenizer, chats, max_new_tokens, batch_size, contexts=contexts, label=label
        )

    return generator


def special_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special tokens (its named ones and added tokens marked special)."""
    added = (t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return tuple({*tokenizer.all_special_tokens, *added})


def score(
    transcripts: list[Transcript], expected_rounds: list[list[list[dict]]], expected_answers: list[str]
) -> dict:
    """Fractions over the prompts that need a tool (`call_exact`: every round's calls, name and
    arguments, as the expected ones: a round's parallel calls as a set, the rounds in order;
    `answer_exact`: the final answer) and over those that need none (`no_tool_correct`: answered
    without a call; `no_tool_answer_exact`: without a call, and exactly the expected answer: a model
    that never calls a tool scores the first, not the second). Counts: `malformed` calls, generations
    `cut_off` by max_new_tokens, `unfinished` loops (still calling after max_rounds)."""
    cases = list(zip(transcripts, expected_rounds, expected_answers, strict=True))
    tool = [(t, r, a) for t, r, a in cases if r]
    plain = [(t, a) for t, r, a in cases if not r]

    def as_sets(rounds: list[list[dict]]) -> list[collections.Counter]:
        return [
            collections.Counter(json.dumps(_signature(c), sort_keys=True) for c in calls) for calls in rounds
        ]

    def exact_calls(t: Transcript, rounds: list[list[dict]]) -> bool:
        finished = t.error is None and not t.unfinished and not (t.cut_off and not t.answer)
        return finished and as_sets([r.calls for r in t.rounds]) == as_sets(rounds)

    def fraction(hits: list[bool]) -> float | None:
        return sum(hits) / len(hits) if hits else None

    return {
        "call_exact": fraction([exact_calls(t, r) for t, r, _ in tool]),
        "answer_exact": fraction([t.answer == a for t, _, a in tool]),
        "no_tool_correct": fraction([not t.called for t, _ in plain]),
        "no_tool_answer_exact": fraction([not t.called and t.answer == a for t, a in plain]),
        "tool_prompts": len(tool),
        "no_tool_prompts": len(plain),
        "malformed": sum(t.error is not None for t in transcripts),
        "cut_off": sum(t.cut_off for t in transcripts),
        "unfinished": sum(t.unfinished for t in transcripts),
    }


@dataclasses.dataclass
class Cases:
    """Held-out tool chats as loop inputs: the prompt before the first assistant turn, its template
    arguments (tools included), the rounds of calls expected from there (each round's calls; [] when
    the turn answers without one) and the final answer expected."""

    prompts: list[list[dict]]
    contexts: list[dict]
    rounds: list[list[list[dict]]]
    answers: list[str]


def expected_rounds(messages: list[dict], first: int) -> tuple[list[list[dict]], str]:
    """From assistant turn `first` on: the calls of each turn that calls tools, up to the first
    assistant turn without calls, whose answer is the final one."""
    rounds = []
    for message in messages[first:]:
        if message["role"] != "assistant":
            continue
        if not message.get("tool_calls"):
            return rounds, chat.answer(chat.final_text(message.get("content")))
        rounds.append([chat.tool_call(c) for c in message["tool_calls"]])
    return rounds, ""


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
        rounds, answer = expected_rounds(messages, first)
        cases.prompts.append(messages[:first])
        cases.contexts.append(row.context)
        cases.rounds.append(rounds)
        cases.answers.append(answer)
    if not cases.prompts:
        raise SftlibError(
            "no held-out row carries tools, so there is no tool loop to run.",
            "give the dataset an eval split (dataset.eval_split or eval_size) whose rows have a `tools` column.",
        )
    return cases
