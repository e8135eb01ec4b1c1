"""Which tokens the loss covers: each token coloured trained or masked, example by example and turn by
turn, as text (`sftlib masks`, `sftlib check`) and as HTML (notebooks 01 and 02, their saved pages).

Display only: reads a prepared split and returns text or HTML; every piece of user text is escaped.
"""

from __future__ import annotations

import html

from sftlib.data.export import token_view
from sftlib.data.masking import trained_runs
from sftlib.views import conversation


def render_view(view: list[tuple[str, bool, bool]]) -> str:
    """A token_view as plain text, each trained run wrapped in [[ ]]."""
    out, inside = [], False
    for text, trained, _special in view:
        if trained != inside:
            out.append("[[" if trained else "]]")
            inside = trained
        out.append(text)
    return "".join(out) + ("]]" if inside else "")


MASKED, TRAINED, MASKED_SPECIAL, TRAINED_SPECIAL = 0, 1, 2, 3
# state -> (legend label, background colour); blue/grey stay readable for red-green colour blindness.
TOKEN_STATES = {
    MASKED: ("masked: no loss (label -100)", "#e0e0e0"),
    TRAINED: ("trained: loss on this token", "#9ecae1"),
    MASKED_SPECIAL: ("masked special token", "#9e9e9e"),
    TRAINED_SPECIAL: ("trained special token", "#3182bd"),
}
BOX = "border-radius:3px;padding:0 1px;margin:0 1px 1px 0;border:1px solid #fff"


def token_states(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, int]]:
    """(token text, state) per token: trained or masked, special tokens apart (TOKEN_STATES)."""
    return [
        (text, int(trained) + 2 * int(special))
        for text, trained, special in token_view(input_ids, labels, tokenizer)
    ]


def legend_html(states: dict[int, tuple[str, str]] = TOKEN_STATES) -> str:
    items = " ".join(
        f'<span style="background:{c};{BOX}">{html.escape(label)}</span>' for label, c in states.values()
    )
    return f'<div class="legend" style="margin-bottom:6px">Legend: {items}</div>'


def _visible(text: str) -> str:
    """Escape a token's text and make its whitespace visible: · a space, → a tab, ↵ then a line break."""
    out = html.escape(text).replace(" ", "·").replace("\t", "→")
    return out.replace("\r", "␍").replace("\n", "↵<br>")


def tokens_html(tokens: list[tuple[str, int]], states: dict[int, tuple[str, str]] = TOKEN_STATES) -> str:
    """Colour each (token text, state) by its state; the decoded text of each id, special tokens included."""
    from sftlib.errors import SftlibError

    unknown = sorted({s for _, s in tokens} - set(states))
    if unknown:
        raise SftlibError(f"token states {unknown} have no colour.", f"use states from {sorted(states)}.")
    spans = "".join(
        f'<span title="{html.escape(repr(text))}" style="background:{states[state][1]};{BOX}">{_visible(text)}</span>'
        for text, state in tokens
    )
    return f'<div class="tokens" style="font-family:monospace;line-height:1.9">{spans}</div>'


def example_title(row: dict) -> str:
    turn = f", assistant turn {row['turn']} (expanded)" if row.get("turn", -1) >= 0 else ""
    truncated = ", truncated" if row.get("truncated") else ""
    return f"row {row['index']}{turn}: {row['num_trained_tokens']} of {row['num_tokens']} tokens trained{truncated}"


def example_html(row: dict, tokenizer, row_of=None) -> str:
    """One prepared example: its source row, counts, and its tokens coloured by what the loss covers.

    `row_of` (`sftlib.data.dataset.row_lookup`) finds the normalized row it came from: its messages are shown
    above the tokens, with tool schemas, tool calls, tool results and reasoning labelled apart.
    """
    states = token_states(row["input_ids"], row["labels"], tokenizer)
    messages = conversation.conversation_html(row_of(row) or {}) if row_of is not None else ""
    return f"<div><b>{html.escape(example_title(row))}</b>{messages}{tokens_html(states)}</div>"


def legends(row_of) -> str:
    return legend_html() + (conversation.parts_legend() if row_of is not None else "")


def masking_view_html(ds, tokenizer, n: int, row_of=None) -> str:
    """The first `n` examples of a prepared split, under one legend (with `row_of`, their messages too)."""
    rows = ds.select(range(min(n, len(ds))))
    return legends(row_of) + "".join(example_html(row, tokenizer, row_of) for row in rows)


def turn_by_turn_html(ds, tokenizer, row_of=None) -> str:
    """The first multi-turn conversation of a prepared split, example by example: an expanded conversation
    (one example per assistant turn, each with its history as the model sees it at inference), or one
    example training several turns. Empty when every example trains one turn of its own conversation."""
    from collections import Counter

    # A row is its source's (a mixture) and its index there.
    sources = ds["source"] if "source" in ds.column_names else [0] * len(ds)
    indices = list(zip(sources, ds["index"], strict=True))
    runs = [len(trained_runs(labels)) for labels in ds["labels"]]
    per_row = Counter(indices)
    pick = next(
        (i for i, (index, n) in enumerate(zip(indices, runs, strict=True)) if per_row[index] > 1 or n > 1),
        None,
    )
    if pick is None:
        return ""
    rows = [k for k, index in enumerate(indices) if index == indices[pick]]
    return legends(row_of) + "".join(example_html(ds[k], tokenizer, row_of) for k in rows)


def batch_html(tokens: list[list]) -> str:
    """A trainer's batch row as decoded tokens (`sftlib.training.preview`: [text, trained, special,
    starts an example] each): one line per packed example, under the legend."""
    lines, line = [], []
    for text, trained, special, starts in tokens:
        if starts and line:
            lines.append(line)
            line = []
        line.append((text, int(trained) + 2 * int(special)))
    lines.append(line)
    body = "".join(
        f"<div><b>packed example {k + 1} of {len(lines)}</b>{tokens_html(one)}</div>"
        for k, one in enumerate(lines)
    )
    return legend_html() + body
