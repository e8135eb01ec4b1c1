"""Labels for one normalized example (-100 = not trained), for any chat template and tokenizer.

Assistant turn i of a conversation is trained on exactly what the model generates for it:

    P = render(messages[:i], add_generation_prompt=True)    # what the model is given at inference
    Q = render(messages[:i + 1])                            # ... followed by its answer
    trained = the tokens of Q after P, up to and including the first stop token

and the tokens before that span are `tokenizer(P)`, the prompt tokenized alone, as a server does.
Rendering passes the row's `tools` and chat-template arguments, so tool calls, tool results and
reasoning render as at inference. The stop tokens are the tokenizer's EOS plus the model's
`generation_config.eos_token_id` (`modeling.stop_token_ids`). No answer is ever located by
searching for its text, so think blocks, tool calls, channel headers (gpt-oss) and several end
tokens (cohere2) are trained where the template makes the model generate them, and nothing after
the stop token is (ChatML's "\\n" after `<|im_end|>`).

A conversation is one example when every turn sits in the full rendering as above. Otherwise it is
expanded (under `all_assistant`) into one example per assistant turn, `tokenizer(P_i)` followed by
the tokens of Q_i after P_i, and the reason is reported:
- the template renders earlier turns differently once later turns follow (Qwen3 drops earlier
  reasoning, gpt-oss earlier analysis);
- tokens merge differently in history: the answer starts with a character that BPE merges with the
  end of the generation prompt (`<think>\\n` + `\\n</think>`), so the model generates a split token that a
  later turn's prompt, tokenized alone, merges.

Some templates end P with a prefill that an answered turn lacks (DeepSeek-R1/V3's `<think>\\n`).
Then training starts where P and Q diverge, provided they diverge inside the generation prompt;
otherwise the row is dropped (`history_changes`). A template that ends the conversation with the
answer and nothing after it (GLM-4.5) gets the tokenizer's EOS appended. A field the template does
not render for a trained turn (reasoning, tool calls, tool results, tool schemas) drops the row as
`not_rendered`: it is never trained as if it were not there. String prompt/completion and plain
text follow TRL exactly. A row that can't be masked raises `DropExample(reason, detail)`;
`sftlib.dataset` counts the reasons per split.
"""

from __future__ import annotations

import dataclasses
import json
import os

from sftlib import chat, completions, conversations
from sftlib.conversations import DropExample
from sftlib.errors import SftlibError

IGNORE = completions.IGNORE

# Why a conversation became one example per turn (Tokens.expansion; dataset reports each).
RENDERS_HISTORY = "renders"
TOKENIZES_HISTORY = "tokenizes"
EXPANSIONS = {
    RENDERS_HISTORY: "the template renders history differently once later turns follow",
    TOKENIZES_HISTORY: "a turn's tokens merge differently in history than where the model generated them",
}


@dataclasses.dataclass(frozen=True)
class Turn:
    """One trained assistant turn: `text` is Q (the conversation rendered up to and including it),
    `start` the character where the model's generation begins in it, `prompt_ids` the tokens of
    Q[:start] tokenized alone (what a server feeds the model)."""

    message: int
    text: str
    start: int
    prompt_ids: tuple[int, ...]
    answer: str  # the message's answer text (after any reasoning block), stripped


@dataclasses.dataclass
class Tokens:
    """One training example: unshifted `labels`, -100 where not trained."""

    input_ids: list[int]
    labels: list[int]
    turns: list[int]  # message indices of the trained assistant turns
    expansion: str = ""  # one of several examples made from one conversation: a key of EXPANSIONS
    appended_eos: bool = False  # the template ended the conversation without a stop token
    boundary_merged: bool = False  # string prompt/completion: a token spans the boundary (as TRL warns)
    rendered: list[Turn] = dataclasses.field(
        default_factory=list, repr=False
    )  # the turns' P/Q, for the audit

    @property
    def expanded(self) -> bool:
        return bool(self.expansion)


