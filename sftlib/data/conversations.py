"""Checked conversations: roles, order and tool calls; a row that breaks them is dropped with its reason.

`conversation(example)` turns a normalized row's messages (sftlib.data.sources) into a `Conversation`,
trimmed of what nothing trains (leading assistant turns, trailing user turns and tool results) and
with tool-call arguments parsed, or raises `DropExample(reason, detail)` with a key of DROP_REASONS.
Masking calls it when it tokenizes a row, so a bad row is a counted drop, never a crash.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sftlib.data import chat
from sftlib.errors import BadToolCall, DropExample


def is_chat(example: dict) -> bool:
    """Whether a normalized example is a conversation (needs a chat template)."""
    return "messages" in example or isinstance(example.get("prompt"), list)


CARRIED = ("tools", "tool_calls", "tool_results", "reasoning")


def carried(example: dict) -> list[str]:
    """Which of CARRIED a normalized example holds: a `tools` list, an assistant turn with tool
    calls, a tool result (a tool/ipython/function turn), an assistant turn's reasoning field."""
    turns = [t for key in ("messages", "prompt", "completion") for t in _turns(example.get(key))]
    found = {
        "tools": bool(example.get("tools")),
        "tool_calls": any(t.get("tool_calls") for t in turns),
        "tool_results": any(t.get("role") in chat.TOOL_ROLES for t in turns),
        "reasoning": any(t.get("role") == chat.TRAINED_ROLE and chat.reasoning(t) for t in turns),
    }
    return [kind for kind in CARRIED if found[kind]]


def _turns(value: Any) -> list[dict]:
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []


# --------------------------------------------------------------------------- rows that can't be trained

ROLES = chat.ROLES


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A checked conversation: `first_trainable` is the first message that may be trained (prompt/completion:
    the first completion message); `leading` / `trailing` count the assistant turns trimmed from the start
    (nothing prompted them) and the user turns trimmed from the end (nothing answers them)."""

    messages: list[dict]
    first_trainable: int = 0
    leading: int = 0
    trailing: int = 0


def conversation(example: dict) -> Conversation:
    """The example's messages, checked and trimmed; raises DropExample."""
    if "messages" in example:
        messages, first = list(example["messages"] or []), 0
    else:
        prompt, completion = example["prompt"] or [], example["completion"] or []
        if not completion:
            raise DropExample("empty_completion")
        messages, first = list(prompt) + list(completion), len(prompt)
    if not messages:
        raise DropExample("empty_conversation")
    messages = [_checked(m) for m in messages]
    system = 1 if messages[0]["role"] == "system" else 0
    leading = 0
    while first == 0 and len(messages) > system and messages[system]["role"] == "assistant":
        messages = messages[:system] + messages[system + 1 :]  # scraped dumps often open with the bot
        leading += 1
    trailing = 0
    while messages and messages[-1]["role"] != "assistant" and len(messages) > first:
        if messages[-1]["role"] == "system":
            break
        messages, trailing = messages[:-1], trailing + 1  # user turns or tool results nothing answers
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise DropExample("misplaced_system")
    if "assistant" not in roles[first:]:
        raise DropExample("empty_completion" if first else "no_assistant_turn")
    if any(a == b and a not in chat.TOOL_ROLES for a, b in zip(roles, roles[1:], strict=False)):
        raise DropExample("repeated_role")
    if any(
        m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls")
        for m in messages[first:]
    ):
        raise DropExample("empty_completion" if first else "empty_assistant_turn")
    return Conversation(messages, first, leading, trailing)


def _checked(message: dict) -> dict:
    """A message with a known role and string content, its tool calls in the templates' shape."""
    if not isinstance(message.get("content"), str):
        raise DropExample("non_string_content")
    if message.get("role") not in ROLES:
        raise DropExample("unknown_role", f"role {message.get('role')!r}")
    calls = message.get("tool_calls")
    if calls is None:
        return message
    if message["role"] != "assistant" or not isinstance(calls, list):
        raise DropExample("bad_tool_call", f"tool_calls on a {message['role']} message, or not a list")
    try:
        return {**message, "tool_calls": [chat.tool_call(c) for c in calls]}
    except BadToolCall as exc:
        raise DropExample("bad_tool_call", str(exc)) from None
