"""A normalized row as people read it: one table line per message, its parts labelled by kind.

Display only, like sftlib.views.tokens (which puts this above a prepared example's coloured tokens). Tool
schemas, tool calls, tool results and reasoning each get a label and a colour of their own, so a
conversation's agentic parts can be told apart at a glance; the schemas are collapsed. Every piece
of user text is escaped.
"""

from __future__ import annotations

import html
import json

from sftlib.data import chat
from sftlib.errors import BadToolCall

# kind -> (label, background colour): one colour per kind, none of them the token view's blues/greys.
PARTS = {
    "tools": ("tool schemas", "#fdd0a2"),
    "tool_call": ("tool call", "#c7e9c0"),
    "tool_result": ("tool result", "#fee391"),
    "reasoning": ("reasoning", "#dadaeb"),
}
CELL = "text-align:left;padding:2px 8px;vertical-align:top;border-bottom:1px solid #eee"


def part_html(kind: str, body: str, note: str = "") -> str:
    """A labelled, coloured block of one kind (PARTS); `body` and `note` are plain text."""
    label, colour = PARTS[kind]
    title = f"{label} · {note}" if note else label
    return (
        f'<div class="part {kind}" style="background:{colour};border-radius:3px;padding:2px 4px;margin:1px 0">'
        f"<small><b>{html.escape(title)}</b></small><br>"
        f'<span style="font-family:monospace;white-space:pre-wrap">{html.escape(body)}</span></div>'
    )


def parts_legend() -> str:
    label = " ".join(
        f'<span style="background:{colour};border-radius:3px;padding:0 4px">{html.escape(label)}</span>'
        for label, colour in PARTS.values()
    )
    return f'<div class="legend" style="margin-bottom:6px">Messages: {label}</div>'


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def tools_html(tools: list | None) -> str:
    """The row's tool schemas, collapsed under their names."""
    if not tools:
        return ""
    names = ", ".join(chat.tool_names(tools)) or f"{len(tools)} schema(s)"
    label, colour = PARTS["tools"]
    return (
        f'<details class="part tools" style="background:{colour};border-radius:3px;padding:2px 4px;margin:2px 0">'
        f"<summary><small><b>{label}</b></small> {html.escape(names)}</summary>"
        f'<pre style="white-space:pre-wrap">{html.escape(json.dumps(tools, indent=2, ensure_ascii=False))}</pre>'
        "</details>"
    )


def message_parts(message: dict) -> str:
    """A message's content, reasoning and tool calls, each as its own block."""
    parts = []
    found = chat.reasoning(message)
    if found:
        parts.append(part_html("reasoning", found[1], found[0]))
    content = message.get("content")
    content = content if isinstance(content, str) else _json(content)
    if message.get("role") in chat.TOOL_ROLES:
        note = ", ".join(str(message[k]) for k in ("name", "tool_call_id") if message.get(k))
        parts.append(part_html("tool_result", content, note))
    elif content:
        parts.append(f'<span style="white-space:pre-wrap">{html.escape(content)}</span>')
    for call in message.get("tool_calls") or []:
        try:
            function = chat.tool_call(call)["function"]
            text = f"{function['name']}({_json(function['arguments'])})"
        except BadToolCall:
            text = _json(call)  # as written: masking drops the row (bad_tool_call)
        parts.append(
            part_html("tool_call", text, str(call.get("id") or "") if isinstance(call, dict) else "")
        )
    return "".join(parts)


def conversation_html(row: dict) -> str:
    """A normalized row (sftlib.data.sources): its tool schemas (collapsed), its chat-template arguments, and
    one line per message with its role and parts. Prompt/completion rows show their prompt messages,
    then their completion messages; a row that holds no messages shows nothing."""
    messages = [
        m
        for key in ("messages", "prompt", "completion")
        if isinstance(row.get(key), list)
        for m in row[key]
        if isinstance(m, dict)
    ]
    if not messages:
        return ""
    kwargs = row.get("chat_template_kwargs")
    head = tools_html(row.get("tools"))
    if kwargs:
        head += f"<div><small>chat_template_kwargs: {html.escape(_json(kwargs))}</small></div>"
    lines = "".join(
        f"<tr><td style='{CELL}'>{k}</td><td style='{CELL}'>{html.escape(str(m.get('role')))}</td>"
        f"<td style='{CELL}'>{message_parts(m)}</td></tr>"
        for k, m in enumerate(messages)
    )
    header = "".join(f"<th style='{CELL}'>{c}</th>" for c in ("#", "role", "message"))
    table = (
        f"<table class='sftlib messages' style='border-collapse:collapse'><tr>{header}</tr>{lines}</table>"
    )
    return f'<div class="conversation" style="margin:4px 0">{head}{table}</div>'
