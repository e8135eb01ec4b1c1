"""A source's format: detected from its columns and first row, or checked when the config names it.

The formats are those `sftlib.data.sources.normalize` reshapes into TRL's canonical columns.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from sftlib.errors import SftlibError

FORMATS = ("prompt_completion", "alpaca", "messages", "sharegpt", "text")
ACCEPTED = (
    "prompt_completion (prompt, completion), alpaca (instruction, input, output), "
    "messages (messages: [{role, content}]), sharegpt (conversations: [{from, value}]), text (text)"
)


def resolve_format(ds: Dataset, fmt: str) -> tuple[str, str]:
    """(format, why): `fmt` checked against the columns, or detected when it is "auto"."""
    if fmt == "auto":
        return detect_format(ds)
    check_columns(ds, fmt)
    return fmt, "set by dataset.format"


def detect_format(ds: Dataset) -> tuple[str, str]:
    """(format, one-line reason), from the column names and the first row."""
    cols = ds.column_names
    first = ds[0] if len(ds) else {}
    for col in ("messages", "conversations"):
        if col in cols:
            turn = _first_turn(first.get(col))
            if isinstance(turn, dict) and "from" in turn:
                return "sharegpt", f"column `{col}` holds turns with `from`/`value` keys (ShareGPT)"
            return "messages", f"column `{col}` holds turns with `role`/`content` keys (OpenAI messages)"
    if "prompt" in cols and "completion" in cols:
        kind = "message lists" if isinstance(first.get("prompt"), list) else "strings"
        return "prompt_completion", f"columns `prompt` and `completion` hold {kind}"
    if "instruction" in cols and "output" in cols:
        return "alpaca", "columns `instruction` and `output` (Alpaca)"
    if "text" in cols:
        return "text", "column `text` (plain language modeling: every token is trained)"
    raise SftlibError(
        f"cannot tell the dataset's format from its columns: {', '.join(cols)}.",
        f"rename columns with dataset.columns (e.g. {{prompt: question, completion: answer}}); accepted: {ACCEPTED}.",
    )


def _first_turn(turns: Any) -> Any:
    return turns[0] if isinstance(turns, list) and turns else None


REQUIRED = {
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "text": ("text",),
}


def check_columns(ds: Dataset, fmt: str) -> None:
    if fmt not in REQUIRED:
        raise SftlibError(f"unknown dataset format {fmt!r}.", f"use auto or one of: {', '.join(FORMATS)}.")
    cols = ds.column_names
    needed = REQUIRED[fmt]
    if fmt in ("messages", "sharegpt") and ("messages" in cols or "conversations" in cols):
        return
    missing = [c for c in needed if c not in cols]
    if missing:
        raise SftlibError(
            f"format {fmt} needs column(s) {', '.join(missing)}; the dataset has: {', '.join(cols)}.",
            f"map them with dataset.columns, or pick the right dataset.format; accepted: {ACCEPTED}.",
        )
