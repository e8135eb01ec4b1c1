"""The lessons of `sftlib demo`: their tasks, their data and their run.

- `demo`: the lessons (dates, chat, tools) and their run through the notebook suite;
- `date_task`: English dates in many styles, to be written as ISO `YYYY-MM-DD`;
- `tool_task`: a `weekday(date)` tool, and chats that call it.
"""

__all__ = ["date_task", "demo", "tool_task"]