def tokenize_example(
    example: dict, tokenizer, stop_ids=None, train_on: str = "all_assistant", template_kwargs=None
) -> tuple[list[Tokens], conversations.Conversation | None]:
    """A normalized example (sftlib.sources) -> ([Tokens, ...], the cleaned conversation or None).

    `stop_ids`: the model's stop token ids (default: the tokenizer's EOS). `template_kwargs`: the
    configured chat-template arguments (dataset.chat_template_kwargs); a row's own `tools` and
    `chat_template_kwargs` are added. A conversation gives one example, or one per trained turn (see
    the module docstring). Raises DropExample.
    """
    stop_ids = frozenset(stop_ids or [tokenizer.eos_token_id])
    if conversations.is_chat(example):
        conversation = conversations.conversation(example)
        turns = trained_turns(conversation, train_on)
        context = template_context(example, template_kwargs)
        examples = chat_tokens(conversation.messages, turns, tokenizer, stop_ids, train_on, context)
        return examples, conversation
    if "prompt" in example:
        ids, labels, merged = completions.prompt_completion_tokens(
            example["prompt"], example["completion"], tokenizer
        )
        return [Tokens(ids, labels, [], boundary_merged=merged)], None
    if "text" in example:
        ids, labels = completions.text_tokens(example["text"], tokenizer)
        return [Tokens(ids, labels, [])], None
    raise SftlibError(
        f"example has none of the canonical columns (messages, prompt/completion, text): {list(example)}."
    )


def template_context(example: dict, template_kwargs: dict | None = None) -> dict:
    """The keyword arguments a row is rendered with: its `tools`, the configured chat-template
    arguments, then the row's own `chat_template_kwargs` (as TRL passes them)."""
    tools, row_kwargs = example.get("tools") or None, example.get("chat_template_kwargs") or {}
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise DropExample(
            "bad_tool_call", f"the row's tools are not a list of JSON schemas: {str(tools)[:80]!r}"
        )
    if not isinstance(row_kwargs, dict):
        raise DropExample(
            "template_error", f"the row's chat_template_kwargs are not a mapping: {row_kwargs!r}"
        )
    return {"tools": tools, **(template_kwargs or {}), **row_kwargs}


def trained_turns(conversation: conversations.Conversation, train_on: str) -> list[int]:
    turns = [
        i
        for i, m in enumerate(conversation.messages)
        if m["role"] == chat.TRAINED_ROLE and i >= conversation.first_trainable
    ]
    if train_on == "last_assistant":
        return turns[-1:]
    if train_on != "all_assistant":
        raise SftlibError(f"dataset.train_on={train_on!r} is not one of all_assistant, last_assistant.")
    return turns


# --------------------------------------------------------------------------- conversations


def render(
    tokenizer, messages: list[dict], generation_prompt: bool = False, context: dict | None = None
) -> str:
    """The chat template's text; a template that raises on this row drops it (`template_error`)."""
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **(context or {})
        )
    except Exception as exc:  # jinja's TemplateError, raise_exception(...), a missing key: the row's shape
        raise DropExample("template_error", f"{type(exc).__name__}: {exc}") from None


def prompt_ids(tokenizer, text: str) -> tuple[int, ...]:
    """`text` tokenized alone, as a server tokenizes a rendered prompt (the template wrote the specials)."""
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def generation_turn(
    messages: list[dict], i: int, tokenizer, context: dict | None = None, stops: tuple[str, ...] = ()
) -> Turn:
    """Q for assistant turn `i`, and where the model's generation starts in it (see module docstring);
    `stops`: the stop tokens' texts, for the check that every field of the turn is generated."""
    prompt = render(tokenizer, messages[:i], True, context)
    answered = render(tokenizer, messages[: i + 1], False, context)
    answer = chat.answer(messages[i].get("content") or "")
    if answered.startswith(prompt):
        start = len(prompt)
    else:
        start = len(os.path.commonprefix([prompt, answered]))
        history = len(os.path.commonprefix([render(tokenizer, messages[:i], False, context), prompt]))
        if start < history:  # they differ before the generation prompt: the turn changes its own history
            raise DropExample(
                "history_changes",
                f"assistant turn {i}: the conversation renders differently before its generation prompt once "
                f"the turn is answered; with the prompt: {_around(prompt, start)}; answered: "
                f"{_around(answered, start)}. Fix: choose another template (model.chat_template); or, when "
                "this is not the conversation's last assistant turn, train only that one (dataset.train_on: "
                "last_assistant).",
            )
    turn = Turn(i, answered, start, prompt_ids(tokenizer, answered[:start]), answer)
    check_rendered(messages, turn, prompt, context, stops)
    return turn


