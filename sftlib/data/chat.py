"""Chat messages as templates read them: roles, reasoning fields, tool calls, and an assistant turn's answer.

The lowest layer of the data path, with no ML imports: `sources` normalizes rows into these shapes,
`masking` checks that a template renders them, `scoring` and `generate` read answers and tool calls.
"""

from __future__ import annotations

import json
from typing import Any

from sftlib.errors import BadToolCall

# Roles a conversation may hold. Only assistant turns are trained; tool results (`tool`, Llama 3.1's
# `ipython`, the older OpenAI `function`) are prompt turns, like user and system turns.
TRAINED_ROLE = "assistant"
TOOL_ROLES = ("tool", "ipython", "function")
ROLES = ("system", "user", TRAINED_ROLE, *TOOL_ROLES)

# Where datasets and templates keep an assistant turn's reasoning: Qwen3, DeepSeek and Nemotron read
# `reasoning_content`, gpt-oss reads `thinking`, some exports write `reasoning`.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


# OpenAI's chat-completions shape may write `content` as a list of parts; these carry text.
TEXT_PART_TYPES = ("text", "input_text", "output_text")
# What a template joins text parts with when it reads only strings: as vLLM serves such templates.
PART_SEPARATOR = "\n"
# Per-message flags that say whether an assistant turn is trained (axolotl, LLaMA-Factory): weight 0/1,
# train false/true.
TRAIN_FLAGS = ("weight", "train")


def part_texts(content: str | list) -> list[str]:
    """The texts of a content: the string itself, or each text part's text."""
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content if p.get("type") in TEXT_PART_TYPES]


def final_text(content: str | list | None) -> str:
    """The text a content ends with (its last text part): what holds a turn's answer."""
    texts = part_texts(content or "")
    return texts[-1] if texts else ""


def content_text(content: str | list) -> str:
    """A content as one string: a string as it is, text parts joined as a string-only template gets them."""
    return PART_SEPARATOR.join(part_texts(content))


def answer(text: str) -> str:
    """What is scored: the text after a reasoning block (`<think>...</think>`), stripped. A reasoning
    model's thoughts are not its answer; exact match and F1 compare answers."""
    return text.rsplit("</think>", 1)[-1].strip()


def drop_none(value: Any) -> Any:
    """`value` without None entries in its mappings, recursively.

    Arrow stores rows of one column with one schema, so a key present in some rows is null in the
    others (`tool_calls: None` on a plain turn, `description: None` in a tool schema). A template
    reads such a key as present; without the nulls it sees the row as it was written.
    """
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def tool_call(call: Any) -> dict:
    """One tool call in the OpenAI shape templates expect: {"type": "function", "function": {"name",
    "arguments": mapping}}, from that shape or a flat {"name", "arguments"}. Arguments given as a JSON
    string are parsed; anything else raises BadToolCall."""
    if not isinstance(call, dict):
        raise BadToolCall(f"a tool call is {type(call).__name__}, not a mapping")
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadToolCall(f"a tool call has no function name: {json.dumps(call)[:120]}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise BadToolCall(
                f"arguments of {function['name']} are not JSON ({exc.msg}): {arguments[:80]!r}"
            ) from None
    if not isinstance(arguments, dict):
        raise BadToolCall(f"arguments of {function['name']} are {type(arguments).__name__}, not a mapping")
    out = {k: v for k, v in call.items() if k != "function" and k not in ("name", "arguments")}
    return {"type": "function", **out, "function": {**function, "arguments": arguments}}


def tool_names(tools: list | None) -> list[str]:
    """The function names a `tools` list (JSON schemas, OpenAI shape or flat) declares."""
    names = []
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def reasoning(message: dict) -> tuple[str, str] | None:
    """(key, text) of the message's non-empty reasoning field, if it has one."""
    for key in REASONING_KEYS:
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            return key, value
    return None
