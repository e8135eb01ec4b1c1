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
    (nothing prompted them) and the user turns trimmed from the end (nothing answers them). Messages
    carry no training flags: the turns flagged not to train are `held_back`."""

    messages: list[dict]
    first_trainable: int = 0
    leading: int = 0
    trailing: int = 0
    held_back: tuple[int, ...] = ()  # assistant turns the data marks not to train (weight 0, train false)


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
    checked = [_checked(k, m) for k, m in enumerate(messages)]
    messages = [m for m, _ in checked]
    for message, trained in checked:
        message[HELD_BACK] = not trained  # travels with its message through the trimming below
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
        m["role"] == "assistant" and not chat.content_text(m["content"]).strip() and not m.get("tool_calls")
        for m in messages[first:]
    ):
        raise DropExample("empty_completion" if first else "empty_assistant_turn")
    held_back = tuple(
        k
        for k, m in enumerate(messages)
        if m.pop(HELD_BACK) and k >= first and m["role"] == chat.TRAINED_ROLE
    )
    if all(k in held_back for k, m in enumerate(messages) if m["role"] == "assistant" and k >= first):
        raise DropExample(
            "all_turns_held_back", f"{len(held_back)} assistant turn(s), each marked not to train"
        )
    return Conversation(messages, first, leading, trailing, held_back)


HELD_BACK = "_sftlib_held_back"  # a checked message's flag, only while `conversation` trims


def _checked(k: int, message: dict) -> tuple[dict, bool]:
    """A message with a known role, string content or text parts, its tool calls in the templates'
    shape, without training flags; and whether it may be trained (an assistant turn not flagged off)."""
    message = {**message, "content": _content(k, message)}
    if message.get("role") not in ROLES:
        raise DropExample("unknown_role", f"role {message.get('role')!r}")
    trained = _trained(k, message)
    message = {key: v for key, v in message.items() if key not in chat.TRAIN_FLAGS}
    calls = message.get("tool_calls")
    if calls is None:
        return message, trained
    if message["role"] != "assistant" or not isinstance(calls, list):
        raise DropExample("bad_tool_call", f"tool_calls on a {message['role']} message, or not a list")
    try:
        return {**message, "tool_calls": [chat.tool_call(c) for c in calls]}, trained
    except BadToolCall as exc:
        raise DropExample("bad_tool_call", str(exc)) from None


def _content(k: int, message: dict) -> str | list:
    """A string, or a list of text parts ({"type": "text", "text": ...}); a part of another type
    (an image, audio) is a `non_text_part` drop: sftlib trains text-only models."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DropExample("non_string_content")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in chat.TEXT_PART_TYPES and isinstance(part.get("text"), str):
            continue
        if isinstance(kind, str) and kind not in chat.TEXT_PART_TYPES:
            raise DropExample(
                "non_text_part",
                f"message {k} ({message.get('role')}) holds a {kind!r} part; sftlib trains text-only models",
            )
        raise DropExample(
            "non_string_content", f"message {k}: a content part without a type and its text: {part!r:.80}"
        )
    return content


def _trained(k: int, message: dict) -> bool:
    """Whether the message's flags let it be trained: `weight` 0 or 1, `train` false or true, as axolotl
    and LLaMA-Factory write them. Only assistant turns are ever trained, so a prompt message flagged to
    train is a `bad_train_flag` drop, not a silent no."""
    values = {key: message[key] for key in chat.TRAIN_FLAGS if key in message}
    allowed = {"weight": (0, 1), "train": (False, True)}
    for key, value in values.items():
        if isinstance(value, bool) != (key == "train") or value not in allowed[key]:
            raise DropExample("bad_train_flag", f"message {k}: {key}={value!r} (allowed: {allowed[key]})")
    trained = all(bool(v) for v in values.values())
    if trained and values and message["role"] != chat.TRAINED_ROLE:
        raise DropExample(
            "bad_train_flag",
            f"message {k} ({message['role']}) is marked to train ({values}); sftlib trains only assistant turns",
        )
    return trained