def check_rendered(
    messages: list[dict], turn: Turn, prompt: str, context: dict | None, stops: tuple[str, ...] = ()
) -> None:
    """Drop the row (`not_rendered`) when the template leaves out a field of this turn or its prompt:
    the answer, reasoning or tool calls of the trained turn (looked for in what the model generates,
    up to the first of `stops`: what comes after a stop token is never generated, so never trained),
    the tool results before it, or the tool schemas. A field the template drops is never trained as
    if the row did not have it."""
    message, generated = messages[turn.message], turn.text[turn.start :]
    ends = [generated.find(s) + len(s) for s in stops if s and s in generated]
    generated = generated[: min(ends)] if ends else generated
    missing = []
    found = chat.reasoning(message)
    if found and found[1].strip() not in generated:
        missing.append(f"{found[0]} of assistant turn {turn.message}")
    if turn.answer and turn.answer not in generated:
        missing.append(f"the content of assistant turn {turn.message}")
    calls = message.get("tool_calls") or []
    for call in calls:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        same = sum(c["function"]["name"] == name for c in calls)
        if generated.count(name) < same or not all(
            _shown(k, generated) and _shown(v, generated) for k, v in arguments.items()
        ):
            missing.append(f"tool call {name!r} of assistant turn {turn.message}")
            break
    for k, m in enumerate(messages[: turn.message]):
        if m["role"] in chat.TOOL_ROLES and not _shown((m.get("content") or "").strip(), prompt):
            missing.append(f"the {m['role']} result in message {k}")
            break
    tools = (context or {}).get("tools")
    absent = [name for name in chat.tool_names(tools) if name not in prompt]
    if absent:
        missing.append(f"the tool schema(s) {', '.join(absent)} (the `tools` column)")
    if missing:
        raise DropExample(
            "not_rendered",
            f"the chat template does not render {'; '.join(missing)}, so the model would be trained as if "
            "the row did not hold it. Fix: a template that renders it (model.chat_template), e.g. qwen3 for "
            "reasoning_content and tool calls, or remove the field from the data.",
        )


def _shown(value, text: str) -> bool:
    """Whether a scalar `value` appears in `text` as written or as JSON (a template's `tojson` escapes
    quotes in a string); containers are checked through their parts by the caller, not here."""
    if isinstance(value, (dict, list)):
        return True
    if not isinstance(value, str):
        return json.dumps(value) in text or str(value) in text
    return any(
        form in text for form in (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1])
    )


def chat_tokens(
    messages,
    turns: list[int],
    tokenizer,
    stop_ids: frozenset[int],
    train_on: str,
    context: dict | None = None,
) -> list[Tokens]:
    if not getattr(tokenizer, "is_fast", False):
        raise SftlibError("masking conversations needs a fast tokenizer (for character offsets).")
    stops = tuple(tokenizer.convert_ids_to_tokens(sorted(stop_ids)))
    rendered = [generation_turn(messages, i, tokenizer, context, stops) for i in turns]
    # Q of a conversation's final turn is the whole conversation: no need to render it again.
    full = (
        rendered[-1].text if turns[-1] == len(messages) - 1 else render(tokenizer, messages, False, context)
    )
    try:
        one, why = single_example(full, rendered, tokenizer, stop_ids)
    except DropExample:
        if len(turns) < 2:
            raise
        one, why = None, RENDERS_HISTORY  # a later turn's rendering moves an earlier turn's stop token
    if one is not None:
        return [one]
    # One example per turn. (`last_assistant` trains one turn, which is then one example as it is.)
    expansion = why if len(turns) > 1 else ""
    return [turn_example(turn, tokenizer, stop_ids, expansion) for turn in rendered]


def single_example(full: str, rendered: list[Turn], tokenizer, stop_ids) -> tuple[Tokens | None, str]:
    """The conversation as one example, or (None, the EXPANSIONS key saying why it can't be one).

    One example holds when each turn's rendering up to its stop token is where the full conversation
    has it, and the tokens before each trained span are that turn's prompt tokenized alone.
    """
    ids, offsets = tokenize_at(full, [t.start for t in rendered], tokenizer)
    labels, spans, appended = label_spans(ids, offsets, full, rendered, tokenizer, stop_ids)
    for turn, (k, stop) in zip(rendered, spans, strict=True):
        end = min(offsets[stop][1], len(turn.text))
        if not full.startswith(turn.text[:end]):
            return None, RENDERS_HISTORY
        if tuple(ids[:k]) != turn.prompt_ids:
            return None, TOKENIZES_HISTORY
    turns = [t.message for t in rendered]
    return Tokens(ids, labels, turns, appended_eos=appended, rendered=rendered), ""


