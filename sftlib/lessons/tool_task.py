"""The tool lesson's task (`sftlib demo --lesson tools`): a `weekday(date)` tool, and chats that call it.

The model can't know the day of the week of an arbitrary date, but it can learn to call a tool with
the date normalized to YYYY-MM-DD (lesson 1's skill), and to answer with the tool's result:

    user: What day of the week was the fifth of March, 2021?
    assistant: <tool_call> weekday {"date": "2021-03-05"} </tool_call>     (trained)
    tool: Friday                                                            (not trained)
    assistant: Friday                                                       (trained)

A quarter of the rows ask lesson 1's question ("Write this date as YYYY-MM-DD: ...") instead, which
needs no tool: the tuned model must answer those without calling one. Every row carries the tool's
schema in a `tools` column (the OpenAI shape), so the template writes it into the system prompt.
Dates come from the dates task (sftlib.lessons.date_task), so held-out dates never occur in training.
"""

from __future__ import annotations

import datetime as dt

from sftlib.lessons import date_task

N_TRAIN = 600
N_EVAL = 64
SYSTEM = "You answer questions about dates. Call a tool when a question needs one."
TOOL_SCHEMAS = [
    {
        "type": "function",
        "function": {
            "name": "weekday",
            "description": "The day of the week of a date.",
            "parameters": {
                "type": "object",
                "properties": {"date": {"type": "string", "description": "the date as YYYY-MM-DD"}},
                "required": ["date"],
            },
        },
    }
]
# The weekday style names the answer itself; every other style makes the date the model's to normalize.
QUESTION_STYLES = [s for s in date_task.STYLES if s != "weekday_month_day_year"]


def weekday(date: str) -> str:
    """The day of the week of a date.

    Args:
        date: the date as YYYY-MM-DD
    """
    # The docstring is the tool's schema for `sftlib chat --tools` (transformers' get_json_schema):
    # it must stay equal to TOOL_SCHEMAS, the one trained (tests/test_chat.py).
    try:
        return dt.date.fromisoformat(date).strftime("%A")
    except (TypeError, ValueError):
        raise ValueError(f"{date!r} is not a date written as YYYY-MM-DD") from None


TOOLS = {"weekday": weekday}


def make_tool_row(d: dt.date, style: str, call_id: str) -> dict:
    """Ask the weekday of `d` written in `style`: a tool call, the tool's result, the answer."""
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "weekday", "arguments": {"date": d.isoformat()}},
    }
    return {
        "tools": TOOL_SCHEMAS,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"What day of the week was {date_task.STYLES[style](d)}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": weekday(d.isoformat())},
            {"role": "assistant", "content": weekday(d.isoformat())},
        ],
    }


def make_plain_row(d: dt.date, style: str) -> dict:
    """Lesson 1's question, with the tool on offer: answered directly, no call."""
    row = date_task.make_row(d, style)
    return {"tools": TOOL_SCHEMAS, "messages": [{"role": "system", "content": SYSTEM}, *row["messages"]]}


def build_tool_rows(
    n_train: int = N_TRAIN, n_eval: int = N_EVAL, seed: int = date_task.SEED
) -> tuple[list, list]:
    """(train_rows, test_rows): the dates lesson's disjoint dates; every fourth row needs no tool."""
    dated, held_out = date_task.build_demo_rows(n_train, n_eval, seed)
    rows = []
    for i, row in enumerate(dated + held_out):
        d = dt.date.fromisoformat(row["messages"][1]["content"])
        style = QUESTION_STYLES[i % len(QUESTION_STYLES)]
        rows.append(make_plain_row(d, style) if i % 4 == 3 else make_tool_row(d, style, f"call_{i}"))
    return rows[:n_train], rows[n_train:]
