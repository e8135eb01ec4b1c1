"""Phase one of masking a conversation: render what the model is given and what it generates, per turn.

For assistant turn i (see sftlib.data.masking for the rule this serves):

    P = render(messages[:i], add_generation_prompt=True)    # what the model is given at inference
    Q = render(messages[:i + 1])                            # ... followed by its answer

Rendering passes the row's `tools` and chat-template arguments, so tool calls, tool results and
reasoning render as at inference. A field the template leaves out of a trained turn or its prompt
(reasoning, tool calls, tool results, tool schemas) drops the row as `not_rendered`: it is never
trained as if it were not there. No tokens are made here: sftlib.data.masking tokenizes the renderings of a
whole batch of rows in one call.
"""

from __future__ import annotations

import dataclasses
import json
import os

from sftlib.data import chat, conversations
from sftlib.errors import DropExample, SftlibError


@dataclasses.dataclass(frozen=True)
class Turn:
    """One trained assistant turn: `text` is Q (the conversation rendered up to and including it),
    `start` the character where the model's generation begins in it, `prompt_ids` the tokens of
    Q[:start] tokenized alone (what a server feeds the model; sftlib.data.masking fills them in)."""

    message: int
    text: str
    start: int
    answer: str  # the message's answer text (after any reasoning block), stripped
    prompt_ids: tuple[int, ...] | None = None

    @property
    def prompt(self) -> str:
        return self.text[: self.start]


@dataclasses.dataclass(frozen=True)
class Rendering:
    """A conversation's trained turns rendered, and the whole conversation (`full`)."""

    conversation: conversations.Conversation
    turns: list[Turn]
    full: str

    def texts(self) -> list[str]:
        """What masking tokenizes: each turn's prompt alone, and the whole conversation."""
        return [t.prompt for t in self.turns] + [self.full]


def render_chat(
    example: dict, tokenizer, stops: tuple[str, ...], train_on: str, template_kwargs: dict | None = None
) -> Rendering:
    """The trained turns' Q and generation starts, each checked for fields the template leaves out.

    `stops`: the stop tokens' texts. Raises DropExample.
    """
    conversation = conversations.conversation(example)
    conversation = dataclasses.replace(
        conversation, messages=as_template_reads(tokenizer, conversation.messages)
    )
    messages, turns = conversation.messages, trained_turns(conversation, train_on)
    context = template_context(example, template_kwargs)
    rendered = [render_turn(messages, i, tokenizer, context, stops) for i in turns]
    # Q of a conversation's final turn is the whole conversation: no need to render it again.
    ends = turns[-1] == len(messages) - 1
    full = rendered[-1].text if ends else render(tokenizer, messages, False, context)
    return Rendering(conversation, rendered, full)


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
    """The assistant turns `train_on` selects, less those the data holds back (weight 0, train false).
    None left: the row is dropped (`all_turns_held_back`)."""
    turns = [
        i
        for i, m in enumerate(conversation.messages)
        if m["role"] == chat.TRAINED_ROLE and i >= conversation.first_trainable
    ]
    if train_on == "last_assistant":
        turns = turns[-1:]
    elif train_on != "all_assistant":
        raise SftlibError(f"dataset.train_on={train_on!r} is not one of all_assistant, last_assistant.")
    kept = [i for i in turns if i not in conversation.held_back]
    if not kept:
        raise DropExample("all_turns_held_back", f"assistant turn {turns[-1]} is marked not to train")
    return kept


def render(
    tokenizer, messages: list[dict], generation_prompt: bool = False, context: dict | None = None
) -> str:
    """The chat template's text; a template that raises on this row drops it (`template_error`). Text
    parts are passed as the template reads them (`as_template_reads`)."""
    messages = as_template_reads(tokenizer, messages)
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **(context or {})
        )
    except Exception as exc:  # jinja's TemplateError, raise_exception(...), a missing key: the row's shape
        raise DropExample("template_error", f"{type(exc).__name__}: {exc}") from None


PART_PROBE = "sftlib part probe"
_READS_PARTS: dict[tuple[str, str], bool] = {}


def reads_parts(tokenizer, role: str) -> bool:
    """Whether the chat template renders a `role` message's list of text parts as its text (it iterates
    them, as Qwen3.5 and Gemma do), rather than printing the list, dropping it or raising (templates
    that expect a string). Found by rendering a probe, once per template and role."""
    key = (tokenizer.chat_template, role)
    if key not in _READS_PARTS:
        parts = [{"type": "text", "text": PART_PROBE}]
        call = {"id": "sftprobe1", "type": "function", "function": {"name": "probe", "arguments": {}}}
        before = {
            "system": [],
            "user": [],
            "assistant": [{"role": "user", "content": "u"}],
            "tool": [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
            ],
        }.get(role, [{"role": "user", "content": "u"}])
        after = [] if role == "assistant" else [{"role": "assistant", "content": "a"}]
        if role == "system":
            after = [{"role": "user", "content": "u"}, *after]
        messages = [*before, {"role": role, "content": parts, "tool_call_id": "sftprobe1"}, *after]
        tools = [
            {"type": "function", "function": {"name": "probe", "description": "A probe.", "parameters": {}}}
        ]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, tools=tools)
        except Exception:  # the template refuses a list: it reads strings
            text = ""
        _READS_PARTS[key] = PART_PROBE in text and "'type'" not in text and '"type": "text"' not in text
    return _READS_PARTS[key]


def as_template_reads(tokenizer, messages: list[dict]) -> list[dict]:
    """`messages` with each list of text parts as the template reads it: kept where the template
    iterates parts, joined into one string (chat.PART_SEPARATOR, as vLLM serves such templates) where
    it expects a string."""
    if not any(isinstance(m.get("content"), list) for m in messages):
        return messages
    return [
        {**m, "content": chat.content_text(m["content"])}
        if isinstance(m.get("content"), list) and not reads_parts(tokenizer, m["role"])
        else m
        for m in messages
    ]


def render_turn(
    messages: list[dict], i: int, tokenizer, context: dict | None = None, stops: tuple[str, ...] = ()
) -> Turn:
    """Q for assistant turn `i`, and where the model's generation starts in it (see module docstring);
    `stops`: the stop tokens' texts, for the check that every field of the turn is generated."""
    prompt = render(tokenizer, messages[:i], True, context)
    answered = render(tokenizer, messages[: i + 1], False, context)
    answer = chat.answer(chat.final_text(messages[i].get("content")))
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
    turn = Turn(i, answered, start, answer)
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
    pieces = [turn.answer, *(p.strip() for p in chat.part_texts(message.get("content") or "")[:-1])]
    if any(p and p not in generated for p in pieces):
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
        if m["role"] in chat.TOOL_ROLES and not all(
            _shown(p.strip(), prompt) for p in chat.part_texts(m.get("content") or "")
        ):
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
    """Whether `value` appears in `text`: a scalar as written or as JSON (a template's `tojson` escapes
    quotes in a string); a mapping or a list leaf by leaf, keys included, at any depth."""
    if isinstance(value, dict):
        return all(_shown(k, text) and _shown(v, text) for k, v in value.items())
    if isinstance(value, list):
        return all(_shown(v, text) for v in value)
    if not isinstance(value, str):
        return json.dumps(value) in text or str(value) in text
    return any(
        form in text for form in (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1])
    )


def _around(text: str, pos: int, width: int = 40) -> str:
    return repr(f"...{text[max(0, pos - width) : pos]}⟨here⟩{text[pos : pos + width]}...")