def turn_example(turn: Turn, tokenizer, stop_ids, expansion: str) -> Tokens:
    """Turn `turn` alone: its prompt tokenized alone, then the tokens of Q after it, by construction."""
    enc = tokenizer(turn.text[turn.start :], add_special_tokens=False, return_offsets_mapping=True)
    k = len(turn.prompt_ids)
    ids = [*turn.prompt_ids, *enc["input_ids"]]
    offsets = [(0, turn.start)] * k + [(a + turn.start, b + turn.start) for a, b in enc["offset_mapping"]]
    labels, _, appended = label_spans(ids, offsets, turn.text, [turn], tokenizer, stop_ids, starts=[k])
    return Tokens(ids, labels, [turn.message], expansion=expansion, appended_eos=appended, rendered=[turn])


def label_spans(ids, offsets, text: str, turns: list[Turn], tokenizer, stop_ids, starts=None):
    """Train each turn from its first token up to and including the first stop token.

    `starts`: each turn's first token (default: the token that begins at its start character).
    Returns (labels, [(first token, stop token)] per turn, whether EOS was appended); appending grows
    `ids` and `offsets`. The stop token must start inside the turn's own rendering Q or right after
    it (GLM-4.5's next turn opens with its stop token `<|user|>`). If the text ends with the answer
    and no stop token follows, EOS is appended.
    """
    if starts is None:
        first = {}
        for k, (a, _) in enumerate(offsets):
            first.setdefault(a, k)
        starts = [first[t.start] for t in turns]
    labels, spans, appended = [IGNORE] * len(ids), [], False
    for turn, k in zip(turns, starts, strict=True):
        stop = next((j for j in range(k, len(ids)) if ids[j] in stop_ids), None)
        if stop is not None and offsets[stop][0] > len(turn.text):
            stop = None  # a later turn's stop token
        if stop is None:
            stop = _append_eos(text, turn, tokenizer, stop_ids, ids)
            offsets.append((len(text), len(text)))
            labels.append(IGNORE)
            appended = True
        labels[k : stop + 1] = ids[k : stop + 1]
        spans.append((k, stop))
    return labels, spans, appended


def tokenize_at(text: str, cuts: list[int], tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """(input_ids, character offsets) of `text`, with a token boundary at every cut.

    The whole text is tokenized once. Where one token would span a cut (the prompt ends with "\n"
    and the answer starts with one, and BPE merges them), the pieces between cuts are tokenized
    separately, as at inference: the prompt is tokenized alone and the model generates from there.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if not any(a < cut < b for cut in cuts for a, b in offsets):
        return ids, offsets
    ids, offsets = [], []
    bounds = [0, *sorted(set(cuts)), len(text)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi > lo:
            piece = tokenizer(text[lo:hi], add_special_tokens=False, return_offsets_mapping=True)
            ids += piece["input_ids"]
            offsets += [(a + lo, b + lo) for a, b in piece["offset_mapping"]]
    return ids, offsets


def _append_eos(text: str, turn: Turn, tokenizer, stop_ids, ids: list[int]) -> int:
    """Append EOS after a final answer that the template leaves unterminated; else say what is wrong."""
    tail = turn.text[turn.start :]
    ends_conversation = len(turn.text) == len(text)
    if ends_conversation and tokenizer.eos_token_id is not None and tail.rstrip().endswith(turn.answer):
        # Nothing but whitespace after the answer: at inference the model stops with a stop token here.
        ids.append(tokenizer.eos_token_id)
        return len(ids) - 1
    names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(stop_ids))
    end = tail.rstrip()[-30:]
    raise DropExample(
        "no_stop_token",
        f"assistant turn {turn.message} renders as ...{end!r} and none of the stop tokens ({names}) follows it. "
        "If the template ends turns with a marker string, that string is not a stop token of this tokenizer and "
        "model (generation_config.eos_token_id), so a model trained on it would not learn to stop. "
        "Fix: use the template that belongs to this model (model.chat_template), or a model whose tokenizer "
        "has that marker as a special stop token.",
    )


def _around(text: str, pos: int, width: int = 40) -> str:
    return repr(f"...{text[max(0, pos - width) : pos]}⟨here⟩{text[pos : pos + width]}...")


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[(start, end)] of each maximal run of trained positions."""
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = k
        elif label == IGNORE and start is not None:
            runs.append((start, k))
            start = None
    return runs
